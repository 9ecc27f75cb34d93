"""Unit tests of the audio tokenizer: weight spec, shapes, invariants, user errors, loader errors, pipeline helpers.

Golden parity against the official implementation lives in ``tests/golden/test_audio_tokenizer.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from mimo_ref.audio import (
    audio_config_from_dict,
    codes_to_wav,
    decode,
    decode_padded,
    encode,
    encode_padded,
    load_audio_tokenizer,
    log_mel,
    param_shapes,
    wav_to_codes,
    waveform,
)
from mimo_ref.audio.load import is_rvq_training_buffer
from mimo_ref.audio.mel import periodic_hann
from mimo_ref.audio.rvq import codebook
from mimo_ref.checkpoint import CheckpointError, nest
from mimo_ref.config import ConfigError

HERE = Path(__file__).parent
REAL_SHAPES = HERE / "fixtures" / "real_shapes"
TINY = HERE.parent / "weights" / "mimo_audio_tokenizer_tiny"
GOLDEN_CKPT = HERE / "fixtures" / "golden" / "audio_tokenizer"


@pytest.fixture(scope="module")
def tiny():
    """The bundled tiny tokenizer (real layout and mel settings, random weights): (params, cfg)."""
    return load_audio_tokenizer(TINY)


def random_params(cfg, seed: int = 0):
    """Random float32 params of exactly ``param_shapes(cfg)`` (scaled so activations stay O(1))."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("istft.window"):
            flat[name] = jnp.asarray(periodic_hann(shape[0]))
        elif name.endswith("norm.weight"):  # LayerNorm / GroupNorm scales
            flat[name] = jnp.ones(shape, jnp.float32)
        else:
            fan_in = shape[1] * (shape[2] if len(shape) == 3 else 1) if len(shape) > 1 else 1
            scale = 1.0 if "_codebook" in name else 1.0 / np.sqrt(fan_in)
            flat[name] = jnp.asarray(rng.standard_normal(shape).astype(np.float32) * scale)
    return nest(flat)


# ---------------------------------------------------------------------------------------------------------------
# Weight spec and config
# ---------------------------------------------------------------------------------------------------------------


def test_param_shapes_match_real_checkpoint():
    """``param_shapes`` of the real config is the real checkpoint's tensor set minus the RVQ training buffers."""
    data = json.loads((REAL_SHAPES / "mimo_audio_tokenizer.config.json").read_text())
    real = json.loads((REAL_SHAPES / "mimo_audio_tokenizer.shapes.json").read_text())
    cfg = audio_config_from_dict(data)
    buffers = {name for name in real if is_rvq_training_buffer(name)}
    assert len(buffers) == 3 * cfg.num_quantizers  # cluster_size, embed_avg, inited per level
    expected = {name: tuple(shape) for name, shape in real.items() if name not in buffers}
    assert param_shapes(cfg) == expected


def test_config_is_hashable_and_derived_values(tiny):
    _, cfg = tiny
    hash(cfg)  # static jit argument
    assert cfg.samples_per_code == 960
    assert cfg.fmax == cfg.sampling_rate // 2  # null fmax -> sr / 2
    assert isinstance(cfg.encoder_window, tuple) and isinstance(cfg.vocoder_window, tuple)
    assert [cfg.code_length(n) for n in (1, 2, 3, 4, 5, 6000)] == [1, 1, 1, 1, 2, 1500]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"d_model": None}, "`d_model` must be int"),
        ({"ln_type": "RMSNorm"}, "`ln_type` is 'RMSNorm'"),
        ({"encoder_attn_window_size": [3]}, "`encoder_attn_window_size` must be a list of two ints"),
        ({"encoder_skip_layer_id": 99}, "`encoder_skip_layer_id` 99 is not a layer"),
        ({"codebook_size": [1024] * 30}, "`codebook_size` lists 30 sizes for 20 quantizers"),
        ({"encoder_attention_heads": 5}, "must be an even head dim"),
    ],
)
def test_config_errors_name_field_and_file(change, message):
    data = json.loads((GOLDEN_CKPT / "config.json").read_text())
    data.update(change)
    with pytest.raises(ConfigError, match=message) as info:
        audio_config_from_dict(data, Path("/ckpt/config.json"))
    assert "/ckpt/config.json" in str(info.value)


