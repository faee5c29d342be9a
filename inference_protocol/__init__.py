"""The KServe v2 (Open Inference Protocol) wire format, shared by the runtime and the sidecar.

Pure numpy, orjson and the protobuf messages tritonclient ships: no torch, no aiohttp, no
gRPC server, so the sidecar image imports it without either. Each encoding rule of the
protocol is written here once:

- `datatypes`: v2 datatypes, their numpy dtypes, BF16 as raw bits;
- `errors`: the error hierarchy, its HTTP statuses and gRPC codes, the v2 error body;
- `tensors`: protocol-neutral tensors, requests and responses, and the shape checks;
- `binary`: the binary tensor extension (BYTES serialization, the ``binary_data_size`` walk);
- `codecs`: HTTP bodies, JSON tensors with the binary extension;
- `protobuf`: ``ModelInferRequest`` and ``ModelInferResponse``;
- `shm`: the shared-memory extension's tensor parameters (which region, how many bytes, where);
- `headers`: header names;
- `predictions`: the predicted class of class scores (top-1).
"""
