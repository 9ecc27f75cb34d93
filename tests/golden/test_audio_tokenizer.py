"""Golden parity of the audio tokenizer against the official implementation (``<golden>/audio_tokenizer/``).

Cases, counts and shapes are read from the fixture files (``tests/fixtures/golden/README.md``, "audio_tokenizer/
cases"), so other fixture sets (other widths, windowed encoder, more segments) run unchanged. Tolerances are
relative L2 errors: float32 1e-5, float64 1e-6 (the official float64 run keeps float32 RoPE tables and a
float32 RVQ, which the port reproduces), bfloat16 5e-2 (loose reference); integer outputs match exactly.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors import safe_open

from mimo_ref.audio import decode, encode, load_audio_tokenizer, log_mel, rvq_decode, rvq_encode
from tests.golden_utils import assert_close, load_arrays

DTYPES = {"f32": "float32", "f64": "float64", "bf16": "bfloat16"}
TOLERANCE = {"f32": 1e-5, "f64": 1e-6, "bf16": 5e-2}
EXACT = ("f32", "f64")  # runs whose integer outputs (codes, lengths) must match exactly


def _keys(golden: Path, name: str) -> list[str]:
    with safe_open(str(golden / "audio_tokenizer" / name), framework="numpy") as f:
        return list(f.keys())


def pytest_generate_tests(metafunc):
    """Parametrize over the cases present in the fixture files (read at collection time)."""
    golden = Path(metafunc.config.getoption("--golden-dir")).resolve()
    if not (golden / "audio_tokenizer" / "expected.safetensors").is_file():
        return
    inputs, expected = _keys(golden, "inputs.safetensors"), _keys(golden, "expected.safetensors")
    cases = {
        "wave_index": sorted(int(m[1]) for k in inputs if (m := re.fullmatch(r"wave\.(\d+)", k))),
        "single_case": sorted(
            (m[1], int(m[2])) for k in expected if (m := re.fullmatch(r"(\w+)\.single\.(\d+)\.features", k))
        ),
        "packed_prefix": sorted(m[1] for k in expected if (m := re.fullmatch(r"(\w+)\.packed\.codes", k))),
        "decode_prefix": sorted(m[1] for k in expected if (m := re.fullmatch(r"(\w+)\.decode\.wav", k))),
    }
    for name, values in cases.items():
        if name in metafunc.fixturenames:
            ids = [f"{v[0]}-{v[1]}" if isinstance(v, tuple) else str(v) for v in values]
            metafunc.parametrize(name, values, ids=ids)


@pytest.fixture(scope="module")
def audio_dir(golden_dir) -> Path:
    return golden_dir / "audio_tokenizer"


@pytest.fixture(scope="module")
def inputs(audio_dir):
    return load_arrays(audio_dir / "inputs.safetensors")


@pytest.fixture(scope="module")
def expected(audio_dir):
    return load_arrays(audio_dir / "expected.safetensors")


@functools.cache
def _load(folder: str, prefix: str):
    """Params of the golden tokenizer in the dtype of run ``prefix``, loaded once per session."""
    with jax.enable_x64(prefix == "f64"):
        return load_audio_tokenizer(folder, DTYPES[prefix])


def tokenizer(audio_dir: Path, prefix: str):
    return _load(str(audio_dir), prefix)


def test_mel(inputs, expected, wave_index, audio_dir):
    _, cfg = tokenizer(audio_dir, "f32")
    mel = log_mel(inputs[f"wave.{wave_index}"], cfg, sample_rate=cfg.sampling_rate)
    assert_close(mel, expected[f"mel.{wave_index}"], 1e-5, f"mel.{wave_index}")


def test_single(expected, single_case, audio_dir):
    """One segment alone (official ``get_features`` + RVQ), fed the official mel of that wave."""
    prefix, i = single_case
    key = f"{prefix}.single.{i}"
    with jax.enable_x64(prefix == "f64"):
        params, cfg = tokenizer(audio_dir, prefix)
        mel = expected[f"mel.{i}"]
        result = encode(params, mel, [mel.shape[0]], cfg=cfg)
    assert_close(result.features, expected[f"{key}.features"], TOLERANCE[prefix], f"{key}.features")
    if f"{key}.quantized" in expected:
        assert_close(result.quantized, expected[f"{key}.quantized"], TOLERANCE[prefix], f"{key}.quantized")
    if prefix in EXACT:
        np.testing.assert_array_equal(result.codes, expected[f"{key}.codes"], err_msg=f"{key}.codes")
        np.testing.assert_array_equal(result.lengths, expected[f"{key}.output_length"], err_msg=f"{key}.output_length")


@pytest.mark.parametrize("segments_per_call", [None, 1], ids=["one-call", "per-segment"])
def test_packed(inputs, expected, packed_prefix, audio_dir, segments_per_call):
    """All segments in one packed call: a shorter segment's tail codes follow the official batch padding.

    ``per-segment`` runs the segments one per call, each told the pack's longest length (the bounded-memory
    path of ``wav_to_codes``): it must give the same official packed outputs."""
    prefix = packed_prefix
    lens = [int(n) for n in inputs["packed.lens"]]
    mels = np.concatenate([expected[f"mel.{i}"] for i in range(len(lens))], axis=0)  # S x [T_i, M] -> [T, M]
    assert mels.shape[0] == sum(lens)
    with jax.enable_x64(prefix == "f64"):
        params, cfg = tokenizer(audio_dir, prefix)
        result = encode(params, mels, lens, cfg=cfg, segments_per_call=segments_per_call)
    np.testing.assert_array_equal(result.lengths, expected[f"{prefix}.packed.output_length"])
    np.testing.assert_array_equal(result.codes, expected[f"{prefix}.packed.codes"], err_msg=f"{prefix}.packed.codes")
    assert_close(result.quantized, expected[f"{prefix}.packed.quantized"], TOLERANCE[prefix], f"{prefix}.packed")


def test_rvq(inputs, expected, audio_dir):
    params, _ = tokenizer(audio_dir, "f32")
    vq = params["encoder"]["quantizer"]["vq"]
    n_q = expected["rvq.codes"].shape[0]
    codes = rvq_encode(vq, inputs["rvq.x"], n_q=n_q)
    np.testing.assert_array_equal(np.asarray(codes), expected["rvq.codes"])
    assert_close(rvq_decode(vq, codes), expected["rvq.decoded"], 1e-6, "rvq.decoded")


def test_decode(inputs, expected, decode_prefix, audio_dir):
    """``MiMoAudioTokenizer.decode`` of LM codes: vq, coarse mel, waveform."""
    prefix = decode_prefix
    # the bf16 run has no codes of its own in inputs: it decoded the float32 run's codes
    codes = inputs.get(f"{prefix}.decode.codes", inputs["f32.decode.codes"])
    with jax.enable_x64(prefix == "f64"):
        params, cfg = tokenizer(audio_dir, prefix)
        result = decode(params, codes, cfg=cfg)
    for name in ("vq", "coarse_mel", "wav"):
        key = f"{prefix}.decode.{name}"
        if key in expected:
            assert_close(getattr(result, name), expected[key], TOLERANCE[prefix], key)
    assert result.wav.shape == (1, 1, codes.shape[1] * cfg.samples_per_code)
