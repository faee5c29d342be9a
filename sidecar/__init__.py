"""The traffic-mirroring sidecar: proxy to the primary or a canary, mirror to shadows, record the pairs.

Run it with ``sidecar`` or ``python -m sidecar`` (see docs/sidecar.md). The modules:
`settings` (flags, environment) and `config` (the reloadable file, with `values` and
`canary_config`, watched by `reload`); `routing` (pure decisions: sampling, the canary
split, retries); the transports `proxy` (HTTP) and `grpc_proxy`, over `upstream` and the
lean HTTP/1.1 client (`pool`, `http1`), with `guard` (client timeouts, connection caps);
`mirror` (bounded shadow dispatch, within the memory `budget`, with credentials stripped by
`headers`) and `exchange` (a request and its answers); `canary` (the pure analysis),
`rollout` (the canary's weight, phase, analysis loop and webhooks) and `admin` (the admin
API); `recorder`, `tensors`, `tables`, `segments` and `spool` (records to Parquet,
crash-safe, in the schema of `records`); `compare` (agreement); `livedrift` (the live drift
gauges, over `drift.LiveDrift`); `health`, `metrics`, `logs`; `runtime` and `app` (the
composition root).
"""
