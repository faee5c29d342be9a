"""The sidecar injector: a mutating admission webhook that adds the shadowserve sidecar to pods.

Run it with ``python -m sidecar.injector --tls-cert FILE --tls-key FILE --sidecar-image IMAGE``
(``k8s/injector/`` deploys it). Pods opt in with the label or annotation
``shadowserve.io/inject: "true"`` and configure the sidecar with annotations
(`sidecar.injector.annotations`). The decision is pure: `review.parse` and `review.admit`
turn an AdmissionReview into its answer, through the mutators of `sidecar.injector.mutators`
(a pod in, JSONPatch operations out); `server` only carries it over HTTPS.
"""

from __future__ import annotations

from .annotations import InjectionError, Options, Policy
from .review import ReviewError, admit, parse
from .server import Injector, start

__all__ = ["InjectionError", "Injector", "Options", "Policy", "ReviewError", "admit", "main", "parse", "start"]


def main(argv: list[str] | None = None) -> None:
    """The ``python -m sidecar.injector`` entrypoint."""
    from .__main__ import main as _main
    _main(argv)
