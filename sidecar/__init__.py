"""The traffic-mirroring sidecar: proxy to the primary or a canary, mirror to shadows, record the pairs.

Run it with ``sidecar`` or ``python -m sidecar`` (see docs/sidecar.md). Grouped by concern:
`config` (flags and the reloadable file), `routing` (pure decisions), `proxy` (the HTTP
and gRPC listeners), `upstream` (the clients of the hop), `mirror` (copies to shadows),
`canary` (analysis, controller, admin API), `records` (decode, compare, write Parquet),
`drift` (offline statistics), `injector` (the admission webhook); `app` composes them.
The README's layout section lists every module.
"""
