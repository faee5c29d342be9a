"""v2 datatypes: BF16 as raw bits, rounded to nearest even from floats and back."""

from __future__ import annotations

import numpy as np
import orjson

from inference_protocol.codecs import decode_infer_request
from inference_protocol.datatypes import DATATYPES, NUMPY_DTYPES, bf16_bits_from_float, float_from_bf16_bits


def request(*inputs: dict) -> bytes:
    return orjson.dumps({"inputs": list(inputs)})


def test_bf16_rounds_to_nearest_even_and_back() -> None:
    values = np.array([1.0, -2.5, 3.140625, 1.00390625, 65504.0, np.inf], dtype=np.float32)
    bits = bf16_bits_from_float(values)
    back = float_from_bf16_bits(bits)
    assert back[:3].tolist() == [1.0, -2.5, 3.140625]
    assert back[3] == 1.0  # halfway between 1.0 and 1.0078125: ties to even
    assert back[5] == np.inf
    assert np.isnan(float_from_bf16_bits(bf16_bits_from_float(np.array([np.nan], np.float32))))[0]
    decoded = decode_infer_request(request({"name": "b", "datatype": "BF16", "shape": [2], "data": [1.0, -2.5]}))
    assert decoded.inputs["b"].array.tolist() == bf16_bits_from_float(np.array([1.0, -2.5])).tolist()


def test_every_datatype_has_a_dtype_and_bf16_travels_as_uint16() -> None:
    assert set(DATATYPES) == set(NUMPY_DTYPES) and len(DATATYPES) == 14
    assert NUMPY_DTYPES["BF16"] == np.uint16 and NUMPY_DTYPES["BYTES"].kind == "O"
