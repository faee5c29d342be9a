"""The peers: Seldon MLServer and the KServe ModelServer, each in its own virtualenv.

They pin conflicting dependencies, so each gets a virtualenv under benchmarks/.peers/
(git-ignored), made on first use. torch is installed first and pinned to the project's
CPU build; an unpinned torch would pull a multi-gigabyte CUDA build.

Both serve examples/models/classifier/2/model.pt over the v2 HTTP endpoint with the same
TorchScript calls as serve, the same torch thread count, and no per-request logging.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import PROGRAMS, ServerProcess, Unavailable, free_port, run_install

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    distribution: str  # whose version the report shows
    requirements: tuple[str, ...]  # installed after torch, in one pip call


MLSERVER = Peer("mlserver", "MLServer", "mlserver", (
    "mlserver==1.7.*",
    # MLServer 1.7's inference workers call asyncio.get_event_loop() at start, which
    # uvloop 0.22+ refuses: the workers die in a loop and the model never loads.
    "uvloop<0.22",
))
KSERVE = Peer("kserve", "KServe", "kserve", ("kserve",))
PEERS = (MLSERVER, KSERVE)


def venv_python(peer: Peer) -> Path:
    return PEERS_DIR / peer.name / "bin" / "python"


def ensure_installed(peer: Peer) -> str:
    """Create the peer's virtualenv when missing or stale; return the installed version."""
    venv = PEERS_DIR / peer.name
    marker = venv / ".installed"
    wanted = "\n".join((TORCH, *peer.requirements))
    if not (marker.is_file() and marker.read_text() == wanted):
        PEERS_DIR.mkdir(exist_ok=True)
        log = PEERS_DIR / f"{peer.name}-install.log"
        print(f"setting up {peer.label} in {venv.relative_to(PEERS_DIR.parent.parent)} (log: {log.name})",
              file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(venv_python(peer)), "-m", "pip", "install", "--quiet", TORCH],
                 [str(venv_python(peer)), "-m", "pip", "install", "--quiet", *peer.requirements]]
        run_install(peer.label, steps, log)
        marker.write_text(wanted)
    try:
        return subprocess.run([str(venv_python(peer)), "-c", "import importlib.metadata as m, sys; "
                               f"print(m.version({peer.distribution!r}))"], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        raise Unavailable(f"{peer.label}: its virtualenv is broken ({exc}); delete {venv.name} under "
                          "benchmarks/.peers to rebuild it") from None


def start_mlserver(model_file: Path, workdir: Path, threads: int) -> tuple[ServerProcess, str]:
    """MLServer with adaptive batching (up to 64 rows, 0.5 ms); otherwise its defaults."""
    root = workdir / "mlserver"
    model_dir = root / "classifier"
    model_dir.mkdir(parents=True)
    port = free_port()
    settings = {"debug": False, "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                "metrics_port": free_port()}
    model = {"name": "classifier", "implementation": "runtime.TorchScriptRuntime",
             "max_batch_size": 64, "max_batch_time": 0.0005, "parameters": {"uri": str(model_file)}}
    (root / "settings.json").write_text(json.dumps(settings))
    (model_dir / "model-settings.json").write_text(json.dumps(model))
    shutil.copy(PROGRAMS / "mlserver_runtime.py", model_dir / "runtime.py")
    mlserver = venv_python(MLSERVER).parent / "mlserver"
    process = ServerProcess("MLServer", [str(mlserver), "start", str(root)], workdir / "mlserver.log",
                            env={"BENCH_TORCH_THREADS": str(threads)}, cwd=root)
    return process, f"http://127.0.0.1:{port}"


def start_kserve(model_file: Path, workdir: Path, threads: int) -> tuple[ServerProcess, str]:
    """KServe's ModelServer, one uvicorn worker, gRPC off (it has no batching of its own)."""
    port = free_port()
    argv = [str(venv_python(KSERVE)), str(PROGRAMS / "kserve_server.py"), "--model_name", "classifier",
            "--model_path", str(model_file), "--http_port", str(port), "--grpc_port", str(free_port()),
            "--enable_grpc", "false", "--enable_latency_logging", "false"]
    process = ServerProcess("KServe", argv, workdir / "kserve.log", env={"BENCH_TORCH_THREADS": str(threads)},
                            cwd=workdir)
    return process, f"http://127.0.0.1:{port}"


STARTERS = {"mlserver": start_mlserver, "kserve": start_kserve}

# Triton 2.51 is a peer too, for the front-end benchmark (frontend.py): it needs no torch and starts
# from its own wheel's tree, so it has its own install and start, in triton_peer.py.
