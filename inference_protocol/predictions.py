"""The predicted class of class scores (top-1), computed one way wherever it is counted.

One NaN rule: a row holding NaN has no predicted class, and its top-1 is -1 (``argmax``
alone would name the first NaN's index, a class the model never chose). So in drift
columns NaN rows form a class of their own, in primary/shadow agreement two NaN rows
agree and a NaN row never agrees with a real class, and the runtime's predicted-class
counts leave them out.
"""

from __future__ import annotations

import numpy as np

NO_CLASS = -1  # the top-1 of a row holding NaN


def top1(scores: np.ndarray) -> np.ndarray:
    """Index of the largest score along the last axis, per row; `NO_CLASS` for rows holding NaN.

    >>> top1(np.array([[0.1, 0.7, 0.2], [0.5, np.nan, 0.1]])).tolist()
    [1, -1]
    """
    index = np.argmax(scores, axis=-1)
    if scores.dtype.kind not in "fc":  # integers and BOOL hold no NaN
        return index
    return np.where(np.isnan(scores).any(axis=-1), NO_CLASS, index)
