"""Flags with Triton's names, each with a SERVING_* environment variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import Settings, parse

from .conftest import RunningServer


def test_defaults_follow_triton() -> None:
    settings = parse(["--model-repository", "repo"], {})
    assert settings == Settings(model_repository=Path("repo"))
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    assert settings.max_request_bytes == 64 * 1024 * 1024 and settings.exit_timeout_secs == 30


def test_environment_fills_what_flags_leave_and_flags_win() -> None:
    env = {"SERVING_MODEL_REPOSITORY": "/models", "SERVING_HTTP_PORT": "9000", "SERVING_LOG_FORMAT": "json",
           "SERVING_DEVICE": "cuda:1", "SERVING_EXIT_TIMEOUT_SECS": "2.5"}
    settings = parse(["--http-port", "0"], env)
    assert settings.model_repository == Path("/models")
    assert settings.http_port == 0  # the flag wins
    assert settings.log_format == "json" and settings.device == "cuda:1" and settings.exit_timeout_secs == 2.5


@pytest.mark.parametrize("argv, env, message", [
    ([], {}, "--model-repository"),
    (["--model-repository", "r", "--http-port", "70000"], {}, "not a port"),
    (["--model-repository", "r", "--device", "tpu"], {}, "not a device"),
    (["--model-repository", "r"], {"SERVING_HTTP_PORT": "http"}, "SERVING_HTTP_PORT"),
    (["--model-repository", "r"], {"SERVING_LOG_FORMAT": "xml"}, "choose from"),
    (["--model-repository", "r", "--max-request-bytes", "0"], {}, "positive"),
])
def test_bad_settings_exit_with_a_usage_message(argv: list[str], env: dict[str, str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("module", ["serving", "serving.serve"])
def test_entrypoints_are_the_same_program(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--host", "--device",
                 "--max-request-bytes", "--exit-timeout-secs", "--log-format", "--log-level", "SERVING_"):
        assert flag in out.stdout


def test_restricted_apis_as_triton_writes_them() -> None:
    settings = parse(["--model-repository", "r",
                      "--http-restricted-api", "shared-memory,model-config,model-repository:Admin-Key=a=b,c",
                      "--http-restricted-api", "statistics:stats-key=s"],
                     {"SERVING_GRPC_RESTRICTED_PROTOCOL": "model-repository:admin-key=x; health,inference:infer-key=y"})
    http = settings.http_restricted_api
    admin = http.restricted("model-repository")
    assert admin is not None and admin.key == "admin-key" and admin.value == "a=b,c"  # split at the first '='
    statistics = http.restricted("statistics")
    assert http.restricted("model-config") is admin and statistics is not None and statistics.key == "stats-key"
    assert http.restricted("inference") is None and http.restricted("health") is None
    assert http.denial("model-repository", {"admin-key": "a=b,c"}) is None
    denial = http.denial("model-repository", {"admin-key": "a=b"})
    assert denial is not None and "expecting header 'admin-key'" in denial
    grpc = settings.grpc_restricted_protocol
    health, repository = grpc.restricted("health"), grpc.restricted("model-repository")
    assert health is not None and health.key == "infer-key" and repository is not None and repository.value == "x"
    assert "a=b,c" not in repr(settings) and "'x'" not in repr(settings)  # values stay out of logs and reprs
    assert parse(["--model-repository", "r"], {}).http_restricted_api.restrictions == ()  # default: open


@pytest.mark.parametrize("argv, env, message", [
    (["--http-restricted-api", "model-repository"], {}, "<group>[,<group>...]:<key>=<value>"),
    (["--http-restricted-api", "model-repository:key="], {}, "<key>=<value>"),
    (["--http-restricted-api", "repository:k=v"], {}, "unknown API group"),
    (["--grpc-restricted-protocol", "health:k=v", "--grpc-restricted-protocol", "health,inference:j=w"], {},
     "more than one restriction"),
    (["--http-restricted-api", "health:bad key=v"], {}, "header key"),
    ([], {"SERVING_HTTP_RESTRICTED_API": "inference:k=v;inference:j=w"}, "more than one restriction"),
    ([], {"SERVING_GRPC_RESTRICTED_PROTOCOL": "repository:k=SECRET"}, "SERVING_GRPC_RESTRICTED_PROTOCOL"),
    (["--http-restricted-api", "health:k=SECRET;health:j=SECRET"], {}, "--http-restricted-api"),
])
def test_bad_restrictions_exit_with_a_usage_message(argv: list[str], env: dict[str, str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--model-repository", "r", *argv], env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "SECRET" not in err  # the value is a credential: never echoed


def test_client_limits_have_production_defaults_flags_and_environment_variables() -> None:
    defaults = parse(["--model-repository", "r"], {})
    assert (defaults.http_header_timeout_secs, defaults.http_body_timeout_secs, defaults.max_connections,
            defaults.admission_wait_secs) == (60.0, 60.0, 1024, 1.0)
    env = {"SERVING_HTTP_HEADER_TIMEOUT_SECS": "5", "SERVING_HTTP_BODY_TIMEOUT_SECS": "7.5",
           "SERVING_MAX_CONNECTIONS": "0", "SERVING_ADMISSION_WAIT_SECS": "0"}
    settings = parse(["--model-repository", "r", "--max-connections", "64"], env)
    assert (settings.http_header_timeout_secs, settings.http_body_timeout_secs, settings.max_connections,
            settings.admission_wait_secs) == (5.0, 7.5, 64, 0.0)


@pytest.mark.parametrize("argv", [
    ["--http-header-timeout-secs", "0"], ["--http-body-timeout-secs", "-1"], ["--max-connections", "-1"],
    ["--admission-wait-secs", "-0.5"], ["--admission-wait-secs", "nan"],
])
def test_bad_client_limits_exit_with_a_usage_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--model-repository", "r", *argv], {})
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_switch_interval_is_a_setting_that_start_applies(tmp_path: Path) -> None:
    assert parse(["--model-repository", "r"], {}).switch_interval_us == 200
    assert parse(["--model-repository", "r"], {"SERVING_SWITCH_INTERVAL_US": "1000"}).switch_interval_us == 1000
    for bad in ("0", "-5", "fast"):
        with pytest.raises(SystemExit):
            parse(["--model-repository", "r", "--switch-interval-us", bad], {})
    before = sys.getswitchinterval()
    server = RunningServer(tmp_path, switch_interval_us=750)
    try:
        assert sys.getswitchinterval() == pytest.approx(750e-6)
    finally:
        server.stop()
        sys.setswitchinterval(before)
