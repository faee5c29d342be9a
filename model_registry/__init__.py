"""The model registry on MLflow's Model Registry: versions with digests, aliases, an audit log.

Torch-free and server-free, so that serve (``--model-source``), the sidecar (its canary
decisions) and the command line (``shadowserve-registry``) share it; MLflow is imported by
`store` only, when a registry is opened:

- `uris`: ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``;
- `layout`: a Triton model directory as a version holds it, and the config it serves with;
- `manifest`: the SHA-256 digest of every file, and the check of a download;
- `store`: `Registry` (open, resolve, register, set_alias, history, ...) on MLflow;
- `pull`: fetch into a cache, verify, install into a model repository;
- `audit`: the audit log, kept as tags of the registered model;
- `evidence`: what a promotion needs;
- `cli`: ``shadowserve-registry``.

Example::

    from pathlib import Path

    from model_registry.store import Registry
    from model_registry.pull import pull

    registry = Registry.open("http://mlflow:5000")        # or None: MLflow's variables, else ./registry
    pull(registry, ["models:/classifier@champion"], Path("/models"))
"""
