"""Text tokenizer wrapper, text-channel decoding, audio file I/O and the errors users see."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref import prompts as P
from mimo_ref.audio_io import AudioFileError, load_audio, load_audio_24k, write_wav
from mimo_ref.config import ConfigError
from mimo_ref.text import decode_text_channel, load_text_tokenizer
from tests.golden_utils import load_arrays


@pytest.fixture(scope="module")
def tok(golden_dir):
    return load_text_tokenizer(golden_dir / "lm")


@pytest.fixture(scope="module")
def ctx(golden_dir):
    return P.load_prompt_context(golden_dir / "lm")


# ----------------------------------------------------------------------------------------------------------------
# Text


def test_special_tokens_encode_to_their_ids(tok):
    for name in ("empty", "sosp", "eosp", "sostm", "eostm", "eot", "im_start", "im_end"):
        token_id = getattr(tok.special, name)
        assert tok.encode(tok.backend.id_to_token(token_id)) == [token_id]


def test_encode_decode_round_trip(tok):
    text = "<|im_start|>user\nHello world, this is a test.<|im_end|>\n今天天气很好"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("") == []


def test_decode_text_channel_matches_official_runs(golden_dir, tok):
    """``runs[name].text`` is what the official forward() returned for the generated ids."""
    cases = json.loads((golden_dir / "pipeline" / "cases.json").read_text(encoding="utf-8"))
    prompts = load_arrays(golden_dir / "pipeline" / "prompts.safetensors")
    expected = load_arrays(golden_dir / "pipeline" / "expected.safetensors")
    group_size = P.load_prompt_context(golden_dir / "lm").group_size
    for name, run in cases["runs"].items():
        ids = expected[f"{name}.generated_ids"]
        prompt_length = prompts[run["task"]].shape[1]
        assert decode_text_channel(tok, ids, prompt_length=prompt_length, group_size=group_size) == run["text"]


def test_decode_text_channel_official_order(tok):
    """Last group dropped; strip BEFORE deleting <|empty|>/<|eot|>/<|eostm|>; other special tokens kept."""
    s = tok.special
    space_a = tok.encode(" a")
    groups = [s.empty, *space_a, s.eot, s.endoftext, s.eostm, s.im_end]  # im_end is the last group: dropped
    group_size = 3
    text_row = np.repeat(np.asarray(groups), group_size)  # generated text ids repeat over their group
    ids = np.stack([text_row, np.zeros_like(text_row)])  # [C+1, L] with C = 1
    out = decode_text_channel(tok, ids, prompt_length=0, group_size=group_size)
    assert out == " a<|endoftext|>"  # the space after the deleted <|empty|> survives the strip


def test_decode_text_channel_skips_prompt(tok):
    ids = np.asarray([[tok.special.sostm] * 4 + [tok.special.eostm] * 2])
    assert decode_text_channel(tok, ids, prompt_length=4, group_size=2) == ""
    with pytest.raises(ValueError, match="prompt_length"):
        decode_text_channel(tok, ids, prompt_length=7, group_size=2)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.json"):
        load_text_tokenizer(tmp_path)


def test_empty_text_errors(ctx):
    with pytest.raises(ValueError, match="empty"):
        P.tts_prompt(ctx, "", template=0)
    with pytest.raises(ValueError, match="empty"):
        P.tts_prompt(ctx, "   ", read_text_only=False)
    codes = np.zeros((ctx.audio_channels, ctx.group_size), np.int64)
    with pytest.raises(ValueError, match="non-empty transcript"):
        P.stream_block(ctx, "", codes)


def test_builder_argument_errors(ctx):
    codes = np.zeros((ctx.audio_channels, ctx.group_size), np.int64)
    with pytest.raises(ValueError, match="template"):
        P.asr_prompt(ctx, codes)  # neither template nor rng
    if ctx.group_size > 1:
        with pytest.raises(ValueError, match="multiple of group_size"):
            P.asr_prompt(ctx, codes[:, :1], template=0)
    with pytest.raises(ValueError, match="channels"):
        P.asr_prompt(ctx, codes[:1], template=0)
    with pytest.raises(ValueError, match="ignores prompt_speech"):
        P.tts_prompt(ctx, "Hi there", prompt_speech=codes, template=0)
    with pytest.raises(ValueError, match="instruct"):
        P.tts_prompt(ctx, "Hi there", instruct="slowly", read_text_only=False)
    with pytest.raises(ValueError, match="role"):
        P.text_dialogue_multiturn_prompt(ctx, [{"role": "system", "content": "x"}])


def test_seeded_template_draw_matches_random_module(ctx):
    """``rng=seed`` picks what the official ``random.choice`` picks after ``random.seed(seed)``."""
    import random

    codes = np.zeros((ctx.audio_channels, ctx.group_size), np.int64)
    for seed in range(5):
        random.seed(seed)
        official = random.choice(list(P.tpl.ASR_ZH_TEMPLATES) + list(P.tpl.ASR_EN_TEMPLATES))
        assert P.asr_prompt(ctx, codes, rng=seed).templates == (official,)


@given(frames=st.integers(1, 13), group_size=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31 - 1))
def test_pad_codes_to_group_repeats_last_frame(frames, group_size, seed):
    codes = np.random.default_rng(seed).integers(0, 1024, size=(3, frames))
    padded = P.pad_codes_to_group(codes, group_size)
    assert padded.shape == (3, -(-frames // group_size) * group_size)
    np.testing.assert_array_equal(padded[:, :frames], codes)
    np.testing.assert_array_equal(padded[:, frames:], np.repeat(codes[:, -1:], padded.shape[1] - frames, axis=1))


@given(
    segments=st.lists(st.tuples(st.sampled_from(["text", "audio"]), st.integers(1, 3)), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_layout_invariants(ctx, segments, seed):
    """Any mix of text and audio segments: -100 exactly after each group's first column; speech rows hold the
    empty ids exactly in text groups; speech groups are <|empty|> and wrapped in sosp/eosp."""
    rng = np.random.default_rng(seed)
    g, s = ctx.group_size, ctx.special
    blocks = []
    for kind, n in segments:
        if kind == "text":
            blocks.append(P.text_block(ctx, "ab cd ef gh"[: 3 * n]))
        else:
            codes = rng.integers(0, min(ctx.speech_empty_ids), size=(ctx.audio_channels, n * g))
            blocks.append(P.audio_block(ctx, codes))
    ids = P.join(blocks)
    assert ids.shape[0] == ctx.audio_channels + 1 and ids.shape[1] % g == 0
    cells = ids[0].reshape(-1, g)  # [L] -> [groups, G]
    assert (cells[:, 1:] == P.TEXT_PAD).all() and (cells[:, 0] != P.TEXT_PAD).all()
    speech = ids[1:].reshape(ctx.audio_channels, -1, g)  # [C, L] -> [C, groups, G]
    empty = np.asarray(ctx.speech_empty_ids)[:, None, None]
    is_speech = cells[:, 0] == s.empty
    assert (speech[:, ~is_speech] == empty).all()
    assert (speech[:, is_speech] != empty).all()
    text = cells[:, 0]
    for k in np.flatnonzero(is_speech):
        assert text[k - 1] in (s.sosp, s.empty) and text[k + 1] in (s.eosp, s.empty)


# ----------------------------------------------------------------------------------------------------------------
# Audio files


def test_missing_audio_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_unreadable_audio_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not a RIFF file at all" * 10)
    with pytest.raises(AudioFileError, match="not a readable audio file"):
        load_audio(path)


def test_empty_audio_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 24000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="no audio samples"):
        load_audio(path)


def test_stereo_is_averaged(tmp_path):
    path = tmp_path / "stereo.wav"
    left = np.linspace(-0.5, 0.5, 480, dtype=np.float32)
    right = np.full(480, 0.25, np.float32)
    sf.write(str(path), np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == (480,)
    np.testing.assert_array_equal(wave, ((left.astype(np.float64) + right) / 2).astype(np.float32))
    wave24, sr24 = load_audio_24k(path)
    assert sr24 == 24000 and wave24.shape == (720,)


def test_wav_round_trip_24k_pcm16(tmp_path):
    path = tmp_path / "out.wav"
    rng = np.random.default_rng(0)
    wave = rng.uniform(-1, 1, 2400).astype(np.float32)
    wave[:4] = [1.5, -1.5, 1.0, -1.0]  # out of range: clipped by soundfile
    write_wav(path, wave[None, None])  # the decoder's [1, 1, samples] is flattened
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (24000, 1, "PCM_16", "WAV")
    back, sr = load_audio(path)
    assert sr == 24000 and back.shape == (2400,)
    np.testing.assert_allclose(back, np.clip(wave, -1, 1), rtol=0, atol=1.0 / 32767)
    assert back[0] == back[2] == 32767 / 32768 and back[1] == back[3] == -1.0


def test_golden_wavs_load(golden_dir):
    for name in ("speech_24k.wav", "speech_16k.wav"):
        wave, sr = load_audio_24k(golden_dir / "pipeline" / name)
        assert sr == 24000 and wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 0
