"""Flags and their environment variables, the same way for every entrypoint (serve, the sidecar, the injector).

An entrypoint lists its flags as `Flag` specs and keeps its defaults in the fields of its
settings dataclass; `Flags` builds the argparse parser from both and reads each flag's
environment variable (the prefix and the flag's name: ``--http-port`` ↔ ``SERVING_HTTP_PORT``)
with the flag's own conversion. A default is written once, in the dataclass: the help text
shows it where it says ``{default}``. A flag on the command line wins over its variable, which
wins over the default (the field's, applied when the settings are built)::

    reader = Flags("serve", "...", "SERVING_", Settings, [Flag("--http-port", "port (default {default})", port)])
    values = reader.values(["--http-port", "0"], {"SERVING_HTTP_PORT": "9000"})  # {"http_port": 0}

The converters take the text of a flag or a variable and raise `ValueError` with a message
that says what is allowed. Only the standard library is imported: the sidecar's image has
neither torch nor the runtime's other dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_FORMAT = "text"
DEFAULT_LOG_LEVEL = "info"
_N = TypeVar("_N", int, float)


def _checked(value: str, parse: Callable[[str], _N], allowed: Callable[[_N], bool], message: str) -> _N:
    try:
        number = parse(value)
    except ValueError:
        raise ValueError(message) from None
    if not allowed(number):
        raise ValueError(message)
    return number


def port(value: str) -> int:
    """A TCP port; 0 asks the system for a free one."""
    return _checked(value, int, lambda n: 0 <= n <= 65535, f"{value} is not a port: use 0..65535 (0 picks a free port)")


def positive_int(value: str) -> int:
    """An integer above 0."""
    return _checked(value, int, lambda n: n > 0, f"{value} must be a positive integer")


def non_negative_int(value: str) -> int:
    """0 or an integer above it."""
    return _checked(value, int, lambda n: n >= 0, f"{value} must be 0 or a positive integer")


def seconds(value: str) -> float:
    """A number of seconds, 0 or more."""
    # The comparisons are written so that they refuse NaN too.
    return _checked(value, float, lambda n: n >= 0, f"{value} must be a number of seconds, 0 or more")


def positive_seconds(value: str) -> float:
    """A number of seconds above 0."""
    return _checked(value, float, lambda n: n > 0, f"{value} must be more than 0 seconds")


def boolean(value: str) -> bool:
    """true/false, yes/no, on/off or 1/0, in any case."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean: use true or false")


def shown(value: Any) -> str:
    """A default as the help text writes it: ``30`` for 30.0, ``true``, ``a, b`` for a tuple."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return ", ".join(shown(item) for item in value)
    return str(value)


def size_text(size: int) -> str:
    """Bytes in the largest binary unit that divides them: ``128MiB``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag, its environment variable and how both are read.

    ``help`` may say ``{default}``: the default of the settings field, as ``show`` writes it.
    A ``repeatable`` flag collects a tuple; its variable holds several values separated by
    ``split`` (a regular expression), or is one value when ``split`` is None.
    """

    name: str  # "--http-port"
    help: str
    convert: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    dest: str | None = None  # the settings field; None: the name, as an identifier
    metavar: str | None = None
    repeatable: bool = False
    split: str | None = r"[,\s]+"
    required: bool = False
    show: Callable[[Any], str] = shown

    @property
    def field(self) -> str:
        return self.dest or self.name.lstrip("-").replace("-", "_")


def log_flags() -> tuple[Flag, Flag]:
    """``--log-format`` and ``--log-level``, the same for every entrypoint (see `serving.logs`)."""
    return (Flag("--log-format", "text or json, one object a line (default {default})", choices=LOG_FORMATS),
            Flag("--log-level", f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (default {{default}})",
                 choices=LOG_LEVELS))


def _argparse_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert`` for argparse, which shows the message of an ArgumentTypeError only."""

    def converted(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    converted.__name__ = getattr(convert, "__name__", "value")
    return converted


def _field_defaults(settings: type) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


class Flags:
    """An entrypoint's flags: argv parsed by argparse, then the environment for what argv left out."""

    def __init__(self, prog: str, description: str, epilog: str, prefix: str, settings: type,
                 flags: Sequence[Flag]) -> None:
        self.prefix = prefix
        self.flags = tuple(flags)
        self.parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
        defaults = _field_defaults(settings)
        for flag in self.flags:
            text = flag.help
            if "{default}" in text:
                text = text.replace("{default}", flag.show(defaults[flag.field]))
            if flag.required:
                text += " (required)"
            # SUPPRESS: a flag not on the command line is absent from the namespace, so its
            # variable can fill it and the settings' default applies after that.
            self.parser.add_argument(
                flag.name, dest=flag.field, type=_argparse_type(flag.convert), choices=flag.choices,
                metavar=flag.metavar, action="append" if flag.repeatable else "store", default=argparse.SUPPRESS,
                help=text.replace("%", "%%"))  # argparse formats help with %

    def env_name(self, flag: Flag) -> str:
        """The flag's environment variable: ``--http-port`` ↔ ``SERVING_HTTP_PORT``."""
        return self.prefix + flag.name.lstrip("-").upper().replace("-", "_")

    def names(self, field: str) -> str:
        """How an error names a setting: ``--http-port (or SERVING_HTTP_PORT)``."""
        flag = next(flag for flag in self.flags if flag.field == field)
        return f"{flag.name} (or {self.env_name(flag)})"

    def error(self, message: str) -> NoReturn:
        """Exit with status 2, the usage and ``message``."""
        self.parser.error(message)

    def values(self, argv: Sequence[str] | None, environ: Mapping[str, str]) -> dict[str, Any]:
        """Every setting given on the command line or in the environment, by field.

        A variable is converted and checked as its flag is; a bad value, or a required
        setting given nowhere, exits with a usage message naming the flag or the variable.
        """
        given = vars(self.parser.parse_args(argv))
        values: dict[str, Any] = {}
        for flag in self.flags:
            raw = environ.get(self.env_name(flag), "").strip()
            if flag.field in given:
                value = given[flag.field]
                values[flag.field] = tuple(value) if flag.repeatable else value
            elif raw:
                values[flag.field] = self._from_environment(flag, raw)
        for flag in self.flags:
            if flag.required and not values.get(flag.field):
                self.error(f"{self.names(flag.field)} is required")
        return values

    def _from_environment(self, flag: Flag, raw: str) -> Any:
        name = self.env_name(flag)
        items = [item for item in re.split(flag.split, raw) if item] if flag.repeatable and flag.split else [raw]
        try:
            converted = [flag.convert(item) for item in items]
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            self.error(f"{name}={raw!r}: {exc}")
        if flag.choices and any(item not in flag.choices for item in converted):
            self.error(f"{name}={raw!r}: choose from {', '.join(flag.choices)}")
        return tuple(converted) if flag.repeatable else converted[0]
