"""Properties of the shared layers: RoPE and attention (``mimo_ref/layers.py``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref import layers
from mimo_ref.testing import differential
from mimo_ref.testing import strategies as mst

HEAD_DIMS = [2, 8, 16, 128]
THETAS = [10000.0, 640000.0, 1000000.0]

attend = jax.jit(layers.attend)  # one compile per shape (eager op-by-op dispatch compiles far more)


@functools.partial(jax.jit, static_argnames=("theta",))
def rope(x: jax.Array, positions: jax.Array, *, theta: float) -> jax.Array:
    """``apply_rope`` of x ``[B, T, N, H]`` at integer ``positions`` ``[B, T]`` with float32 tables."""
    cos, sin = layers.rope_tables(positions, head_dim=x.shape[-1], theta=theta, dtype=jnp.float32)
    return layers.apply_rope(x, cos, sin)


@given(head_dim=st.sampled_from(HEAD_DIMS), theta=st.sampled_from(THETAS), seed=mst.seeds())
def test_rope_preserves_norms(head_dim, theta, seed):
    """RoPE rotates each (i, i + H/2) pair: the norm of every head vector is unchanged, at any position."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 3, head_dim)).astype(np.float32)  # [B, T, N, H]
    positions = rng.integers(0, 8192, size=(2, 5))  # [B, T]
    y = np.asarray(rope(jnp.asarray(x), jnp.asarray(positions), theta=theta))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@given(
    head_dim=st.sampled_from(HEAD_DIMS),
    theta=st.sampled_from(THETAS),
    seed=mst.seeds(),
    shift=st.integers(-256, 256),
)
def test_rope_scores_depend_only_on_relative_position(head_dim, theta, seed, shift):
    """``<rope(q, m), rope(k, n)>`` equals ``<rope(q, m + s), rope(k, n + s)>``: attention scores see only m - n.

    Positions stay below 1024 so the float32 angles (official: computed in float32) are accurate to ~1e-4 rad.
    """
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 6, 1, head_dim)).astype(np.float32)
    k = rng.standard_normal((1, 6, 1, head_dim)).astype(np.float32)
    m = rng.integers(256, 768, size=(1, 6))
    n = rng.integers(256, 768, size=(1, 6))

    def scores(qpos, kpos):
        rq = np.asarray(rope(jnp.asarray(q), jnp.asarray(qpos), theta=theta), np.float64)
        rk = np.asarray(rope(jnp.asarray(k), jnp.asarray(kpos), theta=theta), np.float64)
        return np.sum(rq * rk, axis=-1)  # [1, 6, 1]

    scale = np.linalg.norm(q, axis=-1) * np.linalg.norm(k, axis=-1)
    np.testing.assert_array_less(np.abs(scores(m, n) - scores(m + shift, n + shift)), 2e-4 * scale + 1e-6)


def rope_reference(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """RoPE from its definition: pair ``(x_i, x_{i+H/2})`` is the complex number ``x_i + j x_{i+H/2}``, multiplied
    by ``exp(j * p * theta^(-2i/H))`` (a counter-clockwise rotation), float64."""
    h = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, h, 2) / h)  # [H/2]
    angle = positions[..., None, None] * inv_freq  # [B, T, 1, H/2]
    z = (x[..., : h // 2] + 1j * x[..., h // 2 :]) * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


@st.composite
def rope_cases(draw):
    head_dim = draw(st.sampled_from(HEAD_DIMS))
    rng = np.random.default_rng(draw(mst.seeds()))
    x = rng.standard_normal((1, 4, 2, head_dim)).astype(np.float32)  # [B, T, N, H]
    positions = rng.integers(0, 512, size=(1, 4))
    return {"x": x, "positions": positions, "theta": draw(st.sampled_from(THETAS))}


def rope_of_layers(x, positions, theta):
    return np.asarray(rope(jnp.asarray(x), jnp.asarray(positions), theta=theta))


def test_rope_matches_complex_rotation():
    """``apply_rope`` is the half-split (HF Llama/Qwen2) rotation by ``+p * theta^(-2i/H)``; a wrong rotation sign
    or an interleaved pairing would keep norms and relative scores but fail here."""
    differential(rope_reference, rope_of_layers, rope_cases(), rtol=1e-4)


@given(
    window=st.sampled_from([(2, 1), (0, 3), (3, -1), (-1, 0), (1, 1)]),
    causal=st.booleans(),
    query=st.integers(0, 11),
    seed=mst.seeds(),
)
def test_keys_outside_the_window_never_matter(window, causal, query, seed):
    """With ``attention_mask(window=(left, right), causal)``, query i's output ignores keys/values outside
    ``[i - left, i + right]`` (``right = 0`` when causal; -1 unbounded) and depends on those inside."""
    rng = np.random.default_rng(seed)
    t, n, k, h = 12, 4, 2, 8
    q = rng.standard_normal((1, t, n, h)).astype(np.float32)
    keys = rng.standard_normal((2, 1, t, k, h)).astype(np.float32)
    values = rng.standard_normal((2, 1, t, k, h)).astype(np.float32)
    pos = jnp.arange(t)[None, :]
    mask = layers.attention_mask(pos, pos, causal=causal, window=window)
    left, right = window[0], 0 if causal else window[1]
    lo = 0 if left < 0 else max(0, query - left)
    hi = t - 1 if right < 0 else min(t - 1, query + right)
    inside = np.zeros(t, bool)
    inside[lo : hi + 1] = True
    # keys/values of the second draw everywhere outside the window
    k2 = np.where(inside[None, :, None, None], keys[0], keys[1])
    v2 = np.where(inside[None, :, None, None], values[0], values[1])
    out1 = np.asarray(attend(jnp.asarray(q), jnp.asarray(keys[0]), jnp.asarray(values[0]), mask))
    out2 = np.asarray(attend(jnp.asarray(q), jnp.asarray(k2), jnp.asarray(v2), mask))
    np.testing.assert_array_equal(out1[:, query], out2[:, query])
    # ... and the keys inside do matter (the property is not vacuous)
    v3 = np.where(inside[None, :, None, None], values[1], values[0])
    out3 = np.asarray(attend(jnp.asarray(q), jnp.asarray(keys[0]), jnp.asarray(v3), mask))
    assert not np.allclose(out1[:, query], out3[:, query])


@given(ratio=st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3), (3, 1)]), seed=mst.seeds())
def test_grouped_query_heads_equal_repeated_kv(ratio, seed):
    """GQA: query head n uses kv head ``n // (N / K)``, i.e. attention with K kv heads equals attention with each
    kv head repeated N/K times consecutively (``repeat_kv`` / ``repeat_interleave``)."""
    n, k = ratio
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 5, n, 8)).astype(np.float32)
    keys = rng.standard_normal((2, 5, k, 8)).astype(np.float32)
    values = rng.standard_normal((2, 5, k, 8)).astype(np.float32)
    pos = jnp.broadcast_to(jnp.arange(5)[None, :], (2, 5))
    mask = layers.attention_mask(pos, pos, causal=True)
    grouped = attend(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values), mask)
    full = attend(
        jnp.asarray(q),
        jnp.asarray(np.repeat(keys, n // k, axis=2)),
        jnp.asarray(np.repeat(values, n // k, axis=2)),
        mask,
    )
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(full), rtol=1e-6, atol=1e-6)
