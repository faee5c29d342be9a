"""The flag reader every entrypoint shares: defaults written once, variables read as their flags."""

from __future__ import annotations

import dataclasses

import pytest

from serving.flags import Flag, Flags, port, positive_seconds, seconds, size_text


@dataclasses.dataclass(frozen=True)
class Demo:
    name: str
    port: int = 8000
    budget: int = 64 * 1024 * 1024
    tags: tuple[str, ...] = ("a", "b")
    timeout_secs: float = 30.0


def demo() -> Flags:
    return Flags("demo", "A demo.", "", "DEMO_", Demo, [
        Flag("--name", "who", required=True),
        Flag("--port", "port (default {default})", port),
        Flag("--budget", "bytes (default {default})", int, show=size_text),
        Flag("--tag", "repeatable (default {default})", dest="tags", repeatable=True),
        Flag("--timeout-secs", "seconds (default {default}; 100% sure)", positive_seconds),
    ])


def test_the_help_shows_the_dataclass_defaults() -> None:
    text = " ".join(demo().parser.format_help().split())
    for shown in ("who (required)", "port (default 8000)", "bytes (default 64MiB)", "repeatable (default a, b)",
                  "seconds (default 30; 100% sure)"):
        assert shown in text


def test_flags_win_over_variables_and_what_neither_gives_is_left_to_the_dataclass() -> None:
    values = demo().values(["--name", "x", "--port", "0"], {"DEMO_PORT": "9000", "DEMO_TAG": "c, d e"})
    assert values == {"name": "x", "port": 0, "tags": ("c", "d", "e")}
    assert Demo(**values) == Demo("x", 0, tags=("c", "d", "e"))


@pytest.mark.parametrize("argv, environ, message", [
    ([], {}, "--name (or DEMO_NAME) is required"),
    (["--name=x", "--port=many"], {}, "many is not a port"),
    (["--name=x"], {"DEMO_PORT": "70000"}, "DEMO_PORT='70000': 70000 is not a port"),
    (["--name=x"], {"DEMO_TIMEOUT_SECS": "nan"}, "must be more than 0 seconds"),
])
def test_bad_values_exit_with_a_usage_message(argv: list[str], environ: dict[str, str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        demo().values(argv, environ)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_converters_refuse_what_they_cannot_use() -> None:
    assert (port("0"), seconds("0"), positive_seconds("0.5")) == (0, 0.0, 0.5)
    for convert, text in ((port, "-1"), (seconds, "-1"), (seconds, "nan"), (positive_seconds, "0")):
        with pytest.raises(ValueError):
            convert(text)
