"""The cores a process may use: affinity capped by a cgroup quota (v2 cpu.max, v1 cfs)."""

from __future__ import annotations

import os
from pathlib import Path

from serving.cpus import available_cpus, cgroup_quota

AFFINITY = len(os.sched_getaffinity(0))


def test_v2_quota_caps_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(tmp_path) == 0.5
    assert available_cpus(tmp_path) == 1  # half a core still runs one thread


def test_v2_fractional_quota_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(AFFINITY, 2)


def test_v2_without_a_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    assert available_cpus(tmp_path) == AFFINITY


def test_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 1.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path) is None


def test_garbage_and_absence_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("lots 0\n")
    assert cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("-5 100000\n")
    assert cgroup_quota(tmp_path) is None
    assert available_cpus(tmp_path) == AFFINITY


def test_frontend_workers_auto_follows_the_cores() -> None:
    from serving.cpus import default_frontend_workers

    assert [default_frontend_workers(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 0, 1, 2, 4, 8]


def test_the_flag_takes_auto_or_a_count() -> None:
    import pytest

    from serving.settings import parse as parse_settings

    assert parse_settings(["--model-repository", "/m"], {}).frontend_workers is None
    assert parse_settings(["--model-repository", "/m", "--frontend-workers", "2"], {}).frontend_workers == 2
    assert parse_settings(["--model-repository", "/m"], {"SERVING_FRONTEND_WORKERS": "0"}).frontend_workers == 0
    assert parse_settings(["--model-repository", "/m"], {"SERVING_FRONTEND_WORKERS": "auto"}).frontend_workers is None
    with pytest.raises(SystemExit):
        parse_settings(["--model-repository", "/m", "--frontend-workers", "-1"], {})
