"""The audio tokenizer's packed encode run one segment per call, against the official packed fixture.

Every other audio-tokenizer golden check (mel, single segments, the packed one-call encode, RVQ, decode) is a case
of :mod:`mimo_ref.verify`, run by ``tests/golden/test_cases.py``. Cases are read from the fixture files, so other
fixture sets run unchanged; tolerances are relative L2 errors (float32 1e-5, float64 1e-6, bfloat16 5e-2), integer
outputs exact.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors import safe_open

from mimo_ref.audio import encode, load_audio_tokenizer
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


def test_packed_one_segment_per_call(inputs, expected, packed_prefix, audio_dir):
    """The official packed fixture, encoded one segment per call, each call told the pack's longest length (the
    bounded-memory path of ``wav_to_codes``): the same official packed outputs. (The one-call packed encode, the
    mel, single segments, RVQ and decode are golden cases of ``mimo_ref.verify``, run by test_cases.py.)"""
    segments_per_call = 1
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
