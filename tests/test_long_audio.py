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
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_ref import audio_limits, long_audio_bench
from mimo_ref import pipeline as task_pipeline
from mimo_ref.audio import encode, load_audio_tokenizer, log_mel, wav_to_codes, waveform
from mimo_ref.audio.mel import log_mel_frames
from mimo_ref.checks import InputError
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
    """A variant whose tail fill depends on the pack in another way: with avg_pooler 3 a shorter segment's last
    pooling window can hold copies of its last frame in the pack where it holds zero frames alone (136 mel frames
    -> 68 conv2 frames, 68 % 3 = 2); a causal windowed encoder. Random weights of exactly its shapes."""
    _, base = tiny
    cfg = dataclasses.replace(
        base, avg_pooler=3, encoder_causal=True, encoder_window=(6, 3), num_quantizers=4,
        codebook_sizes=(64, 32, 32, 32),
    )  # fmt: skip
    return random_params(cfg, seed=3), cfg


def _mels(lengths, n_mels, seed):
    return np.random.default_rng(seed).standard_normal((sum(lengths), n_mels)).astype(np.float32)


@pytest.mark.parametrize("variant, per_call", [("tiny", 1), ("tiny", 3), ("pooled3", 3)])
def test_segments_per_call_matches_one_packed_call(request, variant, per_call):
    """Any number of segments per call gives exactly the one packed call's codes and lengths, and its features and
    quantized vectors up to float rounding (XLA may pick other kernels for another batch size: measured <= 5e-7
    absolute, often bit-equal). 3 per call also runs the padding rows of a last, partly filled call."""
    params, cfg = request.getfixturevalue(variant)
    mels = _mels(QUIRK_LENGTHS, cfg.n_mels, seed=per_call)
    packed = encode(params, mels, QUIRK_LENGTHS, cfg=cfg)
    bounded = encode(params, mels, QUIRK_LENGTHS, cfg=cfg, segments_per_call=per_call)
    np.testing.assert_array_equal(bounded.lengths, packed.lengths)
    np.testing.assert_array_equal(bounded.codes, packed.codes)
    np.testing.assert_allclose(bounded.features, packed.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bounded.quantized, packed.quantized, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "variant, changes",
    [
        # the conv-stem leak (137), the pooling tail fill (134); 136 has neither; the longest is its own batch
        ("tiny", {137: True, 134: True, 136: False, 301: False}),
        ("pooled3", {136: True, 301: False}),  # the avg_pooler-3 tail fill
    ],
)
def test_quirk_segments_depend_on_their_pack(request, variant, changes):
    """Control for the test above: the quirky segments really do change when encoded without their pack, so a
    per-call encoder that forgot the pack's length would fail it."""
    params, cfg = request.getfixturevalue(variant)
    mels = _mels(QUIRK_LENGTHS, cfg.n_mels, seed=1)
    packed = encode(params, mels, QUIRK_LENGTHS, cfg=cfg)  # equal to any segments_per_call (test above)
    starts = np.concatenate([[0], np.cumsum(QUIRK_LENGTHS)[:-1]])
    code_starts = np.concatenate([[0], np.cumsum(packed.lengths)[:-1]])
    for row, length in enumerate(QUIRK_LENGTHS):
        if length not in changes:
            continue
        alone = encode(params, mels[starts[row] : starts[row] + length], [length], cfg=cfg).features
        in_pack = packed.features[code_starts[row] : code_starts[row] + packed.lengths[row]]
        assert (np.abs(alone - in_pack).max() > 1e-4) == changes[length], f"segment of {length} frames"


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


