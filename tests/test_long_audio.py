"""Long audio: the bounded-memory encoder gives the official packed codes, and too-long inputs are refused early.

The official pipeline encodes each group of up to 256000 mel frames in one packed call; ``wav_to_codes`` runs a
group's segments a few at a time with each call told the group's longest length, and computes each segment's
log-mel from just its samples (docs/audio_io.md, "Long audio"). These tests compare it with the one-call packed
encoder (``encode(..., segments_per_call=None)``, itself pinned to the official fixtures by
``tests/golden/test_audio_tokenizer.py::test_packed``) on inputs that exercise every way a segment depends on the
others of its pack.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mimo_ref.audio import encode, load_audio_tokenizer, log_mel, pipeline, wav_to_codes
from mimo_ref.audio.mel import log_mel_frames
from tests.test_audio_tokenizer import random_params

TINY = Path(__file__).parent.parent / "weights" / "mimo_audio_tokenizer_tiny"

# Segment lengths (mel frames) of one pack: the longest is odd (conv2 gives 151 frames: the official zero frame is
# appended before pooling), 137 is odd (conv2's last window reads conv1's output past the segment end, non-zero in
# the pack), 134 gives 67 conv2 frames (pooled with a copy of its own last frame in the pack, with zero alone),
# 136 has neither quirk, 1 and 2 are the shortest possible, 300 is even and one shorter than the longest.
QUIRK_LENGTHS = [301, 137, 134, 136, 1, 2, 300]


@pytest.fixture(scope="module")
def tiny():
    return load_audio_tokenizer(TINY)


@pytest.fixture(scope="module")
def pooled3(tiny):
    """A variant whose quirks depend on the pack in other ways: avg_pooler 3 (the appended zero frames reach a
    shorter segment's last pooling window), conv kernel 5 (conv1 output is 2 frames shorter than its input), a
    causal windowed encoder. Random weights of exactly its shapes."""
    _, base = tiny
    cfg = dataclasses.replace(
        base, avg_pooler=3, kernel_size=5, encoder_causal=True, encoder_window=(6, 3), num_quantizers=4,
        codebook_sizes=(64, 32, 32, 32),
    )  # fmt: skip
    return random_params(cfg, seed=3), cfg


def _mels(lengths, n_mels, seed):
    return np.random.default_rng(seed).standard_normal((sum(lengths), n_mels)).astype(np.float32)


@pytest.mark.parametrize("variant", ["tiny", "pooled3"])
@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_segments_per_call_matches_one_packed_call(request, variant, per_call):
    """Any number of segments per call gives exactly the one packed call's codes and lengths, and its features and
    quantized vectors up to float rounding (XLA may pick other kernels for another batch size: measured <= 5e-7
    absolute, often bit-equal). 2 and 3 per call also run the padding rows of a last, partly filled call."""
    params, cfg = request.getfixturevalue(variant)
    mels = _mels(QUIRK_LENGTHS, cfg.n_mels, seed=per_call)
    packed = encode(params, mels, QUIRK_LENGTHS, cfg=cfg)
    bounded = encode(params, mels, QUIRK_LENGTHS, cfg=cfg, segments_per_call=per_call)
    np.testing.assert_array_equal(bounded.lengths, packed.lengths)
    np.testing.assert_array_equal(bounded.codes, packed.codes)
    np.testing.assert_allclose(bounded.features, packed.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bounded.quantized, packed.quantized, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["tiny", "pooled3"])
def test_quirk_segments_depend_on_their_pack(request, variant):
    """Control for the test above: the quirky segments really do change when encoded without their pack, so a
    per-call encoder that forgot the pack's length would fail it."""
    params, cfg = request.getfixturevalue(variant)
    mels = _mels(QUIRK_LENGTHS, cfg.n_mels, seed=1)
    packed = encode(params, mels, QUIRK_LENGTHS, cfg=cfg)
    starts = np.concatenate([[0], np.cumsum(QUIRK_LENGTHS)[:-1]])
    code_starts = np.concatenate([[0], np.cumsum(packed.lengths)[:-1]])
    changed = []
    for length, start, code_start, n in zip(QUIRK_LENGTHS, starts, code_starts, packed.lengths, strict=True):
        alone = encode(params, mels[start : start + length], [length], cfg=cfg).features
        if np.abs(alone - packed.features[code_start : code_start + n]).max() > 1e-4:
            changed.append(length)
    assert 137 in changed and 134 in changed  # the conv-stem leak and the pooling tail fill
    assert 136 not in changed and 301 not in changed  # no quirk / the longest segment is its own batch length


def test_log_mel_frames_equal_slices_of_log_mel(tiny):
    """Per-segment log-mel (reflect padding at both ends of the wave included) equals the whole wave's, sliced."""
    _, cfg = tiny
    wave = np.random.default_rng(0).standard_normal(249 * cfg.hop_length + 77).astype(np.float32) * 0.1
    whole = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))  # [250, M]
    assert whole.shape[0] == 250
    for start, frames, bucket in [(0, 100, 128), (100, 100, 128), (200, 50, 128), (249, 1, 64), (0, 250, 256)]:
        part = np.asarray(log_mel_frames(wave, cfg, start=start, frames=frames, bucket=bucket))
        np.testing.assert_array_equal(part, whole[start : start + frames], err_msg=f"frames {start}+{frames}")
    with pytest.raises(ValueError, match="outside the wave's 250 mel frames"):
        log_mel_frames(wave, cfg, start=200, frames=51)


def _packed_reference(params, cfg, wave, n_q):
    """The official algorithm literally: the whole file's log-mel, then each group in one packed call."""
    mels = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))
    parts, start = [], 0
    lengths = pipeline.segment_lengths(mels.shape[0], pipeline.SEGMENT_FRAMES)
    for group in pipeline.group_by_length(lengths, pipeline.MAX_PACKED_FRAMES):
        parts.append(encode(params, mels[start : start + sum(group)], group, cfg=cfg, n_q=n_q).codes)
        start += sum(group)
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("frames", [737, 637, 99])
def test_wav_to_codes_matches_packed_reference(tiny, monkeypatch, frames):
    """wav_to_codes with small segments and groups (100 frames, groups of at most 350, 2 segments per call) equals
    the official whole-file algorithm: 737 frames -> groups [100 x 3], [100 x 3], [100, 37] (an odd tail in a
    pack of 100), 637 -> [..], [..], [37] (a group of one short segment), 99 -> one segment."""
    params, cfg = tiny
    monkeypatch.setattr(pipeline, "SEGMENT_FRAMES", 100)
    monkeypatch.setattr(pipeline, "MAX_PACKED_FRAMES", 350)
    monkeypatch.setattr(pipeline, "SEGMENTS_PER_CALL", 2)
    wave = np.random.default_rng(frames).standard_normal((frames - 1) * cfg.hop_length + 5).astype(np.float32)
    got = wav_to_codes(params, cfg, wave * np.float32(0.1), 8)
    want = _packed_reference(params, cfg, wave * np.float32(0.1), 8)
    assert got.dtype == np.int64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
