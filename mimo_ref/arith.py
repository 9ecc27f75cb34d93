"""Integer arithmetic on lengths, stated once: the package's only ceiling division.

Works on Python ints and on integer arrays (``lengths // p`` rounded up inside traced code) alike.
"""

from __future__ import annotations


def ceil_div(a, b):
    """``ceil(a / b)`` for integers (exact: no float division), elementwise for arrays."""
    return -(-a // b)


def round_up(n, multiple):
    """The smallest multiple of ``multiple`` that is ``>= n``."""
    return ceil_div(n, multiple) * multiple