@pytest.mark.parametrize("frames", [737, 637])
def test_wav_to_codes_matches_packed_reference(tiny, monkeypatch, frames):
    """wav_to_codes with small segments and groups (100 frames, groups of at most 350, 2 segments per call) equals
    the official whole-file algorithm: 737 frames -> groups [100 x 3], [100 x 3], [100, 37] (an odd tail in a
    pack of 100), 637 -> [..], [..], [37] (a group of one short segment). The early length check predicts the
    number of code frames exactly."""
    params, cfg = tiny
    monkeypatch.setattr(waveform, "SEGMENT_FRAMES", 100)
    monkeypatch.setattr(waveform, "MAX_PACKED_FRAMES", 350)
    monkeypatch.setattr(waveform, "SEGMENTS_PER_CALL", 2)
    wave = np.random.default_rng(frames).standard_normal((frames - 1) * cfg.hop_length + 5).astype(np.float32)
    got = wav_to_codes(params, cfg, wave * np.float32(0.1), 8)
    want = long_audio_bench.packed_reference_codes(params, cfg, wave * np.float32(0.1), 8)  # official structure
    assert got.dtype == np.int64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert audio_limits.code_frames(wave.shape[0], cfg.sampling_rate, cfg) == got.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# Too-long inputs are refused before anything is decoded, resampled or encoded
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """The bundled tiny LM (512 positions: about 81 s of audio) and tokenizer."""
    return task_pipeline.load()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the audio is decoded, resampled or encoded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the audio was decoded, resampled or encoded before the length check")

    for name in ("load_audio", "resample"):
        monkeypatch.setattr(task_pipeline, name, refuse)
    monkeypatch.setattr(task_pipeline.audio_tok, "wav_to_codes", refuse)


def _silent_file(path: Path, seconds: float, rate: int = 1000) -> Path:
    """A silent 16-bit WAV of ``seconds`` at a low rate (small and fast to write; its header says how long)."""
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        block = np.zeros(60 * rate, np.int16)
        for start in range(0, int(seconds * rate), block.size):
            f.write(block[: min(block.size, int(seconds * rate) - start)])
    return path


def test_file_longer_than_max_audio_seconds_is_refused_from_its_header(model, no_work, tmp_path):
    path = _silent_file(tmp_path / "long.wav", 1801)
    with pytest.raises(InputError, match=r"long\.wav is 1801\.0 s long; the audio tokenizer takes at most 1800 s"):
        model.asr(str(path))


def test_audio_too_long_for_the_lm_context_is_refused_before_encoding(model, no_work, tmp_path):
    """The tiny LM has 512 positions: 100 s (10001 mel frames -> 1500 + 1001 code frames -> 626 speech groups)
    cannot fit, as a file or as a wave."""
    fit = audio_limits.max_fitting_seconds(model.audio_cfg, 512 - 3, 4)
    message = rf"is 100\.0 s long: its 626 speech groups.*512 positions.*at most {fit:.1f} s of audio fit"
    with pytest.raises(InputError, match="audio file .*long\\.wav " + message):
        model.asr(str(_silent_file(tmp_path / "long.wav", 100)))
    with pytest.raises(InputError, match="the voice wave " + message):
        model.tts("hello", voice=(np.zeros(100 * 8000, np.float32), 8000))


def test_max_fitting_seconds_is_the_exact_boundary(tiny):
    """At most ``max_fitting_seconds`` of audio gives at most ``room`` speech groups; one sample more gives more."""
    _, cfg = tiny
    for room in (1, 509, 8189):
        seconds = audio_limits.max_fitting_seconds(cfg, room, 4)
        samples = round(seconds * cfg.sampling_rate)
        assert math.ceil(audio_limits.code_frames(samples, cfg.sampling_rate, cfg) / 4) <= room
        assert math.ceil(audio_limits.code_frames(samples + 1, cfg.sampling_rate, cfg) / 4) > room


def test_max_audio_seconds_read_from_config(tmp_path):
    """``max_audio_seconds`` comes from config.json, with the official default 1800 when the field is absent."""
    from mimo_ref.audio.config import load_audio_config
    from mimo_ref.config import ConfigError

    data = json.loads((TINY / "config.json").read_text())
    for value, want in ((600, 600.0), (None, 1800.0), (0, ConfigError)):
        edited = dict(data) if value is None else dict(data, max_audio_seconds=value)
        if value is None:
            del edited["max_audio_seconds"]
        (tmp_path / "config.json").write_text(json.dumps(edited))
        if want is ConfigError:
            with pytest.raises(ConfigError, match="max_audio_seconds"):
                load_audio_config(tmp_path)
        else:
            assert load_audio_config(tmp_path).max_audio_seconds == want


def test_long_audio_bench_reports_a_fresh_process_peak(tiny):
    """The measuring script (docs/audio_io.md, "Long audio") runs one length in a child process and reports it."""
    report = long_audio_bench.run_one(0.05, str(TINY), n_q=8, limit_gb=6.0, save=None)  # 3 s: 72000 samples
    assert report["minutes"] == 0.05
    assert report["codes_shape"] == [8, audio_limits.code_frames(72000, 24000, tiny[1])]
    assert report["peak_rss_mb"] >= report["rss_before_encode_mb"] > 0
