"""The errors of the drift tool: one root, messages that say how to fix the input."""

from __future__ import annotations


class DriftError(ValueError):
    """Bad input or unusable data: the command line turns it into exit status 2.

    Example::

        try:
            report = window_drift(reference, current)
        except DriftError as error:
            print(f"cannot compare: {error}")
    """