def test_config_missing_field():
    data = json.loads((GOLDEN_CKPT / "config.json").read_text())
    del data["n_mels"]
    with pytest.raises(ConfigError, match="has no `n_mels`"):
        audio_config_from_dict(data)


def test_short_codebook_list_is_extended_like_official():
    data = json.loads((GOLDEN_CKPT / "config.json").read_text())
    data.update(num_quantizers=5, codebook_size=[1024, 128])
    assert audio_config_from_dict(data).codebook_sizes == (1024, 128, 128, 128, 128)


# ---------------------------------------------------------------------------------------------------------------
# Loader errors: one clear line each, on modified copies of the golden checkpoint
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def ckpt_copy(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(GOLDEN_CKPT, folder, ignore=shutil.ignore_patterns("inputs.*", "expected.*"))
    return folder


def _rewrite_tensors(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def _one_line_error(exc_type, folder, match):
    with pytest.raises(exc_type, match=match) as info:
        load_audio_tokenizer(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_loader_missing_tensor(ckpt_copy):
    _rewrite_tensors(ckpt_copy, lambda t: t.pop("encoder.layers.1.fc2.bias"))
    _one_line_error(CheckpointError, ckpt_copy, r"missing 1 tensor\(s\): encoder\.layers\.1\.fc2\.bias")


def test_loader_wrong_shape(ckpt_copy):
    def edit(t):
        t["decoder.vocoder.head.out.weight"] = t["decoder.vocoder.head.out.weight"][:-2].copy()

    _rewrite_tensors(ckpt_copy, edit)
    _one_line_error(CheckpointError, ckpt_copy, r"decoder\.vocoder\.head\.out\.weight is \[960, 32\], expected \[962")


def test_loader_unexpected_tensor(ckpt_copy):
    _rewrite_tensors(ckpt_copy, lambda t: t.update({"encoder.extra.weight": np.zeros(3, np.float32)}))
    _one_line_error(CheckpointError, ckpt_copy, r"unexpected 1 tensor\(s\): encoder\.extra\.weight")


def test_loader_broken_config(ckpt_copy):
    (ckpt_copy / "config.json").write_text('{"d_model": 32,')
    _one_line_error(ConfigError, ckpt_copy, "is not valid JSON")


def test_loader_config_missing_field(ckpt_copy):
    data = json.loads((ckpt_copy / "config.json").read_text())
    del data["vocoder_dim"]
    (ckpt_copy / "config.json").write_text(json.dumps(data))
    _one_line_error(ConfigError, ckpt_copy, "has no `vocoder_dim`")


def test_loader_missing_folder(tmp_path):
    _one_line_error(CheckpointError, tmp_path / "nope", "does not exist")


def test_loader_storage_and_ignores_only_training_buffers(tiny):
    """float64 compute keeps the float32 checkpoint's weights as stored (upcast at use); bfloat16 holds every weight,
    codebooks included, rounded to bf16 (the RVQ upcasts them to float32 at use, as the official bf16 model)."""
    params, _ = tiny
    with jax.enable_x64(True):
        params64, cfg64 = load_audio_tokenizer(TINY, "float64")
        assert cfg64.compute_dtype == "float64"
        assert params64["encoder"]["conv1"]["weight"].dtype == jnp.float32
        assert params64["encoder"]["quantizer"]["vq"]["layers"][0]["_codebook"]["embed"].dtype == jnp.float32
    params16, _ = load_audio_tokenizer(TINY, "bfloat16")
    assert params16["decoder"]["layer_norm"]["weight"].dtype == jnp.bfloat16
    embed16 = params16["encoder"]["quantizer"]["vq"]["layers"][-1]["_codebook"]["embed"]
    embed32 = params["encoder"]["quantizer"]["vq"]["layers"][-1]["_codebook"]["embed"]
    assert embed16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        codebook({"layers": [{"_codebook": {"embed": embed16}}]}, 0), embed32.astype(jnp.bfloat16).astype(jnp.float32)
    )
    assert set(params["encoder"]["quantizer"]["vq"]["layers"][0]["_codebook"]) == {"embed"}
    assert not is_rvq_training_buffer("encoder.quantizer.vq.layers.0._codebook.embed")
    assert not is_rvq_training_buffer("decoder.cluster_size")


# ---------------------------------------------------------------------------------------------------------------
# Audio input errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wave, message",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.full(4800, np.nan, np.float32), "NaN or infinite"),
        (np.r_[np.zeros(4799, np.float32), np.inf].astype(np.float32), "NaN or infinite"),
        (np.zeros((2, 4800), np.float32), "mono 1-D"),
        (np.zeros(4800, np.int16), "float samples"),
        (np.zeros(100, np.float32), "needs more than 480"),
    ],
)
def test_log_mel_rejects_bad_audio(tiny, wave, message):
    _, cfg = tiny
    with pytest.raises(ValueError, match=message):
        log_mel(wave, cfg, sample_rate=cfg.sampling_rate)


