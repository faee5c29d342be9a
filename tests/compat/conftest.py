"""Fixtures for comparing serve with the real Triton (tests/compat/triton.py runs it).

``pair`` is one tritonserver and one serve on tests/fixtures/triton in mode none, shared by the
session (the tests compare counts as deltas, and leave no shared-memory region registered);
``start_triton`` starts others with their own flags, stopped with the module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from .servers import Pair, start_pair
from .triton import REPOSITORY, Distribution, Triton, install, missing_libraries, start_server, unsupported

# The wheel's install, begun as soon as the run is known to need it (see pytest_collection_finish).
EARLY = pytest.StashKey[Future[Distribution]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install the wheel (on a clean checkout: minutes of pip) on a thread while the tests
    before tests/compat run, rather than when the first of them asks for it."""
    if session.config.option.collectonly or unsupported():
        return
    if any("triton_distribution" in getattr(item, "fixturenames", ()) for item in session.items):
        pool = ThreadPoolExecutor(1, thread_name_prefix="pytriton-install")
        session.config.stash[EARLY] = pool.submit(install)
        pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def triton_distribution(request: pytest.FixtureRequest) -> Distribution:
    if reason := unsupported():
        pytest.skip(reason)
    early = request.config.stash.get(EARLY, None)
    distribution = early.result() if early is not None else install()
    if reason := missing_libraries(distribution):
        pytest.skip(reason)
    return distribution


def _starter(distribution: Distribution, factory: pytest.TempPathFactory) -> tuple[Callable[..., Triton], list[Triton]]:
    started: list[Triton] = []

    def start(repository: Path = REPOSITORY, *flags: str) -> Triton:
        log = factory.mktemp("tritonserver") / "server.log"
        started.append(start_server(distribution, repository, log, *flags))
        return started[-1]

    return start, started


@pytest.fixture(scope="module")
def start_triton(triton_distribution: Distribution, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Callable[..., Triton]]:
    """Start a tritonserver on ``repository`` with extra flags; all are stopped with the module."""
    start, started = _starter(triton_distribution, tmp_path_factory)
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pair(triton_distribution: Distribution, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """tritonserver and serve in mode none; serve allows shared memory, as Triton 2.51 always does."""
    start, started = _starter(triton_distribution, tmp_path_factory)
    servers = start_pair(start, allow_client_shm=True)
    yield servers
    servers.stop()
    for server in started:
        server.stop()
