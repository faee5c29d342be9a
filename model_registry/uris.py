"""``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``: the URIs MLflow users already write."""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference_protocol.names import name_problem

from .errors import RegistryError

SCHEME = "models:/"
ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_VERSION = 2**63 - 1


def alias_problem(alias: str) -> str | None:
    """Why ``alias`` cannot name an alias (MLflow's rules, and one path component), or None."""
    if not ALIAS.fullmatch(alias):
        return "an alias is 1 to 255 letters, digits, '_' or '-'"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return "'latest' and 'v<number>' are reserved by MLflow"
    return None


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a registered model that a repository serves, or None."""
    problem = name_problem(name)
    if problem is None and "@" in name:
        problem = "it holds '@', which separates the alias in models:/NAME@ALIAS"
    return problem


def check_model_name(name: str) -> str:
    problem = model_name_problem(name)
    if problem:
        raise RegistryError(f"model name {name!r} is not valid: {problem}")
    return name


def check_alias(alias: str) -> str:
    problem = alias_problem(alias)
    if problem:
        raise RegistryError(f"alias {alias!r} is not valid: {problem}")
    return alias


def check_version(text: str | int) -> int:
    """A registry version number: a positive decimal integer."""
    value = str(text)
    if not value.isascii() or not value.isdigit() or value.startswith("0") or int(value) > MAX_VERSION:
        raise RegistryError(f"version {value!r} is not valid: a version is a positive whole number such as 3")
    return int(value)


@dataclass(frozen=True)
class ModelUri:
    """A registered model at one version, or at whatever version an alias points to."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias is not None else f"{SCHEME}{self.name}/{self.version}"

    @property
    def moves(self) -> bool:
        """An alias may point elsewhere tomorrow; a version number never does."""
        return self.alias is not None


def parse_model_uri(text: str) -> ModelUri:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; a `RegistryError` on anything else.

    >>> parse_model_uri("models:/classifier@champion")
    ModelUri(name='classifier', version=None, alias='champion')
    """
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise RegistryError(f"{text!r} is not a model URI: write models:/NAME/VERSION or models:/NAME@ALIAS")
    rest = text[len(SCHEME):]
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        return ModelUri(check_model_name(name), alias=check_alias(alias))
    name, slash, version = rest.rpartition("/")
    if not slash:
        shown = ascii(rest)[1:-1]
        raise RegistryError(f"{text!r} names no version or alias: write models:/{shown}/VERSION or "
                            f"models:/{shown}@ALIAS")
    return ModelUri(check_model_name(name), version=check_version(version))
