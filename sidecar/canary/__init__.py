"""The canary: the pure analysis, the controller of its weight and phase, and the admin API."""
