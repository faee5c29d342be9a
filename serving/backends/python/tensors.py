"""pb_utils' tensors, errors and datatype helpers, as Triton's Python backend documents them."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

__all__ = ["Tensor", "TritonError", "TritonModelException", "Logger", "triton_string_to_numpy",
           "numpy_to_triton_type", "triton_to_numpy_type", "get_input_tensor_by_name", "get_output_tensor_by_name",
           "get_input_config_by_name", "get_output_config_by_name", "V2_TO_NUMPY", "v2_of_dtype"]

# Triton's config data types (model_config.proto's DataType numbers and names) and their numpy types
_TYPES: tuple[tuple[int, str, Any], ...] = (
    (1, "BOOL", np.bool_), (2, "UINT8", np.uint8), (3, "UINT16", np.uint16), (4, "UINT32", np.uint32),
    (5, "UINT64", np.uint64), (6, "INT8", np.int8), (7, "INT16", np.int16), (8, "INT32", np.int32),
    (9, "INT64", np.int64), (10, "FP16", np.float16), (11, "FP32", np.float32), (12, "FP64", np.float64),
    (13, "BYTES", np.object_),
)
_NUMBER_TO_NUMPY = {number: dtype for number, _, dtype in _TYPES}
_NUMPY_TO_NUMBER = {np.dtype(dtype): number for number, _, dtype in _TYPES}
V2_TO_NUMPY = {name: dtype for _, name, dtype in _TYPES}
_NUMBER_TO_V2 = {number: name for number, name, _ in _TYPES}
TRITON_STRING_TO_NUMPY = {("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"): dtype for _, name, dtype in _TYPES}


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a config data type name: ``"TYPE_FP32"`` -> ``numpy.float32``."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """The numpy type of a config data type number (``11`` is FP32); None for one it does not know."""
    return _NUMBER_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The config data type number of a numpy type; ``bytes_`` counts as BYTES (13)."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind == "S":
        return 13
    return _NUMPY_TO_NUMBER.get(dtype)


def v2_of_dtype(dtype: np.dtype) -> str | None:
    """The v2 datatype name (``FP32``, ``BYTES``) of a numpy dtype, or None."""
    number = numpy_to_triton_type(dtype)
    return None if number is None else _NUMBER_TO_V2[number]


class TritonModelException(Exception):
    """Raised by pb_utils calls that fail, and by a model to fail every request of its batch."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        """The message given."""
        return self._msg


class TritonError:
    """An error that fails one response: ``InferenceResponse(error=TritonError("why"))``.

    ``code`` is one of the class constants (``TritonError.INVALID_ARG`` ...); INTERNAL by default.
    """

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        """The error's message."""
        return self._message

    def code(self) -> int:
        """The error's code (a class constant)."""
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class Tensor:
    """A named tensor of an inference request or response, held as a numpy array.

    Example::

        out = pb_utils.Tensor("OUTPUT0", np.asarray(x, dtype=np.float32))
    """

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        if not isinstance(name, str):
            raise TritonModelException("a Tensor's name must be a string")
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        if array.dtype.kind == "U" or array.dtype.kind == "V":
            raise TritonModelException("Tensor dtype used for numpy_array is not support by Python backend. "
                                       "Please use np.object_ instead.")
        if triton_dtype is not None:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is None:
                raise TritonModelException(f"unknown triton_dtype {triton_dtype!r}; give a TYPE_* number (1-13)")
            if array.dtype != np.dtype(wanted):
                try:
                    array = array.view(wanted)  # as Triton: the bytes reinterpreted as the given type
                except (TypeError, ValueError) as exc:
                    raise TritonModelException(f"Tensor '{name}': its bytes cannot be read as triton_dtype "
                                               f"{triton_dtype}: {exc}") from None
        elif numpy_to_triton_type(array.dtype) is None:
            raise TritonModelException(f"Tensor '{name}': numpy dtype {array.dtype} has no Triton datatype")
        self._name = name
        self._array = array

    def name(self) -> str:
        """The tensor's name."""
        return self._name

    def as_numpy(self) -> np.ndarray:
        """The values as a numpy array (BYTES as an object array of ``bytes``)."""
        return self._array

    def triton_dtype(self) -> int | None:
        """The config data type number of the values (``11`` for FP32)."""
        return numpy_to_triton_type(self._array.dtype)

    def shape(self) -> list[int]:
        """The tensor's shape."""
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        """Tensors here are always in host memory."""
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the values (numeric tensors only), for torch.from_dlpack and friends."""
        if self._array.dtype == np.object_:
            raise TritonModelException(f"Tensor '{self._name}' holds BYTES, which DLPack cannot carry")
        return np.ascontiguousarray(self._array).__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A tensor from any object with ``__dlpack__`` (a torch tensor, on any device) or a capsule."""
        if hasattr(dlpack_tensor, "__dlpack__"):
            device = getattr(dlpack_tensor, "device", None)
            if device is not None and getattr(device, "type", "cpu") != "cpu" and hasattr(dlpack_tensor, "cpu"):
                dlpack_tensor = dlpack_tensor.cpu()  # tensors here live in host memory
            return Tensor(name, np.from_dlpack(dlpack_tensor))
        import torch  # a bare capsule: torch reads it (numpy wants an object with __dlpack__)

        return Tensor(name, torch.utils.dlpack.from_dlpack(dlpack_tensor).cpu().numpy())

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, dtype={self._array.dtype}, shape={list(self._array.shape)})"


def get_input_tensor_by_name(inference_request: Any, name: str) -> Tensor | None:
    """The request's input tensor called ``name``, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: Any, name: str) -> Tensor | None:
    """The response's output tensor called ``name`` (a BLS response), or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def _config_entry(model_config: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
    for entry in model_config.get(key) or ():
        if entry.get("name") == name:
            return entry
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config's entry for input ``name`` (from ``json.loads(args["model_config"])``), or None."""
    return _config_entry(model_config, "input", name)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config's entry for output ``name`` (from ``json.loads(args["model_config"])``), or None."""
    return _config_entry(model_config, "output", name)


class Logger:
    """pb_utils.Logger: the model's messages in the server's log, at Triton's levels.

    Example::

        pb_utils.Logger.log_info("loaded")
    """

    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3
    _LEVELS: ClassVar[dict[int, int]] = {INFO: logging.INFO, WARNING: logging.WARNING, ERROR: logging.ERROR,
                                         VERBOSE: logging.DEBUG}
    _log = logging.getLogger("serving.backends.python.model")

    @classmethod
    def log(cls, message: str, level: int = INFO) -> None:
        cls._log.log(cls._LEVELS.get(level, logging.INFO), "%s", message)

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, cls.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, cls.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, cls.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, cls.VERBOSE)
