"""Named activation taps: how ``mimo-ref dump`` sees inside the pure functions without changing them.

The model functions call ``tap("lm.backbone.layer3", x)`` at every stage boundary. ``tap`` returns ``x``
unchanged; outside :func:`collecting` it does nothing else, and inside jitted code it only runs at trace time,
so the default path computes and compiles exactly as without it.

Inside ``with collecting() as store:`` JAX's jit is disabled (so loops run eagerly and every value is concrete)
and each tap copies its value to host memory under its name. A name that repeats (a layer inside a loop over
groups or steps) is stored as ``name``, ``name#1``, ``name#2``, ... in call order, so two runs of the same
computation give the same names in the same order. The names are listed in ``docs/tracing.md``.

Collections nest: inside two ``collecting()`` blocks every tap is recorded in both stores (each numbering repeats
on its own), so a function that collects its own taps (``mimo_ref.testing.entries``) can run inside a caller's
collection (``mimo_ref.testing.differential`` with ``stages=True``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import numpy as np

_STORES: contextvars.ContextVar[tuple[dict[str, np.ndarray], ...]] = contextvars.ContextVar("mimo_ref_tap", default=())


def tap(name: str, x, *, length=None, axis: int = 1):
    """Record ``x`` under ``name`` while collecting; return ``x`` unchanged.

    ``length``: keep only the first ``length`` entries along ``axis`` (drops bucket padding, so a dump holds
    what the official model computes, not this port's padded layout).
    """
    stores = _STORES.get()
    if not stores:
        return x
    value = np.asarray(x)
    if length is not None:
        value = np.take(value, np.arange(int(length)), axis=axis)
    for store in stores:
        key, k = name, 0
        while key in store:
            k += 1
            key = f"{name}#{k}"
        store[key] = value
    return x


def is_collecting() -> bool:
    """True inside :func:`collecting`."""
    return bool(_STORES.get())


@contextlib.contextmanager
def collecting() -> Iterator[dict[str, np.ndarray]]:
    """Collect every tap of the code run inside, in call order (jit disabled while collecting)."""
    store: dict[str, np.ndarray] = {}
    token = _STORES.set((*_STORES.get(), store))
    try:
        with jax.disable_jit():
            yield store
    finally:
        _STORES.reset(token)