def test_log_mel_rejects_wrong_sample_rate(tiny):
    _, cfg = tiny
    with pytest.raises(ValueError, match="expects 24000 Hz; resample first"):
        log_mel(np.zeros(16000, np.float32), cfg, sample_rate=16000)


def test_wav_to_codes_rejects_bad_audio_and_n_q(tiny):
    params, cfg = tiny
    with pytest.raises(ValueError, match="NaN or infinite"):
        wav_to_codes(params, cfg, np.full(2400, np.nan, np.float32), 8)
    with pytest.raises(ValueError, match="n_q must be in 1..20"):
        wav_to_codes(params, cfg, np.zeros(2400, np.float32), 21)


@pytest.mark.parametrize(
    "codes, message",
    [
        (np.zeros(5, np.int64), "must be \\[levels, frames\\]"),
        (np.zeros((2, 5), np.float32), "must be integers"),
        (np.zeros((21, 5), np.int64), "21 levels"),
        (np.full((3, 5), 128, np.int64), "level 2 span \\[128, 128\\]"),
        (np.full((1, 5), -1, np.int64), "level 0 span"),
    ],
)
def test_decode_rejects_bad_codes(tiny, codes, message):
    params, cfg = tiny
    with pytest.raises(ValueError, match=message):
        decode(params, codes, cfg=cfg)


def test_encode_rejects_bad_lengths(tiny):
    params, cfg = tiny
    mels = np.zeros((10, cfg.n_mels), np.float32)
    with pytest.raises(ValueError, match="sum to the 10 mel frames"):
        encode(params, mels, [4, 5], cfg=cfg)
    with pytest.raises(ValueError, match="must be \\[frames, 128\\]"):
        encode(params, mels[:, :3], [10], cfg=cfg)


# ---------------------------------------------------------------------------------------------------------------
# Shapes on tiny configs and invariants
# ---------------------------------------------------------------------------------------------------------------


