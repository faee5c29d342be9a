"""What the dataplane hands the batcher; the protocol's own objects are `inference_protocol.tensors`'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class Work(NamedTuple):
    """What a validated request hands the batcher."""

    inputs: dict[str, np.ndarray]
    outputs: frozenset[str] | None  # the outputs the request asked for; None: all of them
    id: str | None = None  # the client's request id, which Triton shows the model
    parameters: Mapping[str, Any] = {}  # the request's parameters, which Triton shows the model too
    span: Any = None  # the request's tracing span (`serving.spans`); None when tracing is off
