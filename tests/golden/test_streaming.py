"""Golden parity of the streaming decode against the official ``MiMoAudioTokenizer.streaming_decode``
(``<golden>/audio_tokenizer/streaming*``; layout in ``tests/fixtures/golden/README.md``, "Streaming decode").

Every case, stream count, chunking, overlap and emitted sample count is read from ``streaming.json`` and the
safetensors files, so other fixture sets (other chunkings, overlaps, stream counts) run unchanged. Per call and
stream: whether the official call returned audio and how many samples must match exactly; the audio must be within
relative L2 1e-5 (float32) / 1e-6 (float64) of the official chunk.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from mimo_ref.audio import load_audio_tokenizer
from mimo_ref.audio.streaming import (
    StreamingConfig,
    init_state,
    samples_per_frame,
    stream_frames_bound,
    streaming_decode,
)
from tests.golden_utils import assert_close, load_arrays

DTYPES = {"f32": "float32", "f64": "float64"}
TOLERANCE = {"f32": 1e-5, "f64": 1e-6}


def _cases(golden: Path) -> list:
    """(case, run prefix) pairs of the fixture set, read at collection time; a set without the streaming files
    gets one parameter that fails saying so (never a silent pass)."""
    spec = golden / "audio_tokenizer" / "streaming.json"
    if not spec.is_file():
        return [pytest.param(None, None, id="missing-streaming-json")]
    cases = json.loads(spec.read_text())
    return [pytest.param(name, prefix, id=f"{prefix}-{name}") for name, c in cases.items() for prefix in c["emitted"]]


def pytest_generate_tests(metafunc):
    if {"case", "prefix"} <= set(metafunc.fixturenames):
        golden = Path(metafunc.config.getoption("--golden-dir")).resolve()
        metafunc.parametrize("case, prefix", _cases(golden))


@pytest.fixture(scope="module")
def audio_dir(golden_dir) -> Path:
    return golden_dir / "audio_tokenizer"


@functools.cache
def _tokenizer(folder: str, prefix: str):
    """Params of the golden tokenizer in the dtype of run ``prefix``, loaded once per session."""
    with jax.enable_x64(prefix == "f64"):
        return load_audio_tokenizer(folder, DTYPES[prefix])


def test_streaming_decode_matches_official(audio_dir, case, prefix):
    if case is None:
        pytest.fail(f"{audio_dir} has no streaming.json: this fixture set lacks the streaming decode cases")
    spec = json.loads((audio_dir / "streaming.json").read_text())[case]
    inputs = load_arrays(audio_dir / "streaming_inputs.safetensors")
    expected = load_arrays(audio_dir / "streaming_expected.safetensors")
    streams = spec["streams"]
    codes = [inputs[f"{case}.codes.{i}"] for i in range(streams)]  # S x [C, T_i]
    calls = spec["chunk_input_lengths"]  # [calls][S]
    emitted = spec["emitted"][prefix]  # [calls][S]: samples, or None where the official call returned None
    assert len(emitted) == len(calls) and all(len(row) == streams for row in calls + emitted)
    for i in range(streams):  # the chunks cover each stream's codes exactly
        assert sum(row[i] for row in calls) == codes[i].shape[1], f"stream {i}: chunk lengths != code frames"
    config = StreamingConfig(left_overlap=spec["left_overlap"], right_overlap=spec["right_overlap"])
    # every call padded to one bucket, as the pipeline does: one compile per case (padding never changes results;
    # the default per-call buckets are checked against one-shot decodes in tests/properties/test_prop_streaming.py)
    pad_to = stream_frames_bound(config, max(max(row) for row in calls))

    with jax.enable_x64(prefix == "f64"):
        params, cfg = _tokenizer(str(audio_dir), prefix)
        state = init_state(streams, cfg)
        offsets = [0] * streams
        for k, lengths in enumerate(calls):
            chunk = np.concatenate(
                [codes[i][:, offsets[i] : offsets[i] + n] for i, n in enumerate(lengths)], axis=1
            )  # S x [C, n_i] -> [C, sum n_i], stream order
            offsets = [o + n for o, n in zip(offsets, lengths, strict=True)]
            wavs, state = streaming_decode(
                params, chunk, lengths, state, cfg=cfg, config=config, last_chunk=k == len(calls) - 1, pad_to=pad_to
            )
            for i, wav in enumerate(wavs):
                key = f"{prefix}.{case}.call{k}.stream{i}"
                if emitted[k][i] is None:
                    assert wav is None, f"{key}: the official call returned nothing, the port {wav.shape[0]} samples"
                    assert key not in expected
                    continue
                assert wav is not None, f"{key}: the official call returned {emitted[k][i]} samples, the port none"
                assert wav.shape[0] == emitted[k][i], f"{key}: {wav.shape[0]} samples, official {emitted[k][i]}"
                assert wav.shape[0] % samples_per_frame(cfg) == 0
                want = expected[key]  # [1, samples]
                assert want.shape == (1, emitted[k][i])
                assert_close(wav[None, :], want, TOLERANCE[prefix], key)
