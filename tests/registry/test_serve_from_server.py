"""`serve --model-source` against a real ``mlflow server``: artifacts over its REST API, alias moves, tampering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from tests.test_model_source import SourceServer, wait_for

from .conftest import Backend, model_dir
from .test_store import tamper


def _answer(client: httpclient.InferenceServerClient, name: str) -> str:
    inp = httpclient.InferInput("INPUT__0", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return str(client.infer(name, [inp]).get_response()["model_version"])


def test_serve_follows_an_alias_on_a_real_server_and_refuses_a_tampered_version(
        mlflow_server: Backend, model_name: str, tmp_path: Path) -> None:
    registry = mlflow_server.open()
    for version in (1, 2, 3):
        registry.register(model_dir(tmp_path, model_name, 1 if version == 1 else 2), model_name)
    registry.set_alias(model_name, "champion", 1)
    third = registry.resolve(f"models:/{model_name}/3")
    tamper(mlflow_server, third.run_id, "2/model.pt")  # a byte changed in the server's artifact store
    server = SourceServer(model_source=(f"models:/{model_name}@champion",), registry_uri=mlflow_server.uri,
                          model_cache_dir=tmp_path / "cache", model_control_mode="poll", repository_poll_secs=0.2)
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert _answer(client, model_name) == "1"

        async def move_under_load() -> set[str]:
            seen: set[str] = set()
            async with aiohttpclient.InferenceServerClient(server.url) as aclient:
                inp = aiohttpclient.InferInput("INPUT__0", [1, 64], "FP32")
                inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
                done = asyncio.Event()

                async def traffic() -> None:
                    while not done.is_set():
                        result = await aclient.infer(model_name, [inp])  # raises on any failed request
                        seen.add(str(result.get_response()["model_version"]))
                        if "2" in seen:
                            done.set()

                workers = [asyncio.ensure_future(traffic()) for _ in range(4)]
                await asyncio.to_thread(registry.set_alias, model_name, "champion", 2)
                await asyncio.wait_for(done.wait(), 60)
                await asyncio.gather(*workers)
            return seen

        assert asyncio.run(move_under_load()) == {"1", "2"}
        registry.set_alias(model_name, "champion", 3)

        def why() -> str:
            return " ".join(row.get("reason", "") for row in client.get_model_repository_index())

        wait_for(lambda: "failed verification" in why(), "said why version 3 is not served", timeout=60)
        assert "2/model.pt does not match its digest" in why() and _answer(client, model_name) == "2"
    finally:
        server.stop()
