"""A minimal MLServer runtime for a TorchScript file: the peer the benchmark runs in MLServer.

MLServer imports it as ``runtime.TorchScriptRuntime`` from the model folder that the
benchmark writes (settings.json, model-settings.json, this file as runtime.py). The model's
``parameters.uri`` is the TorchScript file; BENCH_TORCH_THREADS sets torch's threads, as
serve's --cpu-threads does.
"""

from __future__ import annotations

import os

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class TorchScriptRuntime(MLModel):
    async def load(self) -> bool:
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
        uri = await get_model_uri(self._settings)
        self._module = torch.jit.load(uri, map_location="cpu").eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = payload.inputs[0]
        array = NumpyCodec.decode_input(request_input)
        with torch.inference_mode():
            scores = self._module(torch.from_numpy(array)).numpy()
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("OUTPUT__0", scores)])
