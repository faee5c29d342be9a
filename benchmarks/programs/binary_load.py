"""An asyncio load generator speaking the binary tensor extension through tritonclient.http.aio.

N workers share one client; each sends one [1, 64] FP32 request, waits for the answer
(binary output), records the latency and sends the next. Prints one JSON object.

    python benchmarks/programs/binary_load.py --url 127.0.0.1:8000 --model classifier --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import tritonclient.http.aio as httpclient


async def run(url: str, model: str, concurrency: int, duration: float, warmup: int) -> dict[str, object]:
    data = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    inputs = [httpclient.InferInput("INPUT__0", [1, 64], "FP32")]
    inputs[0].set_data_from_numpy(data, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("OUTPUT__0", binary_data=True)]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    client = httpclient.InferenceServerClient(url=url, conn_limit=concurrency)

    async def one() -> bool:
        try:
            result = await client.infer(model, inputs, outputs=outputs)
            if result.as_numpy("OUTPUT__0").shape != (1, 10):
                errors["wrong output shape"] += 1
                return False
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
            errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            return False

    async def worker(deadline: float, record: bool) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            ok = await one()
            if record and ok:
                latencies.append(time.perf_counter() - start)

    try:
        for _ in range(max(1, warmup // concurrency)):  # warm-up: open the connections, fill caches
            await asyncio.gather(*(one() for _ in range(concurrency)))
        errors.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    failures = sum(errors.values())
    return {"rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies) + failures, "failures": failures,
            "errors": [f"{n} x {message}" for message, n in errors.most_common(5)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="host:port")
    parser.add_argument("--model", default="classifier")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=200, help="requests before timing starts")
    args = parser.parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    # asyncio.Runner is Python 3.11+, as are the interpreters these programs run on; mypy checks for 3.10
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[attr-defined]  # 3.11+, see above
        out = runner.run(run(args.url, args.model, args.concurrency, args.duration, args.warmup))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
