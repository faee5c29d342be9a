"""The images' lock files: the dependency closure of pyproject.toml without torch, and of its registry extra.

``python -m tests.k8s.lock > requirements/runtime.txt`` rewrites the first and
``python -m tests.k8s.lock registry > requirements/registry.txt`` the second, with the versions
installed in the running environment (CPython 3.11 on Linux, the images' Python), after
``pip install -c requirements/runtime.txt -e '.[registry]'`` there (the installed project's metadata
is pyproject.toml's). test_dockerfile.py checks the files against the same closures.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FROM_BASE_IMAGE = {"torch"}  # the PyTorch base image brings torch and its own dependencies
REGISTRY = "registry"  # the extra both images install beside the runtime lock
MODEL = "model"  # the model image's own extras, beside both: Triton repositories' backends and stores
MODEL_EXTRAS = ("onnx", "s3")
# the model image's CUDA base takes these distributions' GPU builds: the same modules, the same
# dependencies, under another name
GPU_BUILDS = {"onnxruntime": "onnxruntime-gpu"}
HEADERS = {
    "": """\
# Pinned runtime dependencies of both images: the closure of pyproject.toml's
# `dependencies` without torch, which comes from the model image's PyTorch base.
# The images install this file, then the project's wheel with --no-deps, so what
# runs in a container is exactly this list (tests/k8s/test_dockerfile.py checks
# that it covers pyproject.toml and its own dependencies).
# Resolved for CPython 3.11 on Linux x86_64; to refresh, see docs/deploy.md.
""",
    REGISTRY: """\
# Pinned dependencies of pyproject.toml's `registry` extra (MLflow's client, SQLAlchemy,
# Alembic) that requirements/runtime.txt does not pin already. Both images install the
# two files together, then the project's wheel with --no-deps, so the registry client
# (shadowserve-registry, serve --model-source, the sidecar's audit writes) runs on exactly
# these (tests/k8s/test_dockerfile.py checks that the two cover the extra's closure).
# Resolved for CPython 3.11 on Linux x86_64 together with runtime.txt; to refresh:
#   pip install -c requirements/runtime.txt -e '.[registry]'
#   python -m tests.k8s.lock registry > requirements/registry.txt
""",
    MODEL: """\
# Pinned dependencies of pyproject.toml's `onnx` and `s3` extras that runtime.txt and
# registry.txt do not pin already, for the model image alone: ONNX models (as onnxruntime-gpu,
# the GPU build of the same module, for the image's CUDA base) and repositories on S3. gs:// and
# as:// repositories need the `gcs` or `azure` extra installed into a derived image.
# Resolved for CPython 3.11 on Linux x86_64 together with the other two; to refresh:
#   pip install -c requirements/runtime.txt -c requirements/registry.txt -e '.[registry,onnx,s3]'
#   python -m tests.k8s.lock model > requirements/model.txt
""",
}


def declared(extra: str = "") -> list[Requirement]:
    """pyproject.toml's dependencies (``extra=""``) or those one extra adds, as the installed project
    declares them, less the base image's."""
    requirements = [Requirement(raw) for raw in metadata.requires("shadowserve") or []]
    kept = []
    for r in requirements:
        if canonicalize_name(r.name) in FROM_BASE_IMAGE:
            continue
        in_base = r.marker is None or r.marker.evaluate({"extra": ""})
        if (in_base and not extra) or (extra and not in_base and r.marker is not None
                                        and r.marker.evaluate({"extra": extra})):
            kept.append(r)
    return kept


def _walk(seeds: list[Requirement]) -> dict[str, str]:
    """Every distribution the seeds need, with extras, as installed here: name → version."""
    found: dict[str, set[str]] = {}
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in seeds]
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


def closure(extra: str = "") -> dict[str, str]:
    """The runtime lock's distributions (``extra=""``), or what the extra needs beyond them; for
    `MODEL`, what its extras need beyond the runtime and registry locks, GPU builds named as such."""
    runtime = _walk(declared())
    if not extra:
        return runtime
    if extra == MODEL:
        locked = runtime | _walk(declared() + declared(REGISTRY))
        both = _walk(declared() + declared(REGISTRY) + [r for e in MODEL_EXTRAS for r in declared(e)])
        return {GPU_BUILDS.get(name, name): version for name, version in both.items() if name not in locked}
    # Walked together, so that an extra of a runtime package the extra asks for counts too.
    both = _walk(declared() + declared(extra))
    return {name: version for name, version in both.items() if name not in runtime}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in HEADERS:
        sys.exit(f"usage: python -m tests.k8s.lock [{REGISTRY}|{MODEL}]")
    print(HEADERS[which] + "".join(f"{name}=={version}\n" for name, version in closure(which).items()), end="")
