"""Length buckets, the package's one padding policy: different lengths reuse compiled code.

Inputs are padded to a bucketed length and carry their true lengths as arrays; the math masks what lies past
them (STYLE rule 8). Buckets are powers of two from ``minimum`` up to ``step`` and then multiples of ``step``,
which bounds the padding at 2x for short inputs and ``step`` for long ones, and the number of compiled shapes at
about ``log2(step / minimum) + longest / step``.

Who buckets what (each call site passes its ``minimum`` / ``step``):

- audio tokenizer, mel frames and encoder inputs: 64 / 1024 (``mimo_ref/audio/mel.py``, ``encoder.py``,
  ``waveform.py``, ``streaming.py``); decoder codes: 16 / 512 (``decoder.py``);
- generation, prompt groups: :data:`PROMPT_BUCKET` / :data:`PROMPT_BUCKET`, i.e. multiples of 64 groups
  (``mimo_ref/generate.py::prepare``; ``prompt_bucket=1`` gives exact lengths).
"""

from __future__ import annotations

from mimo_ref.arith import round_up
from mimo_ref.tap import is_collecting

PROMPT_BUCKET = 64  # generation: prompts are left-padded to a multiple of this many groups


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
