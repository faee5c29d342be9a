"""GPU metrics, as Triton exports them, read from NVML (nvidia-ml-py) at scrape time.

``nv_gpu_utilization``, ``nv_gpu_memory_total_bytes``, ``nv_gpu_memory_used_bytes`` and
``nv_gpu_power_usage`` per GPU (label ``gpu_uuid``), plus torch's own allocated and
reserved bytes per device. Where no GPU or no NVML library is present the collector is
not registered at all, so the series are absent rather than zero.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    def __init__(self, nvml: Any, handles: list[tuple[str, Any]]) -> None:
        self.nvml = nvml
        self.handles = handles  # (uuid, handle) per visible GPU, in torch's order

    def collect(self) -> Iterator[Metric]:
        nvml = self.nvml
        labels = ["gpu_uuid"]
        utilization = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=labels)
        total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=labels)
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=labels)
        power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=labels)
        for uuid, handle in self.handles:
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nvml.NVMLError as exc:  # a GPU that fell off the bus: skip it, keep the rest
                log.warning("NVML could not read GPU %s: %s", uuid, exc)
                continue
            utilization.add_metric([uuid], rates.gpu / 100.0)
            total.add_metric([uuid], float(memory.total))
            used.add_metric([uuid], float(memory.used))
            power.add_metric([uuid], watts)
        allocated = GaugeMetricFamily("serving_gpu_torch_allocated_bytes", "Bytes held by torch tensors",
                                      labels=["device"])
        reserved = GaugeMetricFamily("serving_gpu_torch_reserved_bytes", "Bytes held by torch's caching allocator",
                                     labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], float(torch.cuda.memory_allocated(index)))
            reserved.add_metric([device], float(torch.cuda.memory_reserved(index)))
        yield from (utilization, total, used, power, allocated, reserved)


def register_gpu_metrics(registry: CollectorRegistry) -> bool:
    """Register the GPU collector when torch sees a GPU and NVML loads; True when it did."""
    if not torch.cuda.is_available():
        return False
    try:
        import pynvml as nvml
        nvml.nvmlInit()
        handles = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            handles.append((uuid.decode() if isinstance(uuid, bytes) else uuid, handle))
    except Exception as exc:  # noqa: BLE001 - no NVML: no GPU metrics, serving goes on
        log.warning("GPU metrics are off: NVML is not usable (%s)", exc)
        return False
    registry.register(GpuCollector(nvml, handles))
    return True
