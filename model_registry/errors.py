"""The registry's errors: each message is one line saying what was wrong and how to fix it.

The command line prints them as ``shadowserve-registry: error: <message>``; serve and the
sidecar log them. None carries a traceback or an MLflow exception class to the user.
"""

from __future__ import annotations


class RegistryError(Exception):
    """The root: anything the registry refuses or cannot do."""


class NotInstalled(RegistryError):
    """MLflow (the ``registry`` extra) is not installed."""


class NotFound(RegistryError):
    """An unknown model, version or alias."""


class Unreachable(RegistryError):
    """The registry is down, or answers something that is not MLflow's API."""


class InvalidModel(RegistryError):
    """A directory that is not a Triton model directory."""


class VerificationFailed(RegistryError):
    """What was downloaded does not match the version's manifest: a digest, a size or the file set."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path  # the file, relative to the model directory


class EvidenceRefused(RegistryError):
    """A promotion whose evidence does not pass, or does not judge that exact version."""
