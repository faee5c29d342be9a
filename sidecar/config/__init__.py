"""Configuration: start-up flags and environment, and the reloadable ``--config`` file as typed objects."""
