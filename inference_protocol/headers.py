"""Header names of the v2 HTTP protocol."""

from __future__ import annotations

# The length of the JSON header of a body that carries binary tensor data after it
# (the binary tensor data extension); absent when the body is JSON only.
HEADER_LENGTH = "Inference-Header-Content-Length"
