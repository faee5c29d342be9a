"""The injector's flags and INJECTOR_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.injector.settings import SYSTEM_NAMESPACES, parse

REQUIRED = ["--tls-cert=/tls/tls.crt", "--tls-key=/tls/tls.key", "--sidecar-image=sidecar:1"]


def test_defaults() -> None:
    settings = parse(REQUIRED, environ={})
    assert (settings.tls_cert, settings.tls_key, settings.sidecar_image) == (Path("/tls/tls.crt"),
                                                                             Path("/tls/tls.key"), "sidecar:1")
    assert (settings.host, settings.port, settings.native_sidecars, settings.on_error) == ("0.0.0.0", 8443, "auto",
                                                                                           "allow")
    assert settings.exclude_namespaces == SYSTEM_NAMESPACES


def test_environment_and_flags() -> None:
    environ = {"INJECTOR_TLS_CERT": "/c", "INJECTOR_TLS_KEY": "/k", "INJECTOR_SIDECAR_IMAGE": "env:1",
               "INJECTOR_PORT": "9443", "INJECTOR_EXCLUDE_NAMESPACE": "ops, batch", "INJECTOR_ON_ERROR": "deny"}
    settings = parse(["--sidecar-image=flag:2"], environ=environ)
    assert settings.sidecar_image == "flag:2", "a flag wins over the environment"
    assert (settings.tls_cert, settings.port, settings.on_error) == (Path("/c"), 9443, "deny")
    assert settings.exclude_namespaces == (*SYSTEM_NAMESPACES, "ops", "batch")


def test_system_namespaces_stay_excluded() -> None:
    settings = parse([*REQUIRED, "--exclude-namespace=ops", "--exclude-namespace=kube-system"], environ={})
    assert settings.exclude_namespaces == (*SYSTEM_NAMESPACES, "ops")


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--tls-cert=/c", "--tls-key=/k"], {}, "--sidecar-image (or INJECTOR_SIDECAR_IMAGE) is required"),
    (REQUIRED, {"INJECTOR_PORT": "70000"}, "INJECTOR_PORT='70000'"),
    (REQUIRED, {"INJECTOR_NATIVE_SIDECARS": "maybe"}, "choose from auto, on, off"),
    ([*REQUIRED, "--cert-reload-secs=0"], {}, "more than 0 seconds"),
])
def test_errors(argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(argv, environ=environ)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
