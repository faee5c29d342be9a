"""The demo: shadowserve end to end on the bundled example (``python -m demo``; see demo/run.py)."""
