"""What the front-end worker tests read from the kernel: which process holds which TCP socket.

A connection's server side lives in the worker that accepted it, so a test that knows its own
local port can tell which worker serves it (`/proc/net/tcp` gives the socket's inode, and
`/proc/PID/fd` the process that holds that inode). Linux only, as the workers themselves are.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import orjson
import tritonclient.grpc as grpcclient

from .conftest import write_model

LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp's states
C = TypeVar("C")

PLUS_ONE = '''
import serving


class PlusOne(serving.Model):
    def predict(self, inputs):
        return {"Y": inputs["X"] + 1}
'''


def model(repo: Path, name: str, source: str, max_batch: int, delay_us: int = 0, **parameters: str) -> None:
    values = "\n".join(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'
                       for key, value in {"warmup": "false", **parameters}.items())
    write_model(repo, name, f"""
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
{values}
""", {1: {"model.py": source}})


@dataclass(frozen=True)
class Socket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def sockets() -> list[Socket]:
    """Every TCP socket of this network namespace (IPv4 and IPv6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            found.append(Socket(int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                                fields[3], int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open (none once it has gone)."""
    inodes: set[int] = set()
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def listeners(port: int, pids: list[int]) -> set[int]:
    """Those of ``pids`` that listen on ``port``."""
    listening = {s.inode for s in sockets() if s.local_port == port and s.state == LISTEN}
    return {pid for pid in pids if socket_inodes(pid) & listening}


def server_side(server_port: int, client_port: int, pids: list[int], timeout: float = 10) -> int:
    """The process among ``pids`` holding the server side of the connection from ``client_port``."""
    deadline = time.monotonic() + timeout
    while True:
        inodes = {s.inode for s in sockets() if s.local_port == server_port and s.remote_port == client_port}
        holders = [pid for pid in pids if socket_inodes(pid) & inodes]
        if holders:
            assert len(holders) == 1, f"connection :{client_port} is held by {holders}"
            return holders[0]
        assert time.monotonic() < deadline, f"no process of {pids} holds the connection from :{client_port}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie has exited already)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and alive(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def maps_torch(pid: int) -> bool:
    """Whether libtorch is mapped into ``pid`` (it is, once anything there imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def wait_for(condition: object, what: str, timeout: float = 30) -> None:
    """Poll ``condition()`` until it is true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]  # any callable
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def x_body(value: float, rows: int = 1) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows, 1], "data": [value] * rows}]})


class Http:
    """One keep-alive HTTP/1.1 connection, whose local port tells which worker took it."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.connection.connect()
        assert self.connection.sock is not None  # connected
        self.local_port = int(self.connection.sock.getsockname()[1])

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, response.read()

    def infer(self, model: str, value: float) -> tuple[int, dict]:
        status, body = self.request("POST", f"/v2/models/{model}/infer", x_body(value),
                                    {"Content-Type": "application/json"})
        return status, orjson.loads(body)

    def close(self) -> None:
        self.connection.close()


def http_spread(port: int, pids: list[int], per_worker: int, attempts: int = 80) -> dict[int, list[Http]]:
    """``per_worker`` connections held by each of ``pids`` (the kernel picks; extra ones are closed)."""
    taken: dict[int, list[Http]] = {pid: [] for pid in pids}
    for _ in range(attempts):
        connection = Http(port)
        assert connection.request("GET", "/v2/health/live")[0] == 200
        holder = server_side(port, connection.local_port, pids)
        if len(taken[holder]) < per_worker:
            taken[holder].append(connection)
        else:
            connection.close()
        if all(len(held) == per_worker for held in taken.values()):
            return taken
    counts = {pid: len(held) for pid, held in taken.items()}
    raise AssertionError(f"{attempts} connections did not reach every worker: {counts}")


def grpc_client(port: int) -> grpcclient.InferenceServerClient:
    # a channel of its own: channels with the same arguments otherwise share one connection
    return grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=[("grpc.use_local_subchannel_pool", 1)])


def grpc_channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _live(client: object) -> None:
    if isinstance(client, grpc.Channel):
        grpc.channel_ready_future(client).result(timeout=30)
    else:
        assert client.is_server_live()  # type: ignore[attr-defined]  # a tritonclient client


def grpc_spread(port: int, pids: list[int], per_worker: int, make: Callable[[int], C],
                attempts: int = 40) -> dict[int, list[C]]:
    """Like `http_spread`, for gRPC clients or channels (``make(port)``): each one's connection is
    found by the local port it adds, so no other connection to ``port`` may open meanwhile."""
    taken: dict[int, list[C]] = {pid: [] for pid in pids}
    for _ in range(attempts):
        before = {s.local_port for s in sockets() if s.remote_port == port and s.state == ESTABLISHED}
        client = make(port)
        _live(client)
        new = {s.local_port for s in sockets() if s.remote_port == port and s.state == ESTABLISHED} - before
        holder = server_side(port, new.pop(), pids) if len(new) == 1 else None
        if holder is not None and len(taken[holder]) < per_worker:
            taken[holder].append(client)
        else:
            client.close()  # type: ignore[attr-defined]  # both kinds close
        if all(len(held) == per_worker for held in taken.values()):
            return taken
    counts = {pid: len(held) for pid, held in taken.items()}
    raise AssertionError(f"{attempts} gRPC clients did not reach every worker: {counts}")


def scrape(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` with these labels on a /metrics page (0 if none)."""
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    total = 0.0
    for match in re.finditer(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.M):  # Triton's names: no _total to strip
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if match.group(1) == name and all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total