@given(length=st.sampled_from([1, 2, 3, 17, 40, 63]), seed=st.integers(0, 2**16))
def test_encode_independent_of_bucket_padding(tiny, length, seed):
    """Padding a segment batch further (a bigger bucket) never changes the valid outputs."""
    params, cfg = tiny
    rng = np.random.default_rng(seed)
    mels = rng.standard_normal((2, 128, cfg.n_mels)).astype(np.float32)
    lengths = jnp.asarray([length, 64], jnp.int32)
    small = encode_padded(params["encoder"], jnp.asarray(mels[:, :64]), lengths, cfg=cfg, n_q=4)
    big = encode_padded(params["encoder"], jnp.asarray(mels), lengths, cfg=cfg, n_q=4)
    for row, n in enumerate(np.asarray(small[1])):
        np.testing.assert_allclose(small[0][row, :n], big[0][row, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(small[2][:, row, :n], big[2][:, row, :n])


@given(length=st.sampled_from([1, 5, 16]), seed=st.integers(0, 2**16))
def test_decode_independent_of_bucket_padding(tiny, length, seed):
    params, cfg = tiny
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, size, (1, 32)) for size in cfg.codebook_sizes[:8]]).astype(np.int32)
    lengths = jnp.asarray([length], jnp.int32)
    _, mel_a, n_a, wav_a = decode_padded(params, jnp.asarray(codes[:, :, :16]), lengths, cfg=cfg)
    _, mel_b, _, wav_b = decode_padded(params, jnp.asarray(codes), lengths, cfg=cfg)
    n = int(n_a[0])
    np.testing.assert_allclose(mel_a[:, :n], mel_b[:, :n], rtol=1e-5, atol=1e-5)
    samples = n * cfg.hop_length
    np.testing.assert_allclose(wav_a[..., :samples], wav_b[..., :samples], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("length, leaks", [(136, False), (137, True), (134, True)])
def test_packed_padding_leaks_into_shorter_segment(tiny, length, leaks):
    """Official batch-padding quirks (checked against the official code when written, see docs/audio_encoder.md):
    an odd mel length lets conv1's output past the segment end into conv2 (137), an odd conv2 length pools the
    last frame with a copy of itself instead of a zero frame (134: 67 frames); 136 -> 68 frames has neither."""
    params, cfg = tiny
    rng = np.random.default_rng(length)
    mels = rng.standard_normal((length + 300, cfg.n_mels)).astype(np.float32)
    alone = encode(params, mels[:length], [length], cfg=cfg).features
    packed = encode(params, mels, [length, 300], cfg=cfg).features[: alone.shape[0]]
    assert (np.abs(packed - alone).max() > 1e-3) == leaks


# ---------------------------------------------------------------------------------------------------------------
# Pipeline helpers
# ---------------------------------------------------------------------------------------------------------------


def test_segmentation_and_grouping_follow_official():
    assert waveform.segment_lengths(13000) == [6000, 6000, 1000]
    assert waveform.segment_lengths(6000) == [6000]
    assert waveform.segment_lengths(6001) == [6000, 1]
    groups = waveform.group_by_length([6000] * 50)
    assert [len(g) for g in groups] == [42, 8]  # 42 * 6000 = 252000 <= 256000 < 258000
    assert waveform.group_by_length([300000, 5]) == [[300000], [5]]


def test_wav_to_codes_packs_segments_like_encode(tiny, monkeypatch):
    """wav_to_codes = log-mel, official segmentation, one packed encode, first n_q levels."""
    params, cfg = tiny
    monkeypatch.setattr(waveform, "SEGMENT_FRAMES", 64)  # several segments from a short wave
    wave = np.random.default_rng(0).standard_normal(24000 * 2).astype(np.float32) * 0.1
    codes = wav_to_codes(params, cfg, wave, 5)
    mels = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))
    lens = waveform.segment_lengths(mels.shape[0], 64)
    assert len(lens) == 4 and lens[-1] == 201 - 3 * 64
    np.testing.assert_array_equal(codes, encode(params, mels, lens, cfg=cfg, n_q=5).codes)


def test_codes_to_wav_decodes_chunks_independently(tiny, monkeypatch):
    params, cfg = tiny
    monkeypatch.setattr(waveform, "DECODE_CHUNK_FRAMES", 20)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, size, 45) for size in cfg.codebook_sizes[:8]])
    wav = codes_to_wav(params, cfg, codes)
    parts = [decode(params, codes[:, s : s + 20], cfg=cfg).wav.reshape(-1) for s in (0, 20, 40)]
    assert wav.dtype == np.float32 and wav.shape == (45 * cfg.samples_per_code,)
    np.testing.assert_array_equal(wav, np.concatenate(parts))
    assert codes_to_wav(params, cfg, np.zeros((8, 0), np.int64)).shape == (24000,)  # official: 1 s of silence
