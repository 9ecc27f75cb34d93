"""The transformer stack shared by the tokenizer's encoder, decoder and vocoder (official ``TransformerLayer``).

Each layer is pre-LayerNorm (eps 1e-5): ``x + attn(ln1(x))`` then ``x + fc2(gelu(fc1(ln2(x))))`` with exact (erf)
GELU. Attention has biases on q, v and out but none on k (official ``Attention``), RoPE on q and k, and the
flash-attn ``varlen`` semantics of the official code: every sequence of the batch attends only within itself,
with an optional ``(left, right)`` window and causal flag. Here sequences are rows of a padded batch
``[B, T, D]`` with their lengths; padded keys are masked, padded query rows compute finite values that callers
discard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_ref.layers import Params, apply_rope, attend, attention_mask, gelu_mlp, layer_norm, linear, rope_tables
from mimo_ref.precision import at_use
from mimo_ref.tap import tap

LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default, used by every norm of the tokenizer


def self_attention(params: Params, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, *, heads: int):
    """Official ``Attention``: x ``[B, T, D]``, cos/sin ``[B, T, H]``, mask ``[B, T, T]`` -> ``[B, T, D]``."""
    b, t, d = x.shape
    q = linear(params["q_proj"], x).reshape(b, t, heads, d // heads)  # [B, T, D] -> [B, T, N, H]
    k = linear(params["k_proj"], x).reshape(b, t, heads, d // heads)  # [B, T, D] -> [B, T, N, H] (no bias)
    v = linear(params["v_proj"], x).reshape(b, t, heads, d // heads)  # [B, T, D] -> [B, T, N, H]
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    out = attend(q, k, v, mask)  # softmax scale 1/sqrt(H), as flash-attn's default
    return linear(params["out_proj"], out.reshape(b, t, d))  # [B, T, N, H] -> [B, T, D]


def transformer_layer(params: Params, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, *, heads: int):
    """Official ``TransformerLayer``: x ``[B, T, D]`` -> ``[B, T, D]``."""
    h = layer_norm(params["self_attn_layer_norm"], x, eps=LAYER_NORM_EPS)
    x = x + self_attention(params["self_attn"], h, cos, sin, mask, heads=heads)
    h = layer_norm(params["final_layer_norm"], x, eps=LAYER_NORM_EPS)
    x = x + gelu_mlp(params, h)  # fc1 [D -> F], exact GELU, fc2 [F -> D]
    if x.dtype in (jnp.float16, jnp.bfloat16):
        # official: half-precision activations that overflowed are clamped to +-(max - 1000); clipping finite
        # in-range values is a no-op, so an unconditional clip equals the official data-dependent branch
        limit = float(jnp.finfo(x.dtype).max) - 1000.0
        x = jnp.clip(x, -limit, limit)
    return x


def segment_mask(lengths: jax.Array, t: int, *, causal: bool, window: tuple[int, int]) -> jax.Array:
    """Attention mask ``[B, T, T]`` for rows of ``lengths`` ``[B]`` padded to ``t``: keys past a row's length are
    hidden, plus the flash-attn window / causal rule on in-row positions."""
    pos = jnp.broadcast_to(jnp.arange(t)[None, :], (lengths.shape[0], t))  # [T] -> [B, T]
    valid = pos < lengths[:, None]  # [B, T]
    return attention_mask(pos, pos, causal=causal, window=window, k_valid=valid)


def transformer(
    layers: list[Params],
    x: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    *,
    heads: int,
    theta: float,
    bf16_inv_freq: bool = False,
    keep_layer: int | None = None,
    name: str = "audio.transformer",
) -> tuple[jax.Array, jax.Array | None]:
    """Run ``layers`` over x ``[B, T, D]`` with RoPE ``positions`` ``[B, T]`` and ``mask`` ``[B, T, T]``.

    Returns the last layer's output ``[B, T, D]`` and, when ``keep_layer`` (1-based) is given, that layer's
    output (the encoder's skip connection), else None. ``name``: prefix of the per-layer activation taps.
    RoPE tables are computed in float32 and cast to x's dtype (official ``RotaryEmbedding``); ``bf16_inv_freq``
    rounds the ``inv_freq`` buffer to bfloat16 first, as the official wrapper's ``.bfloat16()`` does.
    """
    head_dim = x.shape[-1] // heads
    inv_freq_dtype = jnp.bfloat16 if bf16_inv_freq else jnp.float32
    cos, sin = rope_tables(positions, head_dim=head_dim, theta=theta, dtype=x.dtype, inv_freq_dtype=inv_freq_dtype)
    kept = None
    for i, params in enumerate(layers):
        params = at_use(params, x.dtype, x)  # bf16-stored weights upcast per layer (mimo_ref/precision.py)
        x = tap(f"{name}.layer{i}", transformer_layer(params, x, cos, sin, mask, heads=heads))
        if keep_layer is not None and i == keep_layer - 1:
            kept = x
    return x, kept
