"""Helpers for golden-parity tests: reading fixture files and measuring errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a safetensors fixture file, as numpy."""
    return load_file(str(path))


def rel_l2(actual, expected) -> float:
    """Relative L2 error ``||a - e|| / ||e||`` computed in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    denom = np.linalg.norm(e)
    return float(np.linalg.norm(a - e) / (denom if denom > 0 else 1.0))


def assert_close(actual, expected, tol: float, what: str) -> None:
    """Assert relative L2 error <= tol, with a message naming the tensor and the measured error."""
    err = rel_l2(actual, expected)
    assert err <= tol, f"{what}: relative L2 error {err:.3e} > tolerance {tol:.1e}"
