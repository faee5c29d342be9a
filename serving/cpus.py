"""How many CPU cores this process may use: its affinity, capped by a cgroup CPU quota.

A pod with ``resources.limits.cpu: 2`` on a 64-core node sees 64 cores in `os.cpu_count()`
and in its affinity; the quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) is what the
kernel lets it run. Sizing torch's threads or the front-end workers from the 64 would
oversubscribe the two it has.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup: Path = CGROUP) -> int:
    """The cores this process can use, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def default_frontend_workers(cores: int) -> int:
    """``--frontend-workers auto``: none below 4 cores, then one per 4 cores, at most 8.

    A worker pays where the owner's event loop is the bottleneck and cores sit idle beside it.
    On 2 cores the load generator, the loop and the model's thread keep both busy, and
    workers measured slower than one process (benchmarks/RESULTS.md); the rest of a larger
    machine's cores stay with the owner's loop, the model's threads and the kernel's network work.
    """
    return 0 if cores < 4 else min(8, cores // 4)


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota in cores (1.5 for 150000/100000), or None where none is set or readable."""
    v2 = _read(cgroup / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ratio(parts[0], parts[1])
        return None
    quota, period = _read(cgroup / "cpu" / "cpu.cfs_quota_us"), _read(cgroup / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None or quota.strip() == "-1":
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value, length = int(quota), int(period)
    except ValueError:
        return None
    return value / length if value > 0 and length > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()[:64]
    except OSError:
        return None
