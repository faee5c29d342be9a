"""Register, alias, resolve and pull, on the embedded registry and on a real ``mlflow server``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_registry import audit
from model_registry.errors import NotFound, RegistryError, VerificationFailed
from model_registry.pull import PULLED, pull
from model_registry.store import TAG_MANIFEST
from model_registry.uris import ModelUri

from .conftest import Backend, model_dir


def tamper(backend: Backend, run_id: str | None, relative: str) -> Path:
    """Change one byte of a stored file, as someone with write access to the artifact store could."""
    assert run_id is not None
    matches = [p for p in backend.artifacts.rglob(relative) if run_id in p.parts]
    assert len(matches) == 1, f"found {matches} for {relative} of run {run_id}"
    data = bytearray(matches[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    matches[0].write_bytes(bytes(data))
    return matches[0]


def test_register_alias_pull_round_trip(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    v1 = registry.register(model_dir(tmp_path, model_name, 1), model_name, tags={"team": "ml"})
    v2 = registry.register(model_dir(tmp_path, model_name, 2), model_name)
    assert (v1.version, v2.version) == (1, 2) and v1.tags["team"] == "ml" and len(v1.manifest_digest) == 64
    registry.set_alias(model_name, "champion", 1, reason="first")
    registry.set_alias(model_name, "challenger", 2)
    assert registry.resolve(f"models:/{model_name}@champion").version == 1
    assert registry.resolve(ModelUri(model_name, alias="challenger")).aliases == ("challenger",)

    dest = tmp_path / "repository"
    pulled = pull(registry, [f"models:/{model_name}@challenger"], dest)
    assert [v.version for v in pulled] == [2]
    model = dest / model_name
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == [
        "2/model.pt", "config.pbtxt", "labels.txt"]
    assert (model / "2" / "model.pt").read_bytes() == (model_dir(tmp_path / "again", model_name, 2) / "2" /
                                                         "model.pt").read_bytes()
    config = (model / "config.pbtxt").read_text()
    assert "specific" in config and "versions: 2" in config and f'name: "{model_name}"' in config
    summary = json.loads((dest / PULLED).read_text())
    assert summary == [{"uri": f"models:/{model_name}@challenger", "name": model_name, "version": 2,
                        "manifest_sha256": v2.manifest_digest}]


def test_two_versions_of_one_model_in_one_repository(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    source = model_dir(tmp_path, model_name, 1)
    registry.register(source, model_name)
    registry.register(source, model_name)
    pull(registry, [f"models:/{model_name}/1", f"models:/{model_name}/2"], tmp_path / "repo")
    config = (tmp_path / "repo" / model_name / "config.pbtxt").read_text()
    assert "versions: 1" in config and "versions: 2" in config
    assert (tmp_path / "repo" / model_name / "1" / "model.pt").is_file()
    assert (tmp_path / "repo" / model_name / "2" / "model.pt").is_file()


def test_a_changed_byte_in_the_artifact_store_fails_the_pull_naming_the_file(
        backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    version = registry.register(model_dir(tmp_path, model_name, 1), model_name)
    tamper(backend, version.run_id, "1/model.pt")
    dest = tmp_path / "repo"
    with pytest.raises(VerificationFailed, match=r"1/model\.pt does not match its digest") as caught:
        pull(registry, [version.uri], dest)
    assert caught.value.path == "1/model.pt"
    assert not (dest / model_name).exists() and not (dest / PULLED).exists()  # nothing half-installed


def test_a_version_without_a_manifest_is_not_pulled(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    version = registry.register(model_dir(tmp_path, model_name, 1), model_name)
    registry._client.delete_model_version_tag(model_name, str(version.version), TAG_MANIFEST)
    with pytest.raises(VerificationFailed, match="has no manifest digest"):
        pull(registry, [version.uri], tmp_path / "repo")


def test_unknown_models_versions_and_aliases(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    registry.register(model_dir(tmp_path, model_name, 1), model_name)
    for uri, message in [(f"models:/{model_name}@nope", "has no alias 'nope'"),
                         (f"models:/{model_name}/9", "no version 9"),
                         ("models:/never-registered-model/1", "no version 1 of model 'never-registered-model'")]:
        with pytest.raises(NotFound, match=message):
            registry.resolve(uri)
    with pytest.raises(NotFound, match="is not registered"):
        registry.history("never-registered-model")
    with pytest.raises(NotFound):
        registry.set_alias(model_name, "champion", 5)


def test_different_configs_cannot_share_a_model_directory(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    registry.register(model_dir(tmp_path, model_name, 1), model_name)
    other = model_dir(tmp_path / "b", model_name, 1)
    (other / "config.pbtxt").write_text((other / "config.pbtxt").read_text().replace("max_batch_size: 64",
                                                                                   "max_batch_size: 8"))
    registry.register(other, model_name)
    with pytest.raises(RegistryError, match=r"different config\.pbtxt files"):
        pull(registry, [f"models:/{model_name}/1", f"models:/{model_name}/2"], tmp_path / "repo")


def test_the_audit_log_lives_in_the_registry(backend: Backend, model_name: str, tmp_path: Path) -> None:
    registry = backend.open()
    registry.register(model_dir(tmp_path, model_name, 1), model_name, actor="ci@build")
    registry.set_alias(model_name, "champion", 1, reason="first release", actor="alice")
    # a second client (another machine, another process) reads the same log
    log = backend.open().history(model_name)
    assert [(e.action, e.actor, e.version, e.alias, e.previous, e.reason) for e in log] == [
        ("register", "ci@build", 1, None, None, ""), ("alias", "alice", 1, "champion", None, "first release")]
    tags = registry._client.get_registered_model(model_name).tags
    assert all(json.loads(v) for k, v in tags.items() if k.startswith(audit.PREFIX))
