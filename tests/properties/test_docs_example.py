"""The worked examples of ``docs/porting_with_properties.md``, executed: ``differential`` catches a deliberately
broken port and passes the fixed one. Keep this file and the guide in sync (the guide quotes it)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from mimo_ref import layers, lm
from mimo_ref.testing import differential
from mimo_ref.testing import strategies as mst

# --- Example 1: a NumPy port of grouped-query attention -------------------------------------------------------


def port_attend(q, k, v, mask):  # q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] -> [B, T, N, H]
    n, kv = q.shape[2], k.shape[2]
    k, v = np.tile(k, (1, 1, n // kv, 1)), np.tile(v, (1, 1, n // kv, 1))  # BUG: np.repeat(k, n // kv, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -1e30)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def port_attend_fixed(q, k, v, mask):
    """The fix: expand the kv heads with ``np.repeat`` first (query head n uses kv head ``n // (N / K)``); the
    port's ``np.tile`` then repeats once, a no-op."""
    n, kv = q.shape[2], k.shape[2]
    return port_attend(q, np.repeat(k, n // kv, axis=2), np.repeat(v, n // kv, axis=2), mask)


def reference_attend(q, k, v, mask):
    return np.asarray(layers.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))


@st.composite
def attention_cases(draw):
    """GQA ratios from a small set (MHA and MQA included), 1 or 5 positions, causal mask, inputs from a seed."""
    n, kv = draw(st.sampled_from([(4, 4), (4, 1), (4, 2), (6, 3)]))  # MHA and MQA hide the bug; 4/2 and 6/3 do not
    t = draw(st.sampled_from([1, 5]))
    rng = np.random.default_rng(draw(mst.seeds()))
    q = rng.standard_normal((1, t, n, 8)).astype(np.float32)
    k = rng.standard_normal((1, t, kv, 8)).astype(np.float32)
    v = rng.standard_normal((1, t, kv, 8)).astype(np.float32)
    return {"q": q, "k": k, "v": v, "mask": np.tril(np.ones((1, t, t), bool))}


def test_differential_catches_the_broken_attention_port():
    with pytest.raises(AssertionError) as info:
        differential(reference_attend, port_attend, attention_cases(), rtol=1e-5)
    message = str(info.value)
    assert "differential: candidate disagrees with reference on drawn case" in message
    assert "drawn inputs:" in message and "q = float32[1, " in message and "mask = bool[1, " in message
    assert "max |candidate - reference|" in message


def test_differential_passes_the_fixed_attention_port():
    differential(reference_attend, port_attend_fixed, attention_cases(), rtol=1e-5)


# --- Example 2: a port's input embedding on corner configs with random params ---------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "empty_id"))
def port_input_embeds(params, input_ids, *, cfg, empty_id):
    """A port of the official ``_prepare_input_embeds`` with one deliberate bug: it sums the speech embeddings in
    the model dtype instead of the official bfloat16 buffer (docs/quirks.md: that moves the embeds by ~2e-3)."""
    text, speech = lm.split_groups(input_ids, cfg=cfg)  # [B, T], [B, T, C, G]
    total = 0.0
    for ch in range(cfg.audio_channels):
        ids = speech[:, :, ch, :]
        emb = params["speech_embeddings"][ch]["weight"][ids]  # [B, T, G, Di]
        total = total + jnp.where((ids == cfg.speech_empty_ids[ch])[..., None], 0.0, emb)  # BUG: no bf16 buffer
    is_speech = (text == empty_id)[:, :, None, None]
    encoded = lm.patch_encoder(params, total * is_speech, cfg=cfg) * is_speech  # [B, T, G, Di]
    b, t = text.shape
    grouped = layers.linear(params["speech_group_downcast"], encoded.reshape(b, t, -1))  # [B, T, D]
    text_embeds = jnp.where((text == empty_id)[..., None], 0.0, params["model"]["embed_tokens"]["weight"][text])
    return text_embeds + grouped


reference_input_embeds = jax.jit(lm.input_embeds, static_argnames=("cfg", "empty_id"))


@st.composite
def embed_cases(draw):
    """A corner config, random params from a drawn seed, and valid ids with speech groups."""
    cfg = draw(mst.lm_corner_configs())
    special = mst.special_tokens(cfg)
    ids = draw(mst.input_ids(cfg, special.empty, batch=2, groups=3))
    return {"params": mst.lm_params(cfg, draw(mst.seeds())), "input_ids": jnp.asarray(ids), "cfg": cfg,
            "empty_id": special.empty}  # fmt: skip


def test_differential_catches_float32_speech_accumulation():
    with pytest.raises(AssertionError, match="output: max \\|candidate - reference\\|"):
        differential(reference_input_embeds, port_input_embeds, embed_cases(), rtol=1e-5)
