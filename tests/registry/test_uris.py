"""Model URIs: the two forms MLflow users write, and a clear refusal of everything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_registry.errors import RegistryError
from model_registry.uris import ModelUri, parse_model_uri


@pytest.mark.parametrize(("text", "expected"), [
    ("models:/classifier@champion", ModelUri("classifier", alias="champion")),
    ("models:/classifier/3", ModelUri("classifier", version=3)),
    ("models:/a.b-c_d@challenger-2", ModelUri("a.b-c_d", alias="challenger-2")),
])
def test_the_two_forms(text: str, expected: ModelUri) -> None:
    uri = parse_model_uri(text)
    assert uri == expected and str(uri) == text
    assert uri.moves == (expected.alias is not None)


@pytest.mark.parametrize(("text", "message"), [
    ("classifier", "not a model URI"),
    ("runs:/abc/model", "not a model URI"),
    ("models:/classifier", "names no version or alias"),
    ("models:/classifier/0", "positive whole number"),
    ("models:/classifier/03", "positive whole number"),
    ("models:/classifier/-1", "positive whole number"),
    ("models:/classifier/99999999999999999999", "positive whole number"),
    ("models:/classifier@latest", "reserved"),
    ("models:/classifier@v3", "reserved"),
    ("models:/classifier@a b", "letters, digits"),
    ("models:/classifier@", "letters, digits"),
    ("models:/../x/1", "path separator"),
    ("models:/../1", "'.' and '..'"),
    ("models:/.hidden/1", "hidden"),
    ("models:/@champion", "empty"),
])
def test_anything_else_is_refused_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_model_uri(text)


@given(st.text(max_size=64) | st.text(max_size=40).map(lambda t: "models:/" + t))
def test_any_text_is_a_uri_or_a_registry_error(text: str) -> None:
    try:
        uri = parse_model_uri(text)
    except RegistryError as error:
        assert "\n" not in str(error)
        return
    assert parse_model_uri(str(uri)) == uri  # what parses prints back as itself
    assert "/" not in uri.name and uri.name not in (".", "..")
