"""The error measures every comparison in this package uses, under one set of names.

- :func:`rel_l2`: relative L2 error ``||a - e|| / ||e||`` in float64 (the golden tolerances: 1e-5 float32,
  1e-6 float64, loose for bfloat16). Insensitive to where in a tensor the error sits; the measure ports report.
- :func:`max_abs`: the largest absolute difference (what 16-bit PCM LSB bounds and ``atol`` are stated in).
- :func:`max_normalised`: ``max |a - e| / max |e|``, what the Hypothesis properties bound.
- :func:`mismatches`: how many entries of two integer (or exact) arrays differ.
- :func:`cosine`: cosine similarity of the flattened tensors (``trace compare``'s extra column).
- :func:`tolerance_excess`: ``|a - e| - (atol + rtol |e|)`` per entry, positive where ``numpy.isclose``'s rule
  (with ``e`` the reference) fails: what :mod:`mimo_ref.testing.differential` bounds.

Each takes two arrays of the same shape; a shape mismatch raises ``ValueError`` naming both shapes.
"""

from __future__ import annotations

import numpy as np


def same_shape(actual, expected) -> tuple[np.ndarray, np.ndarray]:
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise ValueError(f"shape {a.shape} != expected {e.shape}")
    return a, e


def rel_l2(actual, expected) -> float:
    """``||a - e|| / ||e||`` in float64 (``||e|| = 0`` counts as 1, so two zero tensors give 0)."""
    a, e = same_shape(actual, expected)
    a, e = a.astype(np.float64), e.astype(np.float64)
    denom = np.linalg.norm(e)
    return float(np.linalg.norm(a - e) / (denom if denom > 0 else 1.0))


def max_abs(actual, expected) -> float:
    """``max |a - e|`` in float64 (0 for empty arrays)."""
    a, e = same_shape(actual, expected)
    return float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64)))) if e.size else 0.0


def mismatches(actual, expected) -> int:
    """Number of entries where ``a != e``."""
    a, e = same_shape(actual, expected)
    return int(np.sum(a != e))


def max_normalised(actual, expected) -> float:
    """``max |a - e| / max |e|`` in float64 (0 when both are zero): the properties' measure, which bounds every
    entry relative to the tensor's scale (a relative L2 error can hide one wrong entry in a large tensor)."""
    a, e = same_shape(actual, expected)
    scale = float(np.max(np.abs(e.astype(np.float64)))) if e.size else 0.0
    err = max_abs(a, e)
    return err / scale if scale > 0 else err


def cosine(actual, expected) -> float:
    """``<a, e> / (||a|| ||e||)`` in float64 over the flattened tensors (1 when both are zero, 0 when one is)."""
    a, e = same_shape(actual, expected)
    a, e = a.astype(np.float64).ravel(), e.astype(np.float64).ravel()
    norm_a, norm_e = float(np.linalg.norm(a)), float(np.linalg.norm(e))
    if norm_a == 0 or norm_e == 0:
        return float(norm_a == norm_e)
    return float(np.dot(a, e)) / (norm_a * norm_e)


def tolerance_excess(actual, expected, *, rtol: float, atol: float) -> np.ndarray:
    """Per entry ``|a - e| - (atol + rtol * |e|)`` in float64 (complex values by modulus): > 0 where the entry is out
    of tolerance. Non-finite entries must be masked by the caller (``inf - inf`` is NaN)."""
    a, e = same_shape(actual, expected)
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(e) else np.float64
    a, e = a.astype(wide), e.astype(wide)
    return np.abs(a - e) - (atol + rtol * np.abs(e))
