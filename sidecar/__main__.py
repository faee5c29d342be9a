"""``python -m sidecar``: the same as the ``sidecar`` command."""

from .app import main

main()
