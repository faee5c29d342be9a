"""The manifest and the model directory: what is registered, and what a download must match."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_registry import layout, manifest
from model_registry.errors import InvalidModel, VerificationFailed

from .conftest import CLASSIFIER, model_dir


def _stored(tmp_path: Path) -> tuple[Path, str]:
    """A model directory laid out as the artifact store holds it, and its manifest digest."""
    chosen, files = layout.model_files(CLASSIFIER, "classifier", "2")
    root = tmp_path / "stored"
    for rel, path in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / rel)
    data = manifest.build("classifier", chosen, files)
    (root / manifest.MANIFEST_NAME).write_bytes(data)
    return root, manifest.digest(data)


def test_one_version_directory_and_the_model_level_files(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    chosen, files = layout.model_files(CLASSIFIER, "classifier", "2")
    assert chosen == "2" and sorted(files) == ["2/model.pt", "config.pbtxt", "labels.txt"]
    document = json.loads(manifest.build("classifier", chosen, files))
    assert document["files"]["2/model.pt"]["size"] == (CLASSIFIER / "2" / "model.pt").stat().st_size


def test_hidden_files_and_bytecode_are_not_part_of_a_model(tmp_path: Path) -> None:
    source = model_dir(tmp_path, "m")
    (source / ".DS_Store").write_text("x")
    (source / "1" / "__pycache__").mkdir()
    (source / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    (source / "warmup").mkdir()
    (source / "warmup" / "batch.bin").write_bytes(b"\0" * 8)
    _, files = layout.model_files(source, "m")
    assert sorted(files) == ["1/model.pt", "config.pbtxt", "labels.txt", "warmup/batch.bin"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: (d / "config.pbtxt").unlink(), "has no config.pbtxt"),
    (lambda d: (d / "config.pbtxt").write_text("platform: [nonsense"), "not a valid Triton model config"),
    (lambda d: (d / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 1\n'), "no platform or backend"),
    (lambda d: (d / "config.pbtxt").write_text('name: "other"\nplatform: "pytorch_libtorch"\n'),
     "names the model 'other' but --name is 'm'"),
    (lambda d: (d / "2").mkdir(), "holds version directories 1, 2"),
    (lambda d: shutil.rmtree(d / "1"), "holds version directories none"),
    (lambda d: (d / "1" / "model.pt").unlink(), "is empty"),
    (lambda d: os.symlink("/etc/passwd", d / "1" / "leak"), "leading outside"),
    (lambda d: os.symlink("/etc", d / "1" / "etc"), "symbolic link to a directory"),
    (lambda d: (d / "config.pbtxt").write_bytes(b"\xff\xfe"), "not UTF-8"),
])
def test_a_directory_that_is_not_a_triton_model_is_refused(tmp_path: Path, change: object, message: str) -> None:
    source = model_dir(tmp_path, "m")
    change(source)  # type: ignore[operator]
    with pytest.raises(InvalidModel, match=message):
        layout.model_files(source, "m")


def test_a_version_directory_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="no version directory '7'"):
        layout.model_files(CLASSIFIER, "classifier", "7")


def test_an_untouched_copy_verifies(tmp_path: Path) -> None:
    root, digest = _stored(tmp_path)
    assert manifest.verify(root, digest)["version_directory"] == "2"


@pytest.mark.parametrize(("tamper", "named"), [
    (lambda r: (r / "2" / "model.pt").write_bytes((r / "2" / "model.pt").read_bytes()[:-1] + b"X"), "2/model.pt"),
    (lambda r: (r / "labels.txt").write_text("cat\n"), "labels.txt"),
    (lambda r: (r / "2" / "model.pt").unlink(), "2/model.pt"),
    (lambda r: (r / "2" / "backdoor.py").write_text("import os"), "2/backdoor.py"),
    (lambda r: (r / manifest.MANIFEST_NAME).write_text("{}"), manifest.MANIFEST_NAME),
    (lambda r: (r / manifest.MANIFEST_NAME).unlink(), manifest.MANIFEST_NAME),
    (lambda r: os.symlink("/etc/passwd", r / "2" / "link"), "2/link"),
])
def test_any_change_after_registration_is_caught_naming_the_file(tmp_path: Path, tamper: object,
                                                                   named: str) -> None:
    root, digest = _stored(tmp_path)
    tamper(root)  # type: ignore[operator]
    with pytest.raises(VerificationFailed) as caught:
        manifest.verify(root, digest)
    assert caught.value.path == named and named in str(caught.value)


def test_a_manifest_rewritten_to_match_tampered_files_is_caught_by_its_digest(tmp_path: Path) -> None:
    root, digest = _stored(tmp_path)
    (root / "2" / "model.pt").write_bytes(b"evil")
    document = json.loads((root / manifest.MANIFEST_NAME).read_bytes())
    document["files"]["2/model.pt"] = {"sha256": manifest.file_digest(root / "2" / "model.pt"), "size": 4}
    (root / manifest.MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(VerificationFailed, match="does not match the digest the registry holds"):
        manifest.verify(root, digest)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_any_manifest_bytes_verify_or_fail_closed(tmp_path: Path, data: bytes) -> None:
    root = tmp_path / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    (root / "1").mkdir(parents=True)
    (root / "1" / "model.pt").write_bytes(b"weights")
    (root / manifest.MANIFEST_NAME).write_bytes(data)
    try:
        manifest.verify(root, manifest.digest(data))  # the registry "agrees": only the content can refuse
    except VerificationFailed as failed:
        assert "\n" not in str(failed)
    else:
        assert json.loads(data)["files"]["1/model.pt"]["size"] == 7


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.fixed_dictionaries(
    {"sha256": st.text(max_size=64), "size": st.integers(-1, 10)}), max_size=4))
def test_a_lying_manifest_naming_other_paths_is_refused(tmp_path: Path, files: dict[str, object]) -> None:
    root = tmp_path / "lying"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    data = json.dumps({"format": manifest.FORMAT, "version_directory": "1", "files": files}).encode()
    (root / manifest.MANIFEST_NAME).write_bytes(data)
    if files:
        with pytest.raises(VerificationFailed):
            manifest.verify(root, manifest.digest(data))
