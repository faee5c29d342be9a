"""A mergeable histogram of float64 values on a fixed, data-independent grid.

Every finite float maps to a 64-bit integer that sorts like the float (its IEEE bits, with
negative values mirrored). A bucket keeps the sign, the exponent and the top ``bits`` bits of
the mantissa, so its width is at most 2**-bits of the values in it. The grid does not depend
on the data: two sketches at the same ``bits`` add bucket by bucket, and at different ``bits``
the finer one is coarsened first (dropping a bit joins buckets pairwise, exactly). When more
than ``cap`` buckets are occupied, ``bits`` drops until they fit, so the sketch stays small
for any data while keeping offset data (300 ± 0.5) finely resolved.

The result of adding values, in any order or split into any parts that are merged later, is
the same sketch: merging is exact, associative and commutative. Bucket boundaries are exact
float values, and a bucket holds [lower, upper), so bin edges taken from bucket boundaries
give exact counts.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import numpy as np

MAX_BITS = 20  # relative resolution 1e-6 while the data is small
MIN_BITS = 0  # one bucket per binade: at most 4,094 buckets for any finite data
DEFAULT_CAP = 4096
_MAGNITUDE = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_SIGN = np.int64(-0x8000_0000_0000_0000)


def sortable(values: np.ndarray) -> np.ndarray:
    """int64 codes that sort like the finite float64 ``values`` (-0.0 and 0.0 share 0)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, -(bits & _MAGNITUDE), bits)


def from_sortable(codes: np.ndarray) -> np.ndarray:
    """The float64 values of sortable codes (the inverse of `sortable`)."""
    codes = np.asarray(codes, dtype=np.int64)
    bits = np.where(codes < 0, (-codes) | _SIGN, codes)
    return bits.view(np.float64)


def _sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


@dataclass
class Sketch:
    """Counts of finite values per bucket; ``keys`` sorted, ``counts`` aligned with them."""

    bits: int = MAX_BITS
    cap: int = DEFAULT_CAP
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        """Count finite ``values`` (the caller drops NaN and inf)."""
        if len(values) == 0:
            return
        keys = sortable(values) >> (52 - self.bits)
        unique, counts = np.unique(keys, return_counts=True)
        self._absorb(unique, counts.astype(np.int64))

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch holding both; neither input changes."""
        result = Sketch(min(self.bits, other.bits), min(self.cap, other.cap), self.keys, self.counts)
        result._coarsen_to(result.bits, from_bits=self.bits)
        keys = other.keys >> (other.bits - result.bits)
        result._absorb(*_sum_by_key(keys, other.counts))
        return result

    def at_bits(self, bits: int) -> Sketch:
        """A copy coarsened to ``bits`` (no finer than it already is)."""
        result = Sketch(self.bits, self.cap, self.keys, self.counts)
        result._coarsen_to(min(bits, self.bits), from_bits=self.bits)
        return result

    def _absorb(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if len(self.keys):
            keys, counts = _sum_by_key(np.concatenate([self.keys, keys]), np.concatenate([self.counts, counts]))
        self.keys, self.counts = keys, counts
        if len(self.keys) > self.cap:
            # keys are sorted and stay sorted when shifted: count distinct ones without sorting
            drop = 1
            while self.bits - drop > MIN_BITS and np.count_nonzero(np.diff(self.keys >> drop)) + 1 > self.cap:
                drop += 1
            self._coarsen_to(self.bits - drop, from_bits=self.bits)

    def _coarsen_to(self, bits: int, *, from_bits: int) -> None:
        if bits < from_bits:
            keys = self.keys >> (from_bits - bits)
            starts = np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1)) if len(keys) else np.zeros(0, np.int64)
            self.keys = keys[starts]
            self.counts = np.add.reduceat(self.counts, starts) if len(starts) else self.counts
        self.bits = bits

    def lower_bounds(self) -> np.ndarray:
        """The smallest value of each bucket."""
        return from_sortable(self.keys << (52 - self.bits))

    def upper_bounds(self) -> np.ndarray:
        """The first value above each bucket (buckets hold [lower, upper))."""
        return from_sortable((self.keys + 1) << (52 - self.bits))

    def to_json(self) -> dict[str, object]:
        deltas = np.diff(self.keys, prepend=np.int64(0)).astype("<i8")
        return {"bits": self.bits, "cap": self.cap, "buckets": len(self.keys),
                "keys": pack(deltas), "counts": pack(self.counts.astype("<i8"))}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Sketch:
        keys = np.cumsum(unpack(str(data["keys"]))).astype(np.int64)
        counts = unpack(str(data["counts"])).astype(np.int64)
        # int() of a JSON value: one of another type raises, as a damaged profile should
        if len(keys) != len(counts) or len(keys) != int(data["buckets"]):  # type: ignore[call-overload]  # see above
            raise ValueError("sketch keys and counts differ in length")
        return cls(int(data["bits"]), int(data["cap"]), keys, counts)  # type: ignore[call-overload]  # as above


def pack(array: np.ndarray) -> str:
    """A little-endian array as compressed base64 text (for JSON)."""
    return base64.b64encode(zlib.compress(array.tobytes(), 6)).decode("ascii")


def unpack(text: str, dtype: str = "<i8") -> np.ndarray:
    """The inverse of `pack`."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).copy()


def aligned_counts(a: Sketch, b: Sketch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both sketches on their common grid: (lower bounds, upper bounds, counts of a, counts of b)."""
    bits = min(a.bits, b.bits)
    a, b = a.at_bits(bits), b.at_bits(bits)
    keys = np.union1d(a.keys, b.keys)
    counts_a = np.zeros(len(keys), np.int64)
    counts_b = np.zeros(len(keys), np.int64)
    counts_a[np.searchsorted(keys, a.keys)] = a.counts
    counts_b[np.searchsorted(keys, b.keys)] = b.counts
    grid = Sketch(bits, a.cap, keys, counts_a)
    return grid.lower_bounds(), grid.upper_bounds(), counts_a, counts_b


def quantile_edges(sketch: Sketch, bins: int) -> np.ndarray:
    """Interior bin edges near the quantiles 1/bins .. (bins-1)/bins, on bucket boundaries.

    Edges are bucket lower bounds, so counts per bin are exact sums of buckets. Ties collapse
    edges (fewer bins); a single occupied bucket (a constant column) gets the bucket's two
    bounds, so values moving off the constant land in an outer bin.
    """
    if len(sketch.keys) == 0:
        return np.zeros(0)
    lower = sketch.lower_bounds()
    if len(sketch.keys) == 1:
        return np.array([lower[0], sketch.upper_bounds()[0]])
    before = np.cumsum(sketch.counts) - sketch.counts  # values below each bucket
    targets = np.arange(1, bins) / bins * sketch.total
    # For each target rank, the bucket boundary with the nearest rank (never the first bucket's
    # lower bound, which would leave the lowest bin empty).
    position = np.clip(np.searchsorted(before, targets), 1, len(before) - 1)
    left = np.clip(position - 1, 1, len(before) - 1)
    nearer_left = np.abs(before[left] - targets) <= np.abs(before[position] - targets)
    chosen = np.where(nearer_left, left, position)
    return np.unique(lower[chosen])
