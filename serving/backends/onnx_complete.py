"""Triton's auto-complete for ONNX models: a config.pbtxt without inputs or outputs gets them from the model.

What the newest version's ONNX file declares fills only what the config lacks, by Triton's
onnxruntime backend's rules:

* the model can batch when every input and output has a dynamic first dimension; then a
  ``max_batch_size`` of 0 (or none) becomes 4 (Triton's ``default-max-batch-size``) and, with
  no scheduler named, ``dynamic_batching { }`` is added; a model that cannot batch with a
  ``max_batch_size`` above 0 is refused;
* inputs (when none are declared) and outputs (likewise) in the model's order, with their
  datatypes and their dims without the batch dimension; a scalar gets ``dims: [ 1 ]`` with an
  empty ``reshape``, which is how the model sees it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from ..config import DEFAULT_FILENAMES, ONNX
from ..errors import ConfigError
from .onnx import OnnxTensor, import_ort, model_file, open_session, session_tensors, triton_type

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 4


def _newest_version(model_dir: Path) -> int | None:
    try:
        versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
                    and len(p.name) < 19 and int(p.name) > 0]
    except OSError:
        return None
    return max(versions, default=None)


@functools.lru_cache(maxsize=256)
def signature(path: str, size: int, mtime_ns: int, label: str) -> tuple[tuple[OnnxTensor, ...], tuple[OnnxTensor, ...]]:
    """The inputs and outputs an ONNX file declares, read by opening a session on it.

    Remembered by the file's path, size and modification time: a memo of what the file says, not
    state. In poll mode every config is parsed again at each poll, and opening a session on a
    large model each time would cost seconds of loading the weights for nothing.
    """
    ort = import_ort()
    options = ort.SessionOptions()
    # reading the signature only: no graph optimisation, one thread, nothing kept
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # errors come as exceptions; its own lines would break the JSON log
    session = open_session(Path(path), label, options, [("CPUExecutionProvider", {})])
    inputs, _, outputs = session_tensors(session)
    return tuple(inputs.values()), tuple(outputs.values())


def _fill(items: Any, tensors: tuple[OnnxTensor, ...], batching: bool) -> None:
    for tensor in tensors:
        item = items.add()  # a repeated ModelInput or ModelOutput field
        item.name = tensor.name
        item.data_type = pb.DataType.Value(triton_type(tensor.datatype))
        dims = tensor.dims[1:] if batching else tensor.dims
        if dims:
            item.dims.extend(dims)
        else:  # a scalar, or a batch of them: the config says one element, the model sees none
            item.dims.append(1)
            item.reshape.SetInParent()


def complete_onnx(config: pb.ModelConfig, model_dir: Path) -> None:
    """Fill a config's missing inputs, outputs and max_batch_size from its newest version's ONNX file.

    A model directory with no version leaves the config as it is (it is refused for what it
    lacks); an ONNX file that cannot be read is a ConfigError naming it.
    """
    version = _newest_version(model_dir)
    if version is None:
        return
    filename = config.default_model_filename or DEFAULT_FILENAMES[ONNX]
    label = f"{model_dir.name}/{version}/{filename}"
    file = model_file(model_dir / str(version), filename, label)
    info = file.stat()
    inputs, outputs = signature(str(file), info.st_size, info.st_mtime_ns, label)
    can_batch = all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))
    if can_batch:
        if config.max_batch_size == 0:
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            # debug: poll mode completes the config at every poll; the ready line shows max_batch_size
            log.debug("model %s: max_batch_size set to %d, as the model batches (its tensors' first dimensions "
                      "are dynamic); set max_batch_size in config.pbtxt for larger batches", model_dir.name,
                      DEFAULT_MAX_BATCH_SIZE)
        if config.max_batch_size > 1 and not config.HasField("dynamic_batching") \
                and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        fixed = sorted(t.name for t in (*inputs, *outputs) if not t.dims or t.dims[0] != -1)
        raise ConfigError(f"auto-complete of {label} failed: the model does not batch (tensor(s) {fixed} have no "
                          f"dynamic first dimension) but max_batch_size is {config.max_batch_size}; set "
                          "max_batch_size 0")
    batching = config.max_batch_size > 0
    if not config.input:
        _fill(config.input, inputs, batching)
    if not config.output:
        _fill(config.output, outputs, batching)
