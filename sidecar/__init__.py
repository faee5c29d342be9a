"""The traffic-mirroring sidecar: proxy to the primary, mirror to shadows, record the pairs.

Run it with ``sidecar`` or ``python -m sidecar`` (see docs/sidecar.md). The modules:
`settings` (flags, environment) and `config` (the reloadable file, watched by `reload`);
`routing` (pure decisions); the transports `proxy` (HTTP) and `grpc_proxy`, over
`upstream` and the lean HTTP/1.1 client (`pool`, `http1`); `mirror` (bounded shadow
dispatch) and `exchange` (a request and its answers); `recorder`, `tensors`, `tables`
and `segments` (records to Parquet, in the schema of `records`); `compare` (agreement);
`health`, `metrics`, `logs`; `runtime` and `app` (the composition root).
"""
