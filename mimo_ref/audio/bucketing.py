"""Length buckets for the jitted audio functions, so different audio lengths reuse compiled code.

Inputs are padded to a bucketed length and carry their true lengths as arrays; the math masks what lies past
them (STYLE rule 8). Buckets are powers of two up to ``step`` and then multiples of ``step``, which bounds the
padding at 2x for short inputs and ``step`` frames for long ones, and the number of compiled shapes at about
``log2(step) + longest / step``.
"""

from __future__ import annotations

from mimo_ref.arith import round_up
from mimo_ref.tap import is_collecting


def bucket_length(n: int, *, minimum: int = 64, step: int = 1024) -> int:
    """Smallest bucket >= n: a power of two in ``[minimum, step]``, or a multiple of ``step`` above it."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    if is_collecting():
        return n  # activation dumps run eagerly (nothing to reuse): exact lengths, so no tensor carries padding
    if n <= step:
        size = minimum
        while size < n:
            size *= 2
        return size
    return round_up(n, step)
