"""Compiled entry points and comparisons shared by the property tests.

Compile time dominates the suite, so every jitted function lives here once (one jit cache each) and the tests
draw configs from the fixed corner lists of :mod:`mimo_ref.testing.strategies` and shapes from small sets: a
compiled program is reused by every example and every test with the same config and shapes.
"""

from __future__ import annotations

import functools

import hypothesis
import jax
import jax.numpy as jnp

from mimo_ref import layers, lm
from mimo_ref.audio import transformer as audio_transformer
from mimo_ref.metrics import max_normalised

input_embeds = jax.jit(lm.input_embeds, static_argnames=("cfg", "empty_id"))
forward = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))


@functools.partial(jax.jit, static_argnames=("cfg",))
def backbone_full(params, embeds: jax.Array, *, cfg) -> jax.Array:
    """The backbone on a whole sequence, no cache: embeds ``[B, T, D]`` -> hidden ``[B, T, D]``."""
    b, t, _ = embeds.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    hidden, _ = lm.backbone(params, embeds, positions, cfg=cfg)
    return hidden


@functools.partial(jax.jit, static_argnames=("cfg",))
def backbone_chunk(params, embeds: jax.Array, cache, write_pos: jax.Array, *, cfg):
    """The backbone on ``embeds`` ``[B, T, D]`` at positions/slots ``write_pos..write_pos+T-1`` of a preallocated
    cache -> (hidden ``[B, T, D]``, cache)."""
    b, t, _ = embeds.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + write_pos, (b, t))
    return lm.backbone(params, embeds, positions, cfg=cfg, cache=cache, write_pos=write_pos)


@functools.partial(jax.jit, static_argnames=("cfg",))
def local_stack_full(params, x: jax.Array, *, cfg) -> jax.Array:
    """The patch decoder's local stack on a whole step sequence, causal, no cache: ``[B, S, Dl] -> [B, S, Dl]``."""
    b, s, _ = x.shape
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    mask = layers.attention_mask(pos, pos, causal=True)
    out, _ = lm.qwen_stack(params["local_transformer"], x, pos, mask, cfg=cfg.local)
    return out


@functools.partial(jax.jit, static_argnames=("heads", "theta"))
def audio_stack(stack_layers, x: jax.Array, mask: jax.Array, *, heads: int, theta: float) -> jax.Array:
    """An audio-tokenizer transformer stack with an explicit mask ``[B, T, T]``: ``[B, T, D] -> [B, T, D]``.

    The mask is an argument (built outside by ``segment_mask``), so one compile serves every window.
    """
    b, t, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t)[None, :], (b, t))
    out, _ = audio_transformer.transformer(stack_layers, x, positions, mask, heads=heads, theta=theta)
    return out


rel_err = max_normalised  # the properties' error measure (mimo_ref/metrics.py)


def assert_close(actual, expected, rtol: float, what: str) -> None:
    """``rel_err <= rtol`` with a message naming what was compared."""
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def event(label: str) -> None:
    """``hypothesis.event`` (statistics with ``--hypothesis-show-statistics``), a no-op when a property is called
    directly on one example (``test.hypothesis.inner_test(...)``)."""
    if hypothesis.currently_in_test_context():
        hypothesis.event(label)
