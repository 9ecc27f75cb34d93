"""The properties can fail: each test injects a deliberate bug (a monkeypatched function) and asserts that a property,
called as a plain function, raises; and ``differential`` on the strategies' cases catches the bugs a real port had
(second half of the file).

Compiled functions cache their traces, so every injection runs between two ``jax.clear_caches()``: the property
traces the broken function, and no broken program outlives the test.
"""

from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import jax
import jax.numpy as jnp
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st

from mimo_ref import layers, lm, sampling
from mimo_ref.audio import encoder, rvq, transformer
from mimo_ref.testing import differential, entries, with_stages
from mimo_ref.testing import strategies as mst
from mimo_ref.testing.strategies import AUDIO_CORNERS
from tests.properties import test_prop_audio, test_prop_layers, test_prop_lm, test_prop_sampling


@pytest.fixture
def fresh_traces():
    jax.clear_caches()
    yield
    jax.clear_caches()


def run_property(prop) -> None:
    """Run a Hypothesis test once, without the example database and without shrinking (the first failure is
    reported as found), then restore its settings."""
    saved = dict(prop.__dict__)
    try:
        settings(database=None, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)(prop)()
    finally:
        prop.__dict__.clear()
        prop.__dict__.update(saved)


def test_rope_rotating_the_wrong_way_is_caught(monkeypatch, fresh_traces):
    """Bug: ``rotate_half`` returns ``[x2, -x1]`` (rotation by -angle). Norms and relative scores survive it, the
    comparison with the complex-rotation definition does not."""

    def wrong_sign(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([x2, -x1], axis=-1)

    monkeypatch.setattr(layers, "rotate_half", wrong_sign)
    run_property(test_prop_layers.test_rope_preserves_norms)  # still a rotation: passes
    with pytest.raises(AssertionError, match="differential: candidate disagrees"):
        test_prop_layers.test_rope_matches_complex_rotation()


def test_rope_that_is_not_a_rotation_is_caught(monkeypatch, fresh_traces):
    """Bug: ``rotate_half`` returns ``[-x2, -x1]`` (one sign wrong): no longer a rotation, norms change."""

    def one_sign_wrong(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([-x2, -x1], axis=-1)

    monkeypatch.setattr(layers, "rotate_half", one_sign_wrong)
    with pytest.raises(AssertionError):
        run_property(test_prop_layers.test_rope_preserves_norms)


def test_causal_mask_leaking_the_future_is_caught(monkeypatch, fresh_traces):
    """Bug: ``attention_mask`` lets each query see one position ahead (an off-by-one causal window)."""
    real = layers.attention_mask

    def leaky(q_pos, k_pos, *, causal, window=(-1, -1), **kwargs):
        if causal:
            return real(q_pos + 1, k_pos, causal=True, window=window, **kwargs)
        return real(q_pos, k_pos, causal=False, window=window, **kwargs)

    monkeypatch.setattr(layers, "attention_mask", leaky)
    with pytest.raises(AssertionError):
        run_property(test_prop_lm.test_backbone_is_causal)


def test_kv_cache_written_at_the_wrong_slot_is_caught(monkeypatch, fresh_traces):
    """Bug: ``cache_write`` ignores the write position (every call overwrites slot 0 onwards)."""
    real = layers.cache_write
    monkeypatch.setattr(layers, "cache_write", lambda cache, new, start: real(cache, new, 0))
    with pytest.raises(AssertionError, match="cached vs full"):
        run_property(test_prop_lm.test_backbone_kv_cache_equals_full_forward)


def test_rvq_skipping_a_level_is_caught(monkeypatch, fresh_traces):
    """Bug: the residual is not updated after level 0, so level 1 quantizes ``x`` again instead of the residual."""

    def skips_level_zero(params, x, *, n_q):
        lead = x.shape[:-1]
        residual = x.astype(jnp.float32).reshape(-1, x.shape[-1])
        codes = []
        for level in range(n_q):
            embed = rvq.codebook(params, level)
            index = rvq.nearest_codeword(embed, residual)
            if level > 0:
                residual = residual - jnp.take(embed, index, axis=0)
            codes.append(index)
        return jnp.stack(codes).reshape(n_q, *lead)

    monkeypatch.setattr(rvq, "rvq_encode", skips_level_zero)
    with pytest.raises(AssertionError, match="nearer codeword"):
        run_property(test_prop_audio.test_rvq_each_code_is_the_nearest_codeword_to_its_residual)


def test_rvq_decode_dropping_the_last_level_is_caught(monkeypatch, fresh_traces):
    """Bug: ``rvq_decode`` sums levels ``0..Q-2`` only."""
    real = rvq.rvq_decode
    monkeypatch.setattr(rvq, "rvq_decode", lambda params, codes: real(params, codes[:-1]))
    with pytest.raises(AssertionError):
        run_property(test_prop_audio.test_rvq_decode_of_encode_is_the_sum_of_the_chosen_codewords)


def test_sampler_ignoring_removed_tokens_is_caught(monkeypatch, fresh_traces):
    """Bug: the caller's removal list (empty ids, stop tokens before min_length) is not applied."""
    monkeypatch.setattr(sampling, "remove_tokens", lambda scores, removed: scores)
    with pytest.raises(AssertionError, match="is masked"):
        run_property(test_prop_sampling.test_sampling_never_returns_a_masked_token)


def test_fixing_the_official_padding_leak_is_caught(monkeypatch, fresh_traces):
    """Bug (a tempting "fix"): down-sampling pads a shorter segment with zeros instead of copies of its last frame,
    as if it were alone. The official code does not, and the packing property says so precisely."""
    real = encoder.down_sample

    def zero_fill(params, x, lengths, pack_length, *, cfg):
        keep = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
        full = jnp.full_like(lengths, x.shape[1])  # every row "as long as the batch": no last-frame copies
        out, _ = real(params, jnp.where(keep, x, 0.0), full, pack_length, cfg=cfg)
        return out, -(-lengths // cfg.avg_pooler)

    monkeypatch.setattr(encoder, "down_sample", zero_fill)
    prop = test_prop_audio.test_packed_encoding_equals_per_segment_encoding_except_the_official_padding_leaks
    # called on one example (the search would recompile the encoder for every corner): segment 0 has L = 6 mel
    # frames (even: no conv-stem leak) and L2 = 3 conv2 frames (odd, < 15: the down-sampling leak)
    with pytest.raises(AssertionError, match="leak is not reproduced"):
        prop.hypothesis.inner_test(cfg=AUDIO_CORNERS["windowed_causal"], lengths=[6, 30, 9], params_seed=0, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Bugs a port had that `differential` missed with N(0, 0.02) weights, unit norm scales and zero biases (issue 14).
# Each is injected into the reference (the candidate runs the reference entry with the bug, eagerly), and
# `differential` on the strategies' cases (probing weights) must catch it at the float32 tolerance under the `ci`
# Hypothesis profile (10 derandomized examples).
# ---------------------------------------------------------------------------------------------------------------

FLOAT32_RTOL = 1e-5
VOCODER = importlib.import_module("mimo_ref.audio.vocoder")  # `mimo_ref.audio.vocoder` is also a function's name


def with_bug(entry, *patches):
    """``entry`` run with ``patches`` (``(module, attribute, value)``) in place: a port with that bug.

    The candidate must not reuse a program the reference compiled: :func:`entries.codes_to_wave_outputs` calls the
    jitted ``decode_padded``, which the candidate replaces by a fresh ``jax.jit`` of the same Python function
    (traced with the bug, once per shape); the patch decoder's entry runs eagerly anyway (it collects taps).
    """
    decode = entries.decode_padded.__wrapped__  # the Python function; jit caches traces by function, so wrap it

    def fresh_decode(params, codes, lengths, *, cfg):
        return decode(params, codes, lengths, cfg=cfg)

    fresh = jax.jit(fresh_decode, static_argnames=("cfg",))

    def candidate(**case):
        with contextlib.ExitStack() as stack:
            for target, name, value in patches:
                stack.enter_context(mock.patch.object(target, name, value))
            stack.enter_context(mock.patch.object(entries, "decode_padded", fresh))
            return entry(**case)

    return candidate


def layer_norms_swapped(params, x, cos, sin, mask, *, heads):
    """Audio ``TransformerLayer`` with ``final_layer_norm`` before attention and ``self_attn_layer_norm`` before
    the MLP (the two names read the other way round)."""
    swapped = params | {
        "self_attn_layer_norm": params["final_layer_norm"],
        "final_layer_norm": params["self_attn_layer_norm"],
    }
    return REAL["transformer_layer"](swapped, x, cos, sin, mask, heads=heads)


def q_bias_dropped(params, x, *args, cfg, **kwargs):
    """Qwen2 attention without the q_proj bias (in the decode layout, the q part of the fused ``qkv_proj`` bias)."""
    if "qkv_proj" in params:
        fused = params["qkv_proj"]
        bias = fused["bias"].at[: cfg.num_heads * cfg.head_dim].set(0)  # [N*H + 2*K*H]: q's slice first
        params = params | {"qkv_proj": fused | {"bias": bias}}
    else:
        params = params | {"q_proj": {"weight": params["q_proj"]["weight"]}}
    return REAL["qwen_attention"](params, x, *args, cfg=cfg, **kwargs)


def local_final_norm_dropped(params, x, positions, mask, *, cfg, name="qwen", **kwargs):
    """The patch decoder's local stack without its final RMSNorm (the heads read the last layer's output)."""
    if name != "lm.patch_decoder.stack":
        return REAL["qwen_stack"](params, x, positions, mask, cfg=cfg, name=name, **kwargs)
    identity = {"weight": None}

    def no_norm(norm_params, h, *, eps):
        return h if norm_params is identity else REAL["rms_norm"](norm_params, h, eps=eps)

    with mock.patch.object(layers, "rms_norm", no_norm):
        return REAL["qwen_stack"](params | {"norm": identity}, x, positions, mask, cfg=cfg, name=name, **kwargs)


def local_rope_positions_missing(params, x, positions, mask, *, cfg, name="qwen", **kwargs):
    """The patch decoder's local stack with every step at RoPE position 0 (the KV-cache slots are still right)."""
    if name == "lm.patch_decoder.stack":
        positions = jnp.zeros_like(positions)
    return REAL["qwen_stack"](params, x, positions, mask, cfg=cfg, name=name, **kwargs)


def next_input_sum_in_bf16(emb, active, dtype):
    """The patch decoder's next-input sum accumulated in a bfloat16 buffer (as the input embedding's speech sum
    is), instead of the model dtype."""
    return REAL["local_next_input"](emb, active, jnp.bfloat16).astype(dtype)


def interleaved_rope(x, cos, sin):
    """RoPE on interleaved pairs ``(x_2i, x_2i+1)`` (GPT-J / Meta layout) instead of the half-split pairs
    ``(x_i, x_i+H/2)`` of HF Qwen2 (same angles)."""
    h = x.shape[-1]
    c = cos[..., None, : h // 2]  # [.., T, H] -> [.., T, 1, H/2]: angle of pair i
    s = sin[..., None, : h // 2]
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.stack([even * c - odd * s, even * s + odd * c], axis=-1).reshape(x.shape)


REAL = {
    "transformer_layer": transformer.transformer_layer,
    "qwen_attention": lm.qwen_attention,
    "qwen_stack": lm.qwen_stack,
    "rms_norm": layers.rms_norm,
    "local_next_input": lm.local_next_input,
}

PORT_BUGS = {
    # name: (entry, cases, patches)
    "layer_norms_swapped": (
        entries.codes_to_wave_outputs,
        mst.codes_to_wave_cases,
        [(transformer, "transformer_layer", layer_norms_swapped)],
    ),
    "istft_magnitude_clip_missing": (
        entries.codes_to_wave_outputs,
        mst.codes_to_wave_cases,
        [(VOCODER, "MAX_MAGNITUDE", float("inf"))],
    ),
    "q_bias_dropped": (
        entries.patch_decoder_outputs,
        mst.patch_decoder_cases,
        [(lm, "qwen_attention", q_bias_dropped)],
    ),
    "local_final_norm_dropped": (
        entries.patch_decoder_outputs,
        mst.patch_decoder_cases,
        [(lm, "qwen_stack", local_final_norm_dropped)],
    ),
    "local_rope_positions_missing": (
        entries.patch_decoder_outputs,
        mst.patch_decoder_cases,
        [(lm, "qwen_stack", local_rope_positions_missing)],
    ),
    "next_input_sum_in_bf16": (
        entries.patch_decoder_outputs,
        mst.patch_decoder_cases,
        [(lm, "local_next_input", next_input_sum_in_bf16)],
    ),
    "interleaved_rope": (
        entries.patch_decoder_outputs,
        mst.patch_decoder_cases,
        [(layers, "apply_rope", interleaved_rope)],
    ),
}


@pytest.mark.parametrize("bug", list(PORT_BUGS))
def test_differential_catches_the_port_bugs(bug):
    entry, cases, patches = PORT_BUGS[bug]
    with pytest.raises(AssertionError, match="differential: candidate disagrees") as caught:
        differential(entry, with_bug(entry, *patches), cases(), FLOAT32_RTOL)
    assert "candidate raised" not in str(caught.value)  # a mismatch of values, not a broken injection


@pytest.mark.parametrize("cases", [mst.patch_decoder_cases, mst.codes_to_wave_cases])
def test_differential_passes_the_entries_without_a_bug(cases):
    """The control: the same harness with no bug injected passes (eager candidate vs reference, float32)."""
    entry = entries.patch_decoder_outputs if cases is mst.patch_decoder_cases else entries.codes_to_wave_outputs
    differential(entry, with_bug(entry), cases(), FLOAT32_RTOL, max_examples=3)


@pytest.mark.parametrize(
    ("bug", "first_stage"),
    [
        ("q_bias_dropped", "lm.patch_decoder.stack.layer0#1"),  # step 0 attends to itself only: q is irrelevant
        ("local_final_norm_dropped", "lm.patch_decoder.stack.norm"),
        ("layer_norms_swapped", "audio.decoder.layer0"),
        ("istft_magnitude_clip_missing", "audio.istft.spectrum_real"),
    ],
)
def test_differential_with_stages_names_the_first_diverging_stage(bug, first_stage):
    """Given the candidate's intermediates (tap names), ``differential`` reports the stage where the bug is."""
    entry, cases, patches = PORT_BUGS[bug]
    # stages are collected eagerly (op by op), and each new shape compiles every op: one config and length
    if cases is mst.codes_to_wave_cases:
        strategy = cases(configs=st.just(AUDIO_CORNERS["real_mel"]), frames=st.just(8))
    else:
        strategy = cases(configs=st.just(mst.LM_CORNERS["gqa"]))
    with pytest.raises(AssertionError, match=f"first diverging stage: {first_stage} ") as caught:
        candidate = with_stages(with_bug(entry, *patches))
        differential(entry, candidate, strategy, FLOAT32_RTOL, stages=True, max_examples=2)
    assert "agreeing stages" in str(caught.value)
