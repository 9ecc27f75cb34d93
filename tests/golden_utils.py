"""Helpers for golden-parity tests: reading fixture files and measuring errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mimo_ref.metrics import rel_l2


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a safetensors fixture file, as numpy."""
    return load_file(str(path))


def assert_close(actual, expected, tol: float, what: str) -> None:
    """Assert relative L2 error <= tol, with a message naming the tensor and the measured error."""
    err = rel_l2(actual, expected)
    assert err <= tol, f"{what}: relative L2 error {err:.3e} > tolerance {tol:.1e}"
