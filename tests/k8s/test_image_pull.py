"""The model image's pull step, run for real: the Dockerfile's own script against a SQLite registry.

No Docker engine here, so the `models` stage's RUN is taken from the Dockerfile and run by
/bin/sh with the build arguments as its environment (what `docker build` does), the image's
paths moved into a temporary directory, and `shadowserve-registry` running with only the two
lock files' distributions importable (as in the image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .kube import ROOT
from .test_dockerfile import _image_site_packages, stages

CLASSIFIER = ROOT / "examples" / "models" / "classifier"


@dataclass(frozen=True)
class Setup:
    registry_uri: str
    bin: Path  # shadowserve-registry and python, as on the image's PATH
    digests: dict[int, str]  # version → manifest sha256


def _script() -> str:
    """The models stage's one RUN, without its secret mounts (BuildKit's flags, not shell)."""
    (run,) = [rest for keyword, rest in stages()["models"] if keyword == "RUN"]
    return re.sub(r"^(--mount=\S+\s+)+", "", run)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from model_registry.store import Registry

    root = tmp_path_factory.mktemp("image-pull")
    uri = f"sqlite:///{root / 'registry' / 'registry.db'}"
    (root / "registry").mkdir()
    registry = Registry.open(uri)
    digests = {}
    for directory in ("1", "2"):
        version = registry.register(CLASSIFIER, "classifier", version_dir=directory)
        digests[version.version] = version.manifest_digest
    registry.set_alias("classifier", "champion", 1, reason="the image test's champion")
    site, bin_dir = root / "site", root / "bin"
    site.mkdir()
    bin_dir.mkdir()
    _image_site_packages(site)
    cli = bin_dir / "shadowserve-registry"  # -S: no site-packages but the linked ones, as in the image
    cli.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]\n"
                   "from model_registry.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    cli.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    yield Setup(uri, bin_dir, digests)


def _build(setup: Setup, tmp_path: Path, **args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the pull step with these build arguments; the result and where /models went."""
    context, models = tmp_path / "context", tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models", context)
    script = re.sub(r"(?<![\w.-])/models\b", str(models), _script())
    script = re.sub(r"(?<![\w.-])/context\b", str(context), script)
    assert str(models) in script and str(context) in script
    env = {"PATH": f"{setup.bin}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path),
           "MODEL_URI": "", "MODEL_VERSION": "", "MODEL_MANIFEST_SHA256": "", "MLFLOW_TRACKING_URI": "", **args}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)
    return result, models


def _build_args(setup: Setup, uri: str) -> dict[str, str]:
    """What `shadowserve-registry resolve URI --format build-args` tells `docker build`."""
    out = subprocess.run([str(setup.bin / "shadowserve-registry"), "--registry-uri", setup.registry_uri, "resolve",
                          uri, "--format", "build-args"], capture_output=True, text=True, timeout=60, check=True)
    words = out.stdout.split()
    assert words[::2] == ["--build-arg", "--build-arg"], out.stdout
    return dict(word.split("=", 1) for word in words[1::2])


def test_pulls_the_resolved_version_verified(setup: Setup, tmp_path: Path) -> None:
    args = _build_args(setup, "models:/classifier@champion")
    assert args == {"MODEL_VERSION": "1", "MODEL_MANIFEST_SHA256": setup.digests[1]}
    result, models = _build(setup, tmp_path, MODEL_URI="models:/classifier@champion",
                            MLFLOW_TRACKING_URI=setup.registry_uri, **args)
    assert result.returncode == 0, result.stderr
    served = models / "classifier"
    assert sorted(p.name for p in models.iterdir()) == [".shadowserve-pull.json", "classifier"]
    assert (served / "1" / "model.pt").read_bytes() == (CLASSIFIER / "1" / "model.pt").read_bytes()
    assert "versions: 1" in (served / "config.pbtxt").read_text().replace("[", "").replace("]", "")
    assert not (tmp_path / "context").exists(), "the build context's repository is not left beside it"
    for path in models.rglob("*"):
        mode = path.stat().st_mode
        assert mode & 0o004 and not mode & 0o022, f"{path}: the server (another user) reads, nobody writes"


@pytest.mark.parametrize("wrong", ["version", "digest"])
def test_fails_when_the_registry_no_longer_says_what_was_resolved(setup: Setup, tmp_path: Path, wrong: str) -> None:
    """The alias moved between `resolve` and the build (here: the arguments of version 2 for @champion,
    which holds 1), or the digest is not the version's: the build fails, naming both."""
    args = {"MODEL_VERSION": "2" if wrong == "version" else "1",
            "MODEL_MANIFEST_SHA256": setup.digests[2] if wrong == "version" else "0" * 64}
    result, _ = _build(setup, tmp_path, MODEL_URI="models:/classifier@champion",
                       MLFLOW_TRACKING_URI=setup.registry_uri, **args)
    assert result.returncode != 0
    assert f"is version 1 (manifest sha256 {setup.digests[1]})" in result.stderr, result.stderr
    assert "resolve it again and rebuild" in result.stderr


def test_without_model_uri_the_context_repository_is_used(setup: Setup, tmp_path: Path) -> None:
    result, models = _build(setup, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in models.iterdir()) == ["classifier", "sentiment"]


@pytest.mark.parametrize(("args", "message"), [
    ({"MODEL_VERSION": "1"}, "give MODEL_URI too"),
    ({"MODEL_URI": "models:/classifier@champion"}, "--format build-args"),
    ({"MODEL_URI": "models:/classifier@champion", "MODEL_VERSION": "1", "MODEL_MANIFEST_SHA256": "ab"},
     "MLFLOW_TRACKING_URI"),
])
def test_incomplete_arguments_fail_before_any_pull(setup: Setup, tmp_path: Path, args: dict[str, str],
                                                  message: str) -> None:
    result, models = _build(setup, tmp_path, **args)
    assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not models.exists()

