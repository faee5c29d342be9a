"""A remote repository that misbehaves: hangs, garbage, lies, keys that leave the cache, too big, wrong credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import moto.settings
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.app import start
from serving.errors import ConfigError
from serving.settings import Settings
from serving.storage import Limits, RemoteRepository
from serving.storage_fs import Store, StoreError, storage_options
from serving.storage_urls import parse_store_url

from .conftest import ROOT, RunningServer, frontend_workers
from .storage_server import KEY_ID, SECRET, BadStore, MotoS3, aws_env, moto_s3

__all__ = ["aws_env", "moto_s3"]  # fixtures, used by name

SIMPLE = ROOT / "tests" / "fixtures" / "models" / "simple"


@pytest.fixture(scope="module")
def lying_store() -> Iterator[BadStore]:
    store = BadStore("listing")
    yield store
    store.close()


@pytest.fixture(autouse=True)
def quiet_moto() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture()
def bucket(moto_s3: MotoS3, request: pytest.FixtureRequest) -> Iterator[str]:
    name = moto_s3.bucket(f"bounds-{abs(hash(request.node.nodeid)) % 10**10}")
    yield name
    moto_s3.delete_prefix(name, "")


def settings_for(url: str, cache: Path, timeout_s: float = 5.0, **overrides: object) -> Settings:
    return Settings(model_repository=parse_store_url(url), model_cache_dir=cache, host="127.0.0.1", http_port=0,
                    grpc_port=0, metrics_port=0, cpu_threads=1, model_repository_timeout_secs=timeout_s,
                    **{"frontend_workers": frontend_workers(), **overrides})  # type: ignore[arg-type]  # fields of each type


def start_fails(settings: Settings) -> tuple[str, float]:
    began = time.monotonic()
    with pytest.raises(ConfigError) as failed:
        asyncio.run(start(settings))
    return str(failed.value), time.monotonic() - began


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_a_store_that_hangs_or_answers_garbage_fails_the_start_in_bounded_time(mode: str, tmp_path: Path,
                                                                               aws_env: None) -> None:
    store = BadStore(mode)
    try:
        message, took = start_fails(settings_for(store.url(), tmp_path / "cache", timeout_s=1.0))
    finally:
        store.close()
    assert took < 10, f"{mode}: {took:.1f}s"
    assert message.startswith(f"--model-repository {store.url()}: listing the repository: ") and "\n" not in message
    if mode == "hang":
        assert "no answer within 1s" in message


def test_a_store_that_sends_more_than_it_listed(tmp_path: Path, aws_env: None) -> None:
    store = BadStore("listing", {"big/config.pbtxt": 10, "big/1/model.py": 10}, body=b"x" * 1_000_000)
    remote = RemoteRepository(parse_store_url(store.url()), tmp_path / "cache", Limits(timeout_s=2.0), {})
    try:
        asyncio.run(remote.start())
    finally:
        store.close()
    assert "big" not in remote.copies and "sends more than the 10 bytes listed" in remote.reasons()["big"]
    assert list(remote.fetched.iterdir()) == []  # the half-fetched model was removed, never linked
    assert [p.name for p in remote.root.iterdir()] == [".fetched"]


def test_a_store_whose_files_never_arrive_is_bounded_and_the_model_not_served(tmp_path: Path, aws_env: None) -> None:
    store = BadStore("listing", {"stalled/config.pbtxt": 10, "stalled/1/model.py": 10}, body=None)
    remote = RemoteRepository(parse_store_url(store.url()), tmp_path / "cache", Limits(timeout_s=1.0), {})
    began = time.monotonic()
    try:
        asyncio.run(remote.start())
    finally:
        store.close()
    assert time.monotonic() - began < 15
    assert "stalled" not in remote.copies and "no answer within" in remote.reasons()["stalled"]
    assert list(remote.fetched.iterdir()) == []


@pytest.mark.parametrize("key", ["evil/1/../../../../escape.txt", "evil//etc/escape.txt", "evil/1/./model.py"])
def test_keys_that_would_leave_the_cache_are_refused(moto_s3: MotoS3, bucket: str, key: str, tmp_path: Path,
                                                     aws_env: None) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    moto_s3.put_tree(bucket, "models/evil", SIMPLE)
    moto_s3.put(bucket, f"models/{key}", "written outside")
    assert f"models/{key}" in moto_s3.keys(bucket)
    server = RunningServer(parse_store_url(moto_s3.url(bucket, "models")), model_cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    try:
        index = {row["name"]: row for row in httpclient.InferenceServerClient(server.url)
                 .get_model_repository_index()}
        assert {name: row["state"] for name, row in index.items()} == {"simple": "READY", "evil": "UNAVAILABLE"}
        assert "cannot be fetched" in index["evil"]["reason"]  # the store holds it: the index says why it is not here
        remote = server.server.sources
        assert isinstance(remote, RemoteRepository)
        assert "cannot be fetched" in remote.reasons()["evil"] and "it is not served" in remote.reasons()["evil"]
    finally:
        server.stop()
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_bad_key_in_a_served_model_keeps_its_copy_serving_and_says_why(moto_s3: MotoS3, bucket: str,
                                                                        tmp_path: Path, aws_env: None) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    server = RunningServer(parse_store_url(moto_s3.url(bucket, "models")), model_cache_dir=tmp_path / "cache",  # type: ignore[arg-type]
                           model_control_mode="poll", repository_poll_secs=3600.0, model_repository_timeout_secs=5.0)
    try:
        control = server.server.control
        assert control is not None
        client = httpclient.InferenceServerClient(server.url)
        moto_s3.put(bucket, "models/simple/1/../../../escape.txt", "outside")
        server.call(control.poll_once())
        row = next(row for row in client.get_model_repository_index() if row["name"] == "simple")
        assert row["state"] == "READY" and "the copy fetched before keeps serving" in row["reason"]
        moto_s3.delete_prefix(bucket, "models/simple/1/..")
        server.call(control.poll_once())
        row = next(row for row in client.get_model_repository_index() if row["name"] == "simple")
        assert row["state"] == "READY" and not row.get("reason")
    finally:
        server.stop()
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_repository_over_the_size_or_count_limit_is_refused_before_fetching(moto_s3: MotoS3, bucket: str,
                                                                              tmp_path: Path, aws_env: None) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    moto_s3.put(bucket, "models/large/1/model.bin", b"\0" * 5000)
    url = moto_s3.url(bucket, "models")
    message, _ = start_fails(settings_for(url, tmp_path / "cache", model_repository_max_bytes=4000))
    assert "more than --model-repository-max-bytes 4,000; nothing was fetched" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "serve.lock"]
    message, _ = start_fails(settings_for(url, tmp_path / "cache", model_repository_max_files=2))
    assert "holds more than 2 files" in message and "--model-repository-max-files" in message


def test_a_repository_that_would_not_fit_on_the_disk_is_refused(moto_s3: MotoS3, bucket: str, tmp_path: Path,
                                                                aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    size = sum(p.stat().st_size for p in SIMPLE.rglob("*") if p.is_file())
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=size - 1))  # a disk nearly full
    message, _ = start_fails(settings_for(moto_s3.url(bucket, "models"), tmp_path / "cache"))
    assert f"needs {size:,} bytes fetched and {tmp_path / 'cache'} has {size - 1:,} free" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "serve.lock"]


def test_a_store_that_fails_during_polls_leaves_every_model_serving(moto_s3: MotoS3, bucket: str, tmp_path: Path,
                                                                    aws_env: None,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    server = RunningServer(parse_store_url(moto_s3.url(bucket, "models")), model_cache_dir=tmp_path / "cache",  # type: ignore[arg-type]
                           model_control_mode="poll", repository_poll_secs=3600.0, model_repository_timeout_secs=5.0)
    hanging = BadStore("hang")
    try:
        remote, control = server.server.sources, server.server.control
        assert isinstance(remote, RemoteRepository) and control is not None
        working = remote.store
        remote.store = Store(parse_store_url(hanging.url(bucket)), {}, 1.0)  # the store stops answering
        for _ in range(2):
            began = time.monotonic()
            server.call(control.poll_once())
            assert time.monotonic() - began < 10
        assert len([r for r in caplog.records if "every model keeps serving" in r.getMessage()]) == 1  # once
        client = httpclient.InferenceServerClient(server.url)
        assert client.is_model_ready("simple")
        remote.store = working
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="serving.storage"):
            server.call(control.poll_once())
        assert "answers again" in caplog.text and client.is_model_ready("simple")
    finally:
        hanging.close()
        server.stop()


@pytest.fixture()
def iam_key(moto_s3: MotoS3) -> dict[str, str]:
    """An IAM user's key that may read S3, as Triton's credential file names its fields."""
    iam = boto3.client("iam", endpoint_url=moto_s3.endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                       aws_secret_access_key=SECRET)
    user = f"reader-{os.getpid()}-{time.monotonic_ns()}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"key_id": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}


def test_credentials_come_from_the_environment_or_tritons_credential_file(
        moto_s3: MotoS3, bucket: str, tmp_path: Path, aws_env: None, iam_key: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    url = moto_s3.url(bucket, "models")
    # from here on the server checks every signature: only the IAM key gets in (moto reads this at each request)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    # the variables of aws_env are not that key: refused, and the message says where credentials come from
    message, _ = start_fails(settings_for(url, tmp_path / "cache"))
    assert "access denied; check the credentials (AWS_ACCESS_KEY_ID" in message
    # the environment, as Triton reads it (boto's chain)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_key["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_key["secret_key"])
    remote = RemoteRepository(parse_store_url(url), tmp_path / "cache", Limits(timeout_s=5.0), {})
    asyncio.run(remote.start())
    remote.close()
    assert "simple" in remote.copies
    # Triton's credential file wins over the environment, by the longest name matching the URL
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    credentials = tmp_path / "cloud_credential.json"
    credentials.write_text(json.dumps({"s3": {"": {"key_id": "wrong", "secret_key": "wrong"},
                                              url.rsplit("/", 1)[0]: {**iam_key, "region": "us-east-1"}}}))
    remote = RemoteRepository(parse_store_url(url), tmp_path / "cache2", Limits(timeout_s=5.0),
                              {"TRITON_CLOUD_CREDENTIAL_PATH": str(credentials)})
    asyncio.run(remote.start())
    remote.close()
    assert "simple" in remote.copies


def test_serve_reports_a_store_that_is_down_in_one_line(tmp_path: Path) -> None:
    store = BadStore("garbage")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "serving", "--model-repository", store.url(), "--model-cache-dir",
             str(tmp_path), "--model-repository-timeout-secs", "1", "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0", "--host", "127.0.0.1"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                 "AWS_EC2_METADATA_DISABLED": "true"})
    finally:
        store.close()
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and f"--model-repository {store.url()}: listing the repository" in errors[0]
    assert "Traceback" not in done.stderr


LIES = st.one_of(st.integers(-2**70, 2**70).map(str), st.sampled_from(["", "x", "1.5", "1e3", "\u00e9", "-0"]))
XML_KEYS = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="<&\x00"), max_size=40)


@pytest.fixture(scope="module")
def lying_client(lying_store: BadStore) -> Store:
    """One client for every example, which tries each call once: the fuzz is about answers, not retries."""
    import s3fs

    url = parse_store_url(lying_store.url())
    options = storage_options(url, {"AWS_ACCESS_KEY_ID": "x"}, 2.0)
    # botocore's max_attempts counts the retries after the first try (total_max_attempts counts them all)
    options["config_kwargs"]["retries"] = {"max_attempts": 0, "mode": "standard"}
    fs = s3fs.S3FileSystem(key="x", secret="y", **options)
    fs.retries = 1
    return Store(url, {}, 2.0, fs=fs)


# few examples with a body that does not parse: most are well-formed
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(XML_KEYS, LIES), max_size=5), truncated=st.sampled_from(["true", "false", "maybe"]),
       token=st.sampled_from(["", "<NextContinuationToken>t</NextContinuationToken>"]),
       tail=st.sampled_from([b"", b"", b"", b"", b"", b"\x00<garbage"]))
def test_fuzz_a_store_that_answers_listings_with_lies(lying_store: BadStore, lying_client: Store,
                                                     entries: list[tuple[str, str]], truncated: str, token: str,
                                                     tail: bytes) -> None:
    contents = "".join(f"<Contents><Key>{key}</Key><Size>{size}</Size><ETag>e</ETag></Contents>"
                       for key, size in entries)
    lying_store.listing = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>models</Name>'
                           f"<IsTruncated>{truncated}</IsTruncated>{token}{contents}"
                           "</ListBucketResult>").encode() + tail
    try:
        found = asyncio.run(lying_client.listing(3))
    except StoreError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert len(found) <= 3 and all(isinstance(r.size, int) and r.size >= 0 for r in found)


@pytest.mark.parametrize(("url", "package", "extra"), [("gs://bucket/models", "gcsfs", "gcs"),
                                                        ("as://account01/container/models", "adlfs", "azure")])
def test_a_store_without_its_library_names_the_extra(url: str, package: str, extra: str, tmp_path: Path) -> None:
    try:
        __import__(package)
    except ImportError:
        pass
    else:
        pytest.skip(f"{package} is installed: this checks the message without it")
    remote = RemoteRepository(parse_store_url(url), tmp_path / "cache", Limits(), {})
    with pytest.raises(ConfigError, match=rf"needs {package}: pip install 'shadowserve\[{extra}\]'"):
        asyncio.run(remote.start())
    remote.close()
