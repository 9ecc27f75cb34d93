"""Golden parity of the prompt builders against the official ``input_ids`` (``pipeline/prompts.safetensors``).

Three layers:
- text-only prompts, rebuilt from the call arguments (``arguments.md``) and the templates the official run drew
  (``cases.json``): exact equality;
- prompts with audio, rebuilt STRUCTURALLY: the audio codes are read back out of the golden array itself and fed
  to the builder, which proves every text id, -100, empty id and wrapper group is exact, independently of the
  audio tokenizer;
- prompts with audio, end to end: wav -> ``load_audio_24k`` -> ``mimo_ref.audio.wav_to_codes`` ->
  ``pad_codes_to_group`` -> builder, with the audio tokenizer in the ``official`` precision (the official
  wrapper's bf16-rounded weights and buffers, float32 math): every id exact, audio codes included.

Ids, shapes and templates come from the fixture files; the call arguments (the official calls themselves) live in
:mod:`mimo_ref.golden_cases`, shared with ``mimo-ref verify``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mimo_ref import audio
from mimo_ref import prompts as P
from mimo_ref import templates as tpl
from mimo_ref.audio_io import load_audio_24k
from mimo_ref.golden_cases import (
    AUDIO_CASES,
    TEXT_CASES,
    TEXT_EN,
    audio_call,
    extract_audio,
    official_prompt,
    text_call,
)
from tests.golden_utils import load_arrays


@pytest.fixture(scope="module")
def ctx(golden_dir):
    return P.load_prompt_context(golden_dir / "lm")


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_arrays(golden_dir / "pipeline" / "prompts.safetensors")


@pytest.fixture(scope="module")
def cases(golden_dir):
    return json.loads((golden_dir / "pipeline" / "cases.json").read_text(encoding="utf-8"))


def assert_same_ids(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert actual.dtype == np.int64, f"{name}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != official {expected.shape}"
    diff = np.argwhere(actual != expected)
    assert diff.size == 0, f"{name}: {len(diff)} ids differ, first at [row, column] {diff[0].tolist()}"


def test_cases_json_matches_the_calls(cases, golden):
    assert cases["inputs"]["text_en"] == TEXT_EN
    assert set(TEXT_CASES) | set(AUDIO_CASES) == set(golden), "every golden prompt is covered by one test"


def rebuild(name: str, ctx, golden, cases) -> P.Prompt:
    """The prompt of case ``name``; audio codes (if any) read back from the golden prompt."""
    return official_prompt(name, ctx, golden[name], cases["templates_used"][name])


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_text_prompt_exact(name, ctx, golden, cases):
    prompt = rebuild(name, ctx, golden, cases)
    assert_same_ids(prompt.input_ids, golden[name], name)
    assert prompt.templates == tuple(cases["templates_used"][name])


@pytest.mark.parametrize("name", sorted(AUDIO_CASES))
def test_audio_prompt_layout_exact(name, ctx, golden, cases):
    """Every id except the codes themselves, which are taken from the golden prompt."""
    prompt = rebuild(name, ctx, golden, cases)
    assert_same_ids(prompt.input_ids, golden[name], name)
    assert prompt.templates == tuple(cases["templates_used"][name])


def test_task_and_stop_tokens_of_official_runs(ctx, golden, cases):
    """cases.json ``runs``: the official wrapper's task name and stop-token list for the prompt it ran."""
    for run_name, run in cases["runs"].items():
        prompt = rebuild(run["task"], ctx, golden, cases)
        assert prompt.task == run["task"], run_name
        assert prompt.stop_tokens == tuple(run["stop_tokens"]), run_name


def test_same_wav_gives_same_codes_everywhere(ctx, golden):
    """The fixture's own consistency: each wav has one code sequence across all prompts (what the e2e test needs)."""
    by_wav: dict[str, np.ndarray] = {}
    for name, args in AUDIO_CASES.items():
        for (_, wav), codes in zip(args, extract_audio(golden[name], ctx), strict=True):
            by_wav.setdefault(wav, codes)
            np.testing.assert_array_equal(codes, by_wav[wav], err_msg=f"{name}: {wav} codes differ")


@pytest.mark.parametrize("name", ["asr", "tts", "tts_zh"])
def test_template_index_selects_from_official_pool(name, ctx, cases, golden):
    """A recorded template is one of the official pool's; passing its index gives the same prompt."""
    used = cases["templates_used"][name][0]
    pool = tpl.ASR_TEMPLATES if name == "asr" else (tpl.TTS_ZH_TEMPLATES if name == "tts_zh" else tpl.TTS_EN_TEMPLATES)
    assert used in pool
    if name != "asr":
        by_index = text_call(name, ctx, [pool.index(used)])
        assert_same_ids(by_index.input_ids, golden[name], f"{name} by index")


# ----------------------------------------------------------------------------------------------------------------
# End to end through the audio tokenizer (wav -> codes -> prompt)


@pytest.fixture(scope="module")
def wav_codes(golden_dir, ctx, cases):
    """Codes of both fixture wavs, the way the official pipeline makes them (first C codes, padded to G), with
    the tokenizer as the official wrapper holds it (``official`` precision)."""
    params, cfg = audio.load_audio_tokenizer(golden_dir / "audio_tokenizer", "official")
    out = {}
    for key, wav in (("W24", cases["inputs"]["wav_24k"]), ("W16", cases["inputs"]["wav_16k"])):
        wave, _ = load_audio_24k(golden_dir / "pipeline" / wav)
        codes = np.asarray(audio.wav_to_codes(params, cfg, wave, ctx.audio_channels))
        out[key] = P.pad_codes_to_group(codes, ctx.group_size)
    return out


@pytest.mark.parametrize("name", sorted(AUDIO_CASES))
def test_audio_prompt_from_wav(name, ctx, golden, cases, wav_codes):
    codes = {arg: wav_codes[wav] for arg, wav in AUDIO_CASES[name]}
    prompt = audio_call(name, ctx, codes, cases["templates_used"][name])
    assert_same_ids(prompt.input_ids, golden[name], f"{name} from wav")
