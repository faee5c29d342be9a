"""Triton's Python backend API (``import triton_python_backend_utils as pb_utils``) for models served here.

The implementation lives in `serving.backends.python`; this module is the name Triton's
``model.py`` files import it by.
"""

from serving.backends.python.autocomplete import ModelConfig
from serving.backends.python.requests import (
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceRequest,
    InferenceResponseSender,
)
from serving.backends.python.responses import InferenceResponse
from serving.backends.python.tensors import (
    TRITON_STRING_TO_NUMPY,
    Logger,
    Tensor,
    TritonError,
    TritonModelException,
    get_input_config_by_name,
    get_input_tensor_by_name,
    get_output_config_by_name,
    get_output_tensor_by_name,
    numpy_to_triton_type,
    triton_string_to_numpy,
    triton_to_numpy_type,
)

__all__ = ["ModelConfig", "InferenceRequest", "InferenceResponse", "InferenceResponseSender", "Tensor", "TritonError",
           "TritonModelException", "Logger", "get_input_tensor_by_name", "get_output_tensor_by_name",
           "get_input_config_by_name", "get_output_config_by_name", "triton_string_to_numpy",
           "triton_to_numpy_type", "numpy_to_triton_type", "TRITON_STRING_TO_NUMPY",
           "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
           "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "TRITONSERVER_REQUEST_RELEASE_ALL",
           "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE"]
