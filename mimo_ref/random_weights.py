"""Random weights and inputs of a given shape, for benchmarks and property tests (a tool: the model never imports it).

- :func:`random_params`: a weight spec (``name -> shape``, e.g. :func:`mimo_ref.lm.param_shapes`) filled like a
  freshly initialised model: N(0, 0.02) matrices, ones for norm weights, zeros for biases.
- :func:`random_weight_bytes`: what that costs in memory, before building it.
- :func:`synthetic_special`: special-token ids for runs without a text tokenizer.
- :func:`speech_prompt`: an all-speech prompt with random codes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mimo_ref.checkpoint import nest
from mimo_ref.config import SpecialTokens


def random_weight_bytes(shapes: dict[str, tuple[int, ...]], dtype) -> tuple[int, int]:
    """(bytes of the weights held in ``dtype``, peak bytes while building them): :func:`random_params` draws one
    float32 tensor at a time, so the peak is the held weights plus the largest tensor in float32."""
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    held = sum(sizes) * jnp.dtype(dtype).itemsize
    return held, held + max(sizes, default=0) * 4


def random_params(shapes: dict[str, tuple[int, ...]], seed: int, dtype, *, place=None) -> dict:
    """Random weights for a weight spec: N(0, 0.02) matrices, ones for norm weights, zeros for biases.

    ``place(name, array)``: puts each tensor on devices (:func:`mimo_ref.sharding.placer`); default: one device.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            value = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * 0.02
        flat[name] = jnp.asarray(value, dtype) if place is None else place(name, value.astype(dtype))
        del value
    return nest(flat)


def synthetic_special(vocab_size: int) -> SpecialTokens:
    """Special ids at the top of the vocabulary, for random-weight runs without a tokenizer."""
    names = [f.name for f in dataclasses.fields(SpecialTokens)]
    return SpecialTokens(**{n: vocab_size - 1 - i for i, n in enumerate(names)})


def speech_prompt(cfg, special: SpecialTokens, groups: int, seed: int) -> np.ndarray:
    """A prompt of ``groups`` speech groups with random codes: ``[C+1, groups*G]``."""
    rng = np.random.default_rng(seed)
    g = cfg.group_size
    ids = np.empty((cfg.audio_channels + 1, groups * g), np.int64)
    ids[0] = special.empty
    for c, empty in enumerate(cfg.speech_empty_ids):
        ids[c + 1] = rng.integers(0, empty, size=groups * g)
    return ids
