"""End-to-end golden runs (``pipeline/expected.safetensors``, ``cases.json`` ``runs``) of the official wrapper.

The official wrapper rounds every weight of both models (and the audio tokenizer's RoPE buffers) to bfloat16; the
fixture runs then computed in float32 (see ``docs/numerics.md``). This port's ``official`` precision preset holds
the same values, so here, for every run of ``cases.json``, exactly:

- greedy generation from the official prompt reproduces the official ids (prompt + generated groups);
- the decoded text channel equals the official ``forward()`` text;
- the TTS waveform, written and read back as 16-bit PCM as the official run did, is within 1 LSB of the fixture.

Runs, prompts, stop tokens and lengths are read from the fixture files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_ref import audio, generate, lm, pipeline, sampling
from mimo_ref.text import load_text_tokenizer
from tests.golden_utils import load_arrays

LSB = 1.0 / 32768  # one step of 16-bit PCM as soundfile reads it back to float


def read_runs(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "pipeline" / "cases.json").read_text(encoding="utf-8"))["runs"]


def pytest_generate_tests(metafunc):
    golden = Path(metafunc.config.getoption("--golden-dir")).resolve()
    runs = read_runs(golden)
    if "run" in metafunc.fixturenames:
        metafunc.parametrize("run", sorted(runs))
    if "wav_run" in metafunc.fixturenames:
        expected = load_arrays(golden / "pipeline" / "expected.safetensors")
        metafunc.parametrize("wav_run", sorted(r for r in runs if f"{r}.wav" in expected))


@pytest.fixture(scope="module")
def model(golden_dir):
    return lm.load_lm(golden_dir / "lm", "official")


@pytest.fixture(scope="module")
def audio_model(golden_dir):
    return audio.load_audio_tokenizer(golden_dir / "audio_tokenizer", "official")


@pytest.fixture(scope="module")
def tokenizer(golden_dir):
    return load_text_tokenizer(golden_dir / "lm")


@pytest.fixture(scope="module")
def expected(golden_dir):
    return load_arrays(golden_dir / "pipeline" / "expected.safetensors")


@pytest.fixture(scope="module")
def golden_prompts(golden_dir):
    return load_arrays(golden_dir / "pipeline" / "prompts.safetensors")


def official_run(name, golden_dir, expected, golden_prompts):
    """(cases.json spec, official ids ``[C+1, L]`` = prompt + generated, prompt columns)."""
    spec = read_runs(golden_dir)[name]
    return spec, expected[f"{name}.generated_ids"], golden_prompts[spec["task"]].shape[1]


def test_official_run_starts_with_its_prompt(run, golden_dir, expected, golden_prompts, model):
    spec, ids, prompt_columns = official_run(run, golden_dir, expected, golden_prompts)
    np.testing.assert_array_equal(ids[:, :prompt_columns], golden_prompts[spec["task"]])
    new_groups = (ids.shape[1] - prompt_columns) // model[1].group_size
    assert 1 <= new_groups <= spec["max_new_tokens"]


def generate_run(run, golden_dir, expected, golden_prompts, model) -> tuple[np.ndarray, np.ndarray, int]:
    """(our ids, official ids, prompt columns) of one run: greedy global and local sampling, official stops."""
    spec, official, prompt_columns = official_run(run, golden_dir, expected, golden_prompts)
    params, cfg, special = model
    result = generate.generate(
        params,
        cfg,
        special,
        golden_prompts[spec["task"]],
        max_new_groups=spec["max_new_tokens"],
        stop_tokens=spec["stop_tokens"],
        text_sampler=sampling.GREEDY,
        speech_sampler=sampling.GREEDY,
    )
    return result.sequence(0), official, prompt_columns


def test_generation_exact(run, golden_dir, expected, golden_prompts, model):
    ours, official, _ = generate_run(run, golden_dir, expected, golden_prompts, model)
    assert ours.shape == official.shape, f"{run}: {ours.shape[1]} columns, official {official.shape[1]}"
    diff = np.argwhere(ours != official)
    assert diff.size == 0, f"{run}: {len(diff)} ids differ, first at (row, column) {tuple(diff[0])}"


def test_text_exact(run, golden_dir, expected, golden_prompts, model, tokenizer):
    spec, _, _ = official_run(run, golden_dir, expected, golden_prompts)
    ours, _, prompt_columns = generate_run(run, golden_dir, expected, golden_prompts, model)
    text, _ = pipeline.decode_outputs(ours, prompt_columns, tokenizer=tokenizer, cfg=model[1], audio=None)
    assert text == spec["text"]


def pcm16_round_trip(wav: np.ndarray, sr: int) -> np.ndarray:
    """What the official run wrote (``soundfile.write``, 16-bit PCM) read back as float32."""
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def test_tts_wav_within_one_lsb(wav_run, golden_dir, expected, golden_prompts, model, tokenizer, audio_model):
    """Measured on the dev set: max abs difference 1 LSB (3.05e-5), on a few dozen of its samples."""
    spec, _, _ = official_run(wav_run, golden_dir, expected, golden_prompts)
    ours, _, prompt_columns = generate_run(wav_run, golden_dir, expected, golden_prompts, model)
    _, wav = pipeline.decode_outputs(ours, prompt_columns, tokenizer=tokenizer, cfg=model[1], audio=audio_model)
    want = expected[f"{wav_run}.wav"].reshape(-1)
    got = pcm16_round_trip(wav, spec.get("wav_sr", audio_model[1].sampling_rate))
    assert got.shape == want.shape, f"{got.shape[0]} samples, official {want.shape[0]}"
    worst = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert worst <= LSB * 1.0001, f"{wav_run}.wav: max abs difference {worst:.3e} ({worst / LSB:.2f} LSB) > 1 LSB"
