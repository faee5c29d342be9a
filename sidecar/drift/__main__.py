"""``python -m sidecar.drift``: the drift command line."""

from sidecar.drift.cli import main

raise SystemExit(main())
