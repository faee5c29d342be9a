"""Flags and SIDECAR_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.settings import Address, CanaryFlag, Settings, ShadowFlag, parse, parse_canary, parse_shadow


def test_defaults_are_the_documented_ones() -> None:
    settings = parse([], environ={})
    assert settings == Settings()
    assert settings.listen == Address("0.0.0.0", 8080)
    assert settings.grpc_listen == Address("0.0.0.0", 8081)
    assert settings.metrics_port == 9090
    assert settings.primary is None and settings.shadows == ()  # left to the file, then the defaults


def test_every_flag() -> None:
    settings = parse(["--listen", "127.0.0.1:0", "--grpc-listen", "off", "--primary", "http://model:8000/",
                      "--primary-grpc", "model:8001", "--shadow", "v2=http://v2:8000@0.25", "--shadow",
                      "v3=http://v3:8000", "--record-dir", "rec", "--metrics-port", "0", "--config", "c.yaml",
                      "--drain-timeout-secs", "3", "--shadow-drain-secs", "1.5", "--log-format", "json"],
                     environ={})
    assert settings.listen == Address("127.0.0.1", 0)
    assert settings.grpc_listen is None
    assert settings.primary == "http://model:8000"
    assert settings.primary_grpc == "model:8001"
    assert settings.shadows == (ShadowFlag("v2", "http://v2:8000", 0.25), ShadowFlag("v3", "http://v3:8000", 1.0))
    assert settings.record_dir == Path("rec")
    assert settings.config_file == Path("c.yaml")
    assert (settings.drain_timeout_secs, settings.shadow_drain_secs, settings.log_format) == (3.0, 1.5, "json")


def test_environment_and_flags_win() -> None:
    environ = {"SIDECAR_LISTEN": ":9000", "SIDECAR_PRIMARY": "http://env:8000", "SIDECAR_RECORD_DIR": "/r",
               "SIDECAR_SHADOW": "a=http://a:1@0.5, b=http://b:2", "SIDECAR_GRPC_LISTEN": "off",
               "SIDECAR_CONFIG": "/etc/sidecar/config.yaml", "SIDECAR_SHADOW_DRAIN_SECS": "0.5"}
    settings = parse(["--primary", "http://flag:8000"], environ=environ)
    assert settings.listen == Address("0.0.0.0", 9000)
    assert settings.primary == "http://flag:8000"
    assert settings.record_dir == Path("/r")
    assert settings.grpc_listen is None
    assert settings.config_file == Path("/etc/sidecar/config.yaml") and settings.shadow_drain_secs == 0.5
    assert [s.name for s in settings.shadows] == ["a", "b"] and settings.shadows[0].fraction == 0.5
    assert parse(["--shadow", "c=http://c:3"], environ=environ).shadows == (ShadowFlag("c", "http://c:3"),)


def test_shadow_url_with_user_info_keeps_its_at_sign() -> None:
    assert parse_shadow("v2=http://user:pw@host:8000") == ShadowFlag("v2", "http://user:pw@host:8000", 1.0)
    assert parse_shadow("v2=http://user@host:8000@0.1") == ShadowFlag("v2", "http://user@host:8000", 0.1)


@pytest.mark.parametrize("argv, message", [
    (["--shadow", "v2=http://x@1.5"], "outside 0..1"),
    (["--shadow", "noequals"], "NAME=URL[@FRACTION]"),
    (["--shadow", "v2=ftp://x"], "not an http"),
    (["--shadow", "a=http://x", "--shadow", "a=http://y"], "more than once"),
    (["--listen", "8080"], "not HOST:PORT"),
    (["--primary", "localhost:8000"], "not an http"),
    (["--metrics-port", "70000"], "not a port"),
])
def test_invalid_flags_exit_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv, environ={})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_environment_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse([], environ={"SIDECAR_METRICS_PORT": "many"})
    assert "SIDECAR_METRICS_PORT='many'" in capsys.readouterr().err


def test_canary_admin_and_drift_flags() -> None:
    settings = parse(["--canary", "http://v2:8000/@12.5", "--canary-grpc", "v2:8001", "--sticky-header", "X-User-Id",
                      "--admin-listen", ":0", "--admin-token-file", "token", "--drift-profile", "ref.json",
                      "--drift-window", "500"], environ={"SIDECAR_ADMIN_TOKEN": "secret"})
    assert settings.canary == CanaryFlag("http://v2:8000", 12.5)
    assert (settings.canary_grpc, settings.sticky_header) == ("v2:8001", "x-user-id")
    assert settings.admin_listen == Address("127.0.0.1", 0) and settings.admin_bearer() == "secret"
    assert (settings.drift_profile, settings.drift_window) == (Path("ref.json"), 500)
    assert parse(["--admin-listen", "off"], environ={}).admin_listen is None
    assert Settings().admin_listen == Address("127.0.0.1", 9091) and Settings().admin_bearer() is None


def test_canary_urls_and_weights() -> None:
    assert parse_canary("http://user@host:8000") == CanaryFlag("http://user@host:8000", None)  # weight: the file's
    assert parse_canary("http://user@host:8000@0.5") == CanaryFlag("http://user@host:8000", 0.5)
    assert parse_canary("https://c@100") == CanaryFlag("https://c", 100.0)


def test_the_admin_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    assert parse(["--admin-token-file", str(tmp_path / "token")], environ={}).admin_bearer() == "s3cret"


@pytest.mark.parametrize("argv, message", [
    (["--canary", "http://c@150"], "outside 0..100"),
    (["--canary", "c:8000@10"], "is not URL[@WEIGHT]"),
    (["--canary-grpc", "nohost"], "not HOST:PORT"),
    (["--sticky-header", "x user"], "not a header name"),
    (["--drift-window", "0"], "must be a positive integer"),
    (["--shadow", "canary=http://x"], "names the canary"),
])
def test_invalid_canary_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv, environ={})
    assert message in capsys.readouterr().err


def test_the_limits_for_shadows_and_clients_from_flags_and_the_environment() -> None:
    environ = {"SIDECAR_SHADOW_MEMORY_BUDGET_BYTES": "64MiB", "SIDECAR_SHADOW_HEADERS_REMOVE": "x-tenant, X-Corp-*",
               "SIDECAR_HEADER_TIMEOUT_SECS": "2.5", "SIDECAR_MAX_CONNECTIONS": "100"}
    settings = parse(["--shadow-headers-allow", "x-user-id", "--body-timeout-secs", "5", "--idle-timeout-secs", "30",
                      "--admin-max-connections", "8", "--grpc-max-connection-idle-secs", "60",
                      "--grpc-max-concurrent-streams", "16"], environ=environ)
    assert settings.shadow_memory_budget_bytes == 64 * 1024 * 1024
    assert settings.shadow_headers_remove == ("x-tenant", "x-corp-*")
    assert settings.shadow_headers_allow == ("x-user-id",)
    assert (settings.header_timeout_secs, settings.body_timeout_secs, settings.idle_timeout_secs) == (2.5, 5.0, 30.0)
    assert (settings.max_connections, settings.admin_max_connections) == (100, 8)
    assert (settings.grpc_max_connection_idle_secs, settings.grpc_max_concurrent_streams) == (60.0, 16)
    assert Settings().shadow_memory_budget_bytes == 128 * 1024 * 1024 and Settings().header_timeout_secs == 10.0


@pytest.mark.parametrize("argv, message", [
    (["--shadow-memory-budget-bytes", "lots"], "is not a size"),
    (["--shadow-headers-remove", "bad name"], "is not a header name"),
    (["--header-timeout-secs", "0"], "must be more than 0 seconds"),
    (["--max-connections", "0"], "must be a positive integer"),
])
def test_bad_limits_are_refused_with_a_message(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv, environ={})
    assert message in capsys.readouterr().err
