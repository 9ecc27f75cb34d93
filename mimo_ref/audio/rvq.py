"""Residual vector quantizer of the MiMo-Audio-Tokenizer (official ``quantization.py``, inference path).

Level q holds a codebook ``embed`` ``[V_q, D]`` (real tokenizer: V = 1024, 1024, then 128 for the other 18 of
the Q = 20 levels). Encoding picks, level by level, the codeword nearest (squared Euclidean distance) to the
residual and subtracts it; decoding sums the codewords of the levels given (the LM uses the first 8).

Always float32: the official encoder calls ``quantizer.float()`` and quantizes ``hidden_states.float()``
whatever the model dtype, and decodes in float32 too (the f64 fixtures' ``decode.vq`` is float32). The
codebooks are therefore loaded in float32 in every dtype (see ``load.py``).

``params`` here is the checkpoint's ``encoder.quantizer.vq`` node: ``params["layers"][q]["_codebook"]["embed"]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_ref.layers import Params
from mimo_ref.tap import tap

HIGHEST = jax.lax.Precision.HIGHEST  # codes are argmins: keep the distance matmul at full float32 precision


def codebook(params: Params, level: int) -> jax.Array:
    """Codebook of ``level``: ``[V_q, D]`` float32."""
    return params["layers"][level]["_codebook"]["embed"].astype(jnp.float32)


def nearest_codeword(embed: jax.Array, x: jax.Array) -> jax.Array:
    """Index of the nearest codeword to each row: embed ``[V, D]``, x ``[T, D]`` -> ``[T]`` int32.

    Official ``EuclideanCodebook.quantize``: ``argmax(-(|x|^2 - 2 x.e + |e|^2))``, evaluated in that order so
    near-ties round as they do officially; the first index wins a tie (torch ``max``).
    """
    x2 = jnp.sum(x * x, axis=-1, keepdims=True)  # [T, D] -> [T, 1]
    xe = jnp.matmul(x, embed.T, precision=HIGHEST)  # [T, D] @ [D, V] -> [T, V]
    e2 = jnp.sum(embed * embed, axis=-1)[None, :]  # [V, D] -> [1, V]
    score = -(x2 - 2.0 * xe + e2)  # [T, V]
    return jnp.argmax(score, axis=-1).astype(jnp.int32)  # [T, V] -> [T]


def rvq_encode(params: Params, x: jax.Array, *, n_q: int) -> jax.Array:
    """Codes of the first ``n_q`` levels: x ``[..., D]`` (cast to float32) -> ``[n_q, ...]`` int32."""
    lead = x.shape[:-1]
    residual = x.astype(jnp.float32).reshape(-1, x.shape[-1])  # [..., D] -> [T, D]
    codes = []
    for level in range(n_q):
        embed = codebook(params, level)
        tap("audio.rvq.residual", residual.reshape(*lead, -1))  # the residual level `level` quantizes
        index = nearest_codeword(embed, residual)  # [T, D] -> [T]
        residual = residual - jnp.take(embed, index, axis=0)  # [V, D], [T] -> [T, D]
        codes.append(index)
    return tap("audio.rvq.codes", jnp.stack(codes).reshape(n_q, *lead))  # Q x [T] -> [Q, ...]


def rvq_decode(params: Params, codes: jax.Array) -> jax.Array:
    """Sum of the codewords of levels ``0..Q-1``: codes ``[Q, ...]`` int -> ``[..., D]`` float32.

    Official ``ResidualVectorQuantization.decode``: ``0.0 + e_0[c_0] + e_1[c_1] + ...``, in level order.
    """
    total = jnp.zeros((), jnp.float32)
    for level in range(codes.shape[0]):
        total = total + jnp.take(codebook(params, level), codes[level], axis=0)  # [...] -> [..., D]
    return total
