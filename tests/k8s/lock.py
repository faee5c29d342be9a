"""The images' lock file: the dependency closure of pyproject.toml without torch.

``python -m tests.k8s.lock > requirements/runtime.txt`` rewrites it with the versions
installed in the running environment (CPython 3.11 on Linux, the images' Python), after
``pip install -e .`` there (the installed project's metadata is pyproject.toml's). test_dockerfile.py
checks the file against the same closure.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FROM_BASE_IMAGE = {"torch"}  # the PyTorch base image brings torch and its own dependencies
HEADER = """\
# Pinned runtime dependencies of both images: the closure of pyproject.toml's
# `dependencies` without torch, which comes from the model image's PyTorch base.
# The images install this file, then the project's wheel with --no-deps, so what
# runs in a container is exactly this list (tests/k8s/test_dockerfile.py checks
# that it covers pyproject.toml and its own dependencies).
# Resolved for CPython 3.11 on Linux x86_64; to refresh, see docs/deploy.md.
"""


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies (as the installed project declares them), less the base image's."""
    requirements = [Requirement(raw) for raw in metadata.requires("shadowserve") or []]
    return [r for r in requirements if canonicalize_name(r.name) not in FROM_BASE_IMAGE
            and (r.marker is None or r.marker.evaluate({"extra": ""}))]


def closure() -> dict[str, str]:
    """Every distribution the declared dependencies need, with extras, as installed here: name → version."""
    found: dict[str, set[str]] = {}
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in declared()]
    while todo:
        name, extras = todo.pop()
        if name in found and extras <= found[name]:
            continue
        found[name] = found.get(name, set()) | extras
        for raw in metadata.requires(name) or []:
            needed = Requirement(raw)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in found[name] | {""}):
                todo.append((canonicalize_name(needed.name), set(needed.extras)))
    return {name: metadata.version(name) for name in sorted(found)}


if __name__ == "__main__":
    print(HEADER + "".join(f"{name}=={version}\n" for name, version in closure().items()), end="")
