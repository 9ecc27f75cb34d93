"""The properties can fail: each test injects a deliberate bug (a monkeypatched function) and asserts that a property,
called as a plain function, raises.

Compiled functions cache their traces, so every injection runs between two ``jax.clear_caches()``: the property
traces the broken function, and no broken program outlives the test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from hypothesis import Phase, settings

from mimo_ref import layers, sampling
from mimo_ref.audio import encoder, rvq
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

    def zero_fill(params, x, lengths, *, cfg):
        keep = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
        return real(params, jnp.where(keep, x, 0.0), jnp.full_like(lengths, x.shape[1]), cfg=cfg)[0], -(
            -lengths // cfg.avg_pooler
        )

    monkeypatch.setattr(encoder, "down_sample", zero_fill)
    prop = test_prop_audio.test_packed_encoding_equals_per_segment_encoding_except_the_official_padding_leaks
    # called on one example (the search would recompile the encoder for every corner): segment 0 has L = 6 mel
    # frames (even: no conv-stem leak) and L2 = 3 conv2 frames (odd, < 15: the down-sampling leak)
    with pytest.raises(AssertionError, match="leak is not reproduced"):
        prop.hypothesis.inner_test(cfg=AUDIO_CORNERS["windowed_causal"], lengths=[6, 30, 9], params_seed=0, seed=0)
