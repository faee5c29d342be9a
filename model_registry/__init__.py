"""The model registry on MLflow: versions with digests, aliases, an audit log, gated promotion."""
