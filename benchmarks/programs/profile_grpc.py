"""CPU per gRPC call of running servers, in interleaved h2load runs: an A/B that a busy machine cannot fool.

On a shared machine a server's request rate swings by 2x from run to run; the CPU time its
threads spend per call (from /proc/PID/task/TID/stat) moves far less. Each round runs h2load
once against every server given, in alternating order, and reads every thread's CPU before and
after; the medians over the rounds are printed per server, with each thread's share by name.

    python benchmarks/programs/profile_grpc.py --body req.bin --calls 6000 --rounds 8 \\
        before=127.0.0.1:8001 after=127.0.0.1:9001

Servers must run on this machine (their PIDs are found from the listening port with ``ss``).
h2load counts a call answered with a gRPC error as succeeded, so the answer's data bytes per call
are printed too: a short answer is an error.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
from dataclasses import dataclass, field

PATH = "/inference.GRPCInferenceService/ModelInfer"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    label: str
    host: str
    port: int
    pid: int
    rates: list[float] = field(default_factory=list)
    data: list[int] = field(default_factory=list)  # answer bytes per call
    threads: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))


def listening_pid(port: int) -> int:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"pid=(\d+)", out)
    if found is None:
        raise SystemExit(f"no process of this machine listens on port {port} (ss shows none)")
    return int(found.group(1))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed: grpc's event_engine threads)."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat, open(f"/proc/{pid}/task/{tid}/comm") as comm:
                fields = stat.read().rsplit(")", 1)[1].split()
                name = "loop" if tid == str(pid) else comm.read().strip()
                if name == "python":  # Python 3.11 names no OS thread: grpc's poller, the model instances, ...
                    name = "other Python threads"
        except OSError:  # a thread that ended between the listing and the read
            continue
        seconds[name] += (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def h2load(target: Target, body: str, calls: int, connections: int, streams: int, timeout: float) -> tuple[float, int]:
    """One run: calls per second, and the answers' data bytes per call."""
    command = ["h2load", "-n", str(calls), "-c", str(connections), "-m", str(streams), "-d", body,
               "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{target.host}:{target.port}{PATH}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout).stdout
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    done = re.search(r"(\d+) succeeded", out)
    data = re.search(r"traffic: .*?\((\d+)\) data", out)
    if rate is None or done is None or data is None:
        raise SystemExit(f"h2load's output was not understood:\n{out[-2000:]}")
    if int(done.group(1)) != calls:
        raise SystemExit(f"{target.label}: {calls - int(done.group(1))} of {calls} calls failed:\n{out[-1000:]}")
    return float(rate.group(1)), int(data.group(1)) // calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="LABEL=HOST:PORT")
    parser.add_argument("--body", required=True, help="a length-prefixed ModelInferRequest (h2load -d)")
    parser.add_argument("--calls", type=int, default=6000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent calls per connection")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take")
    args = parser.parse_args()
    targets = []
    for spec in args.targets:
        label, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        if not label or not host or not port.isdigit():
            raise SystemExit(f"{spec!r}: give LABEL=HOST:PORT")
        targets.append(Target(label, host, int(port), listening_pid(int(port))))
    for index in range(args.rounds):
        for target in targets if index % 2 == 0 else targets[::-1]:
            before = thread_cpu(target.pid)
            rate, data = h2load(target, args.body, args.calls, args.connections, args.streams, args.timeout)
            after = thread_cpu(target.pid)
            target.rates.append(rate)
            target.data.append(data)
            for name in after:
                target.threads[name].append((after[name] - before.get(name, 0.0)) / args.calls * 1e6)
    with open("/proc/loadavg") as loadavg:
        print("load average", *loadavg.read().split()[:3])
    for target in targets:
        per_call = {name: statistics.median(values) for name, values in target.threads.items()}
        total = statistics.median(sum(values[i] for values in target.threads.values()) for i in range(args.rounds))
        print(f"{target.label}: {statistics.median(target.rates):,.0f} req/s (runs: "
              f"{' '.join(f'{r:.0f}' for r in target.rates)}), CPU per call {total:.0f} us, "
              f"answer {statistics.median(target.data):.0f} bytes")
        for name, value in sorted(per_call.items(), key=lambda item: -item[1]):
            if value >= 1:
                print(f"    {name:24s} {value:7.1f} us per call")


if __name__ == "__main__":
    main()
