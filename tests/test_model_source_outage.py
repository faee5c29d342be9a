"""`serve --model-source` when the registry goes away, and `serve` itself, from the command line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from model_registry.store import Registry
from serving.settings import default_model_cache_dir, parse

from .test_model_source import CLASSIFIER, SourceServer, answer, checks, wait_for


def test_a_registry_that_goes_away_leaves_every_model_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # A connection per call (MLflow's own setting), so that the registry's database going away (a
    # volume unmounted, a directory moved) is seen by the next call, as a server's outage would be.
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    caplog.set_level(logging.INFO, logger="serving.sources")
    home = tmp_path / "registry"
    registry = Registry.open(f"sqlite:///{home}/r.db")
    for version_dir in ("1", "2"):
        registry.register(CLASSIFIER, "classifier", version_dir=version_dir)
    registry.set_alias("classifier", "champion", 1)
    server = SourceServer(model_source=("models:/classifier@champion",), registry_uri=registry.uri,
                          model_cache_dir=tmp_path / "cache", model_control_mode="poll", repository_poll_secs=0.2)
    try:
        client = httpclient.InferenceServerClient(server.url)
        wait_for(lambda: checks(server, "unchanged") >= 1, "checked the alias")
        home.rename(tmp_path / "away")
        wait_for(lambda: checks(server, "unreachable") >= 3, "counted the checks that found no registry")
        assert answer(client) == "1" and client.is_server_ready() and client.is_model_ready("classifier")
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1 and "every model keeps serving" in warnings[0]  # once per outage
        (tmp_path / "away").rename(home)
        wait_for(lambda: any("answers again" in r.getMessage() for r in caplog.records), "saw the registry return")
        registry.set_alias("classifier", "champion", 2)
        wait_for(lambda: answer(client) == "2", "followed the alias after the outage")
    finally:
        server.stop()


def test_the_model_source_settings(tmp_path: Path) -> None:
    env = {"SERVING_MODEL_SOURCE": "models:/a@champion; models:/b/3\tmodels:/c@x", "XDG_CACHE_HOME": "/xdg"}
    settings = parse(["--registry-uri", "sqlite:///r.db"], env)
    assert settings.model_source == ("models:/a@champion", "models:/b/3", "models:/c@x")
    assert settings.model_repository is None and settings.registry_uri == "sqlite:///r.db"
    assert settings.model_cache_dir == Path("/xdg/shadowserve/models")
    assert default_model_cache_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/shadowserve/models")
    flags = parse(["--model-source", "models:/a@b", "--model-cache-dir", str(tmp_path)], env)
    assert flags.model_source == ("models:/a@b",) and flags.model_cache_dir == tmp_path  # flags win
    assert parse(["--model-repository", "r"], {"XDG_CACHE_HOME": "/xdg"}).model_cache_dir is None  # no source


def test_a_source_on_the_command_line_replaces_the_images_repository_variable() -> None:
    image = {"SERVING_MODEL_REPOSITORY": "/models"}  # what the model image sets
    assert parse(["--model-source", "models:/a@b"], image).model_repository is None
    assert parse([], image).model_repository == Path("/models")
    both_in_env = parse([], {**image, "SERVING_MODEL_SOURCE": "models:/a@b"})  # refused at start-up, as both flags
    assert both_in_env.model_repository == Path("/models") and both_in_env.model_source == ("models:/a@b",)
    both_flags = parse(["--model-source", "models:/a@b", "--model-repository", "r"], {})
    assert both_flags.model_repository == Path("r")


@pytest.mark.parametrize("argv, env, message", [
    (["--model-source", "classifier@champion"], {}, "'classifier@champion' is not a model URI"),
    (["--model-source", "models:/classifier"], {}, "names no version or alias"),
    ([], {"SERVING_MODEL_SOURCE": "models:/a@b;models:/c@latest"}, "SERVING_MODEL_SOURCE"),
    ([], {}, "is required, unless --model-source gives the models"),
])
def test_bad_model_sources_exit_with_a_usage_message(argv: list[str], env: dict[str, str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_serve_exits_non_zero_with_one_line_when_a_source_cannot_be_resolved(tmp_path: Path) -> None:
    registry = Registry.open(f"sqlite:///{tmp_path}/r.db")
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model-source", "models:/classifier@champion", "--registry-uri",
         registry.uri, "--model-cache-dir", str(tmp_path / "cache"), "--host", "127.0.0.1", "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--log-format", "json"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = [e["message"] for e in errors if e["level"] == "error"]
    assert len(failed) == 1 and "\n" not in failed[0], failed
    assert failed[0].startswith("cannot start: --model-source models:/classifier@champion: ")
    assert "has no alias 'champion'" in failed[0]


def test_serve_without_a_source_imports_no_registry_client() -> None:
    code = ("import sys, serving.serve, serving.app; from serving.settings import parse; "
            "parse(['--model-repository', 'r']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy') "
            "or m in ('model_registry.store', 'serving.sources')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
