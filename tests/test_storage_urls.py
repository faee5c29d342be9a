"""Triton's object-storage URLs and credential conventions, and the keys that may become paths in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inference_protocol.names import name_problem
from serving.errors import ConfigError
from serving.settings import parse
from serving.storage import Limits, RemoteRepository
from serving.storage_fs import Remote, storage_options
from serving.storage_urls import StoreUrl, is_store_url, key_problem, parse_store_url, repository_location


@pytest.mark.parametrize(("text", "expected"), [
    ("s3://bucket/path/to/repo", StoreUrl("s3", "bucket", "path/to/repo")),
    ("s3://bucket", StoreUrl("s3", "bucket")),
    ("s3://bucket/models/", StoreUrl("s3", "bucket", "models")),
    ("s3://localhost:9000/bucket/models", StoreUrl("s3", "bucket", "models", "http://localhost:9000")),
    ("s3://http://10.0.0.1:80/bucket", StoreUrl("s3", "bucket", "", "http://10.0.0.1:80")),
    ("s3://https://s3.us-west-004.backblazeb2.com:443/my-bucket/m",
     StoreUrl("s3", "my-bucket", "m", "https://s3.us-west-004.backblazeb2.com:443")),
    ("gs://gcs-bucket-002/model_repository", StoreUrl("gs", "gcs-bucket-002", "model_repository")),
    ("as://account01/container/path/to/repo", StoreUrl("as", "container", "path/to/repo", account="account01")),
    ("az://container/repo", StoreUrl("az", "container", "repo")),
])
def test_triton_forms(text: str, expected: StoreUrl) -> None:
    assert parse_store_url(text) == expected
    assert parse_store_url(str(expected)) == expected  # the canonical text reads back the same


@pytest.mark.parametrize(("text", "says"), [
    ("ftp://host/path", "ftp:// is not a supported model repository"),
    ("s3://", "is not a bucket name"),
    ("s3://a/x", "a is not a bucket name"),
    ("s3://bucket/a/../b", "'.' or '..'"),
    ("s3://bucket/a//b", "empty path component"),
    ("s3://bucket/a?versionId=1", "'?' or '#'"),
    ("s3://https://host/bucket", "needs host:port"),
    ("s3://host:99999/bucket", "is not a TCP port"),
    ("as://Account/container", "is not an Azure storage account name"),
    ("gs://UPPER/x", "is not a bucket name"),
    ("s3://bucket/\x00", "control character"),
])
def test_refused_with_the_form_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_store_url(text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_flag_keeps_directories_as_paths() -> None:
    assert repository_location("/models") == Path("/models")
    assert repository_location("relative/dir") == Path("relative/dir")
    assert parse(["--model-repository", "s3://host:9000/bucket/m"]).model_repository == \
        StoreUrl("s3", "bucket", "m", "http://host:9000")
    settings = parse([], {"SERVING_MODEL_REPOSITORY": "gs://bucket/m", "AZURE_STORAGE_KEY": "secret",
                          "TRITON_CLOUD_CREDENTIAL_PATH": "/c.json", "UNRELATED": "x"})
    assert settings.model_repository == StoreUrl("gs", "bucket", "m")
    assert settings.storage_environ == {"AZURE_STORAGE_KEY": "secret", "TRITON_CLOUD_CREDENTIAL_PATH": "/c.json"}
    assert "secret" not in repr(settings)


def test_a_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--model-repository", "s3://bucket/../x"])
    assert exited.value.code == 2 and "'.' or '..'" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../x", "..", "./a", "a//b", "a\\b", "a/\x01",
                                 "a/" + "x" * 256, "a/\ud800"])
def test_keys_that_would_leave_the_cache(key: str) -> None:
    assert key_problem(key) is not None


@pytest.mark.parametrize("key", ["model/1/model.onnx", "m/config.pbtxt", "m/1/sub dir/é.bin", "m/..hidden", "m/a..b"])
def test_keys_that_are_paths(key: str) -> None:
    assert key_problem(key) is None


@given(st.text(max_size=300))
@example("s3://127.0.0.1:0/bucket")
@example("s3://[::1]:9000/bucket/p")
@example("as://abc/$root/x")
def test_fuzz_urls_parse_or_say_why(text: str) -> None:
    for candidate in (text, "s3://" + text, "gs://" + text, "as://" + text, "s3://https://" + text):
        try:
            url = parse_store_url(candidate)
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        assert is_store_url(candidate)
        assert parse_store_url(str(url)) == url  # what the cache is keyed by reads back the same
        assert url.prefix == "" or key_problem(url.prefix) is None
        assert "/" not in url.bucket and ":" not in url.bucket


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b c", "/", "\\", "\x00", "é", "x" * 300]), max_size=6))
def test_fuzz_keys_never_escape(parts: list[str]) -> None:
    key = "/".join(parts)
    if key_problem(key) is None:
        resolved = (Path("/cache") / key).resolve()
        assert resolved.is_relative_to(Path("/cache")) and resolved != Path("/cache")


def test_storage_options_follow_tritons_conventions(tmp_path: Path) -> None:
    s3 = storage_options(parse_store_url("s3://https://minio:9000/bucket/m"), {}, 7.0)
    assert s3["endpoint_url"] == "https://minio:9000" and "key" not in s3  # the SDK's chain finds the credentials
    assert s3["config_kwargs"]["read_timeout"] == 7.0 and s3["config_kwargs"]["connect_timeout"] == 7.0
    credentials = tmp_path / "cloud_credential.json"
    credentials.write_text(json.dumps({
        "s3": {"": {"key_id": "any", "secret_key": "any-secret"},
               "s3://bucket": {"key_id": "mine", "secret_key": "my-secret", "region": "eu-west-1", "profile": ""}},
        "gs": {"": "/default.json", "gs://gcs-bucket-002": "/second.json"},
        "as": {"": {"account_str": "account01", "account_key": "azure-secret"}}}))
    environ = {"TRITON_CLOUD_CREDENTIAL_PATH": str(credentials)}
    mine = storage_options(parse_store_url("s3://bucket/m"), environ, 1.0)
    assert (mine["key"], mine["secret"], mine["client_kwargs"]) == ("mine", "my-secret", {"region_name": "eu-west-1"})
    assert "profile" not in mine  # empty fields are left to the chain
    assert storage_options(parse_store_url("s3://other-bucket/m"), environ, 1.0)["key"] == "any"
    # "s3://bucket" is a prefix of "s3://bucket2/m" as text, not as a path: no match
    assert storage_options(parse_store_url("s3://bucket2/m"), environ, 1.0)["key"] == "any"
    assert storage_options(parse_store_url("gs://gcs-bucket-002/r"), environ, 1.0)["token"] == "/second.json"
    assert storage_options(parse_store_url("gs://gcs-bucket-003/r"), environ, 1.0)["token"] == "/default.json"
    assert "token" not in storage_options(parse_store_url("gs://bucket/r"), {}, 1.0)  # GOOGLE_APPLICATION_CREDENTIALS
    azure = storage_options(parse_store_url("az://container/r"), environ, 1.0)
    assert (azure["account_name"], azure["account_key"]) == ("account01", "azure-secret")
    shared = storage_options(parse_store_url("as://account02/container/r"),
                             {"AZURE_STORAGE_ACCOUNT": "ignored", "AZURE_STORAGE_KEY": "k"}, 1.0)
    assert (shared["account_name"], shared["account_key"]) == ("account02", "k")
    managed = storage_options(parse_store_url("as://account02/container/r"),
                              {"AZURE_STORAGE_KEY": "k", "AZURE_STORAGE_AUTH_TYPE": "managed_identity"}, 1.0)
    assert "account_key" not in managed and managed["anon"] is False


def test_credential_problems_are_one_line_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AZURE_STORAGE_ACCOUNT"):
        storage_options(parse_store_url("az://container/r"), {}, 1.0)
    broken = tmp_path / "c.json"
    broken.write_text('{"s3": {"": {"secret_key": "hunter2"')
    with pytest.raises(ConfigError) as failed:
        storage_options(parse_store_url("s3://bucket/m"), {"TRITON_CLOUD_CREDENTIAL_PATH": str(broken)}, 1.0)
    assert "is not JSON" in str(failed.value) and "hunter2" not in str(failed.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        storage_options(parse_store_url("s3://bucket/m"), {"TRITON_CLOUD_CREDENTIAL_PATH": str(tmp_path / "no")}, 1.0)


KEY_PARTS = st.sampled_from(["m", "n", "1", "config.pbtxt", "model.py", "..", ".", "", "/", "a b", "\x00", "é"])


@given(st.lists(st.tuples(st.lists(KEY_PARTS, min_size=1, max_size=5), st.integers(0, 10)), max_size=20))
def test_fuzz_listings_only_ever_give_paths_inside_their_model(listing: list[tuple[list[str], int]]) -> None:
    remote = RemoteRepository(parse_store_url("s3://bucket/models"), Path("/nonexistent/cache"), Limits(), {})
    remotes = [Remote("/".join(parts), size, "tag") for parts, size in listing]
    for name, files in remote._models(remotes, None).items():
        assert name_problem(name) is None
        folder = Path("/cache") / name
        for key in files:
            assert key_problem(key) is None
            resolved = (folder / key).resolve()
            assert resolved.is_relative_to(folder) and resolved != folder
            assert not any(other.startswith(key + "/") for other in files)  # no file is also a folder
