"""Protocol-neutral operations: health, metadata, config, statistics and inference.

The HTTP and gRPC transports are thin layers over one `DataPlane`; every check of a
request against the model's configuration happens here, so both transports give the
same answer with the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from inference_protocol.tensors import InferRequest, InferResponse, Tensor

from .admission import Place
from .config import ModelSpec
from .control import ModelControl
from .errors import ServingError, Unavailable, Unsupported
from .repository import Repository
from .requests import Counted, check_inputs, full_dims, model_parameters, selected_outputs, timeout_us
from .shm import OutputRegions, SharedMemory
from .streaming import DecoupledOnly, is_decoupled, respond
from .types import Work

SERVER_NAME = "shadowserve"  # what metadata answers unless --server-name says otherwise (docs/triton.md)
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "statistics", "schedule_policy")
SHM_EXTENSION = "system_shared_memory"  # listed when --allow-client-shm is on


class DataPlane:
    def __init__(self, repository: Repository, control: ModelControl, version: str,
                 strict_readiness: bool = True, server_name: str = SERVER_NAME,
                 shared_memory: SharedMemory | None = None) -> None:
        self.repository = repository
        self.control = control
        self.version = version
        self.server_name = server_name
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemory()
        self.started = False  # every model that should load at start-up has been tried
        self.draining = False
        self.strict_readiness = strict_readiness
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- health and metadata ---------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        return self.control.startup_ready() if self.strict_readiness else True

    def metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS) + ([SHM_EXTENSION] if self.shared_memory.allowed else [])
        return {"name": self.server_name, "version": self.version, "extensions": extensions}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model (version) serves; `NotFound` for one the server does not know."""
        try:
            self.repository.get(name, version)
        except Unavailable:
            return False
        return True

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.repository.get(name, version)
        spec = model.spec
        entry = self.repository.entry(name)
        return {
            "name": name,
            "versions": [str(v) for v in sorted(entry.versions) if entry.versions[v].state == "READY"],
            "platform": spec.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": full_dims(spec, t)} for t in spec.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": full_dims(spec, t)} for t in spec.outputs],
        }

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        return self.repository.get(name, version).spec

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.model_spec(name, version).to_json()

    def model_stats(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name is None:
            models = [v for e in self.repository.models.values() for v in e.versions.values() if v.stats]
        elif version:
            models = [self.repository.get(name, version)]
        else:
            models = [v for v in self.repository.entry(name).versions.values() if v.stats]
        return {"model_stats": [m.stats.to_triton() for m in models if m.stats is not None]}

    # -- model control ---------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        rows = self.repository.index(ready_only)
        if self.control.sources is not None:
            # a registry source that could not move its model (verification, loading) says so on
            # the rows that still serve, or carry no reason of their own
            reasons = self.control.sources.reasons()
            for row in rows:
                if row["name"] in reasons and (row["state"] == "READY" or not row.get("reason")):
                    row["reason"] = reasons[row["name"]]
            # a model the source holds but could not bring here at all has no directory, so no row yet
            listed = {row["name"] for row in rows}
            rows += [{"name": name, "state": "UNAVAILABLE", "reason": reason}
                     for name, reason in sorted(reasons.items()) if name not in listed]
            rows.sort(key=lambda row: row["name"])
        return rows

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        """Load or reload a model (``--model-control-mode explicit`` only)."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        await self.control.load(name, config_json)

    async def unload_model(self, name: str) -> None:
        """Drain and unload every version of a model (``--model-control-mode explicit`` only)."""
        await self.control.unload(name)

    # -- admission -------------------------------------------------------------------------

    def admission(self, name: str, version: str | None, wait_s: float = 0.0) -> Place:
        """A place in the queue of the version that will serve the request, from its path alone.

        For the transport to enter (``async with``) before it reads and decodes a request's
        body: a draining server and an unknown model or version raise at once, a full queue
        on entering (after waiting up to ``wait_s`` for a place), so a flood costs no
        decoding. The place is given back when the block ends; the transport then calls
        `infer` without awaiting anything first, so that the place passes to this request.
        """
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self.repository.get(name, version)
        batcher, stats = model.batcher, model.stats
        assert batcher is not None and stats is not None
        # a rejection is counted as Triton counts one, with no time spent
        return Place(batcher, wait_s, lambda exc: stats.record_request(0, exc.reason))

    # -- inference -------------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, request: InferRequest, span: Any = None) -> InferResponse:
        """One request through its model's batcher; ``span`` is its tracing span (None: not traced),
        which the batch that computes it links to."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self.repository.get(name, version)
        spec, batcher, stats = model.spec, model.batcher, model.stats
        assert batcher is not None and stats is not None
        if is_decoupled(spec):  # Triton's text; HTTP says its own first
            raise DecoupledOnly("ModelInfer RPC doesn't support models with decoupled transaction policy; "
                              "use ModelStreamInfer (tritonclient.grpc's start_stream)")
        self._in_flight += 1
        self._idle.clear()
        regions: OutputRegions | None = None
        requested = request.outputs
        try:
            with Counted(stats):
                if request.shared_inputs:
                    self.shared_memory.read_inputs(request, name)
                arrays, rows, key = check_inputs(spec, request)
                selected = selected_outputs(spec, request)
                if requested is not None:
                    regions = self.shared_memory.hold_outputs(requested)  # unknown regions fail before compute
                work = Work(arrays, None if requested is None else frozenset(t.name for t in selected),
                            request.id, model_parameters(request.parameters), span)
                outputs = await batcher.submit(work, rows, key, timeout_us(spec, request))
                tensors = [Tensor(out.name, out.datatype, outputs[out.name]) for out in selected]
                in_shared_memory = regions.write(tensors) if regions is not None else frozenset()
        finally:
            if regions is not None:
                regions.release()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        return InferResponse(model_name=name, model_version=str(model.version), outputs=tensors, id=request.id,
                             in_shared_memory=in_shared_memory)

    def is_decoupled(self, name: str, version: str | None = None) -> bool:
        """Whether the model answers through a stream of responses (`infer_stream`, gRPC streams only)."""
        return is_decoupled(self.repository.get(name, version).spec)

    async def infer_stream(self, name: str, version: str | None, request: InferRequest,
                           span: Any = None) -> AsyncGenerator[InferResponse | ServingError, None]:
        """A decoupled model's responses to one request as they come (`serving.streaming.respond`);
        ``span`` is its tracing span, which the batch that computes it links to."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self.repository.get(name, version)
        if request.outputs and any(output.shared_memory for output in request.outputs):
            raise Unsupported(f"model '{name}' is decoupled: its responses cannot be written into shared memory; "
                              "request its outputs without shared_memory_region")
        if request.shared_inputs:
            self.shared_memory.read_inputs(request, name)
        self._in_flight += 1
        self._idle.clear()
        try:
            async with contextlib.aclosing(respond(model, request, span)) as responses:
                async for response in responses:
                    yield response
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    # -- draining --------------------------------------------------------------------------

    def start_drain(self) -> None:
        """Readiness false at once; new requests get 503 from now on."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def in_flight(self) -> int:
        return self._in_flight
