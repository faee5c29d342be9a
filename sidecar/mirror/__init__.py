"""Copies of requests to shadows: bounded, fire-and-forget, within a shared memory budget."""
