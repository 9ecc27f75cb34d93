"""The prompt fixtures' call table against the fixture files (``pipeline/prompts.safetensors``, ``cases.json``).

The parity checks themselves (every prompt rebuilt from its official call: exact, with codes read back from the
fixture and with codes made here from the wavs) are golden cases of :mod:`mimo_ref.verify`, run by
``tests/golden/test_cases.py``. Here: the call table covers every fixture prompt, the runs' tasks and stop tokens
are the builders', templates come from the official pools.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mimo_ref import prompts as P
from mimo_ref import templates as tpl
from mimo_ref.verify import extract_audio, official_prompt
from tests.fixtures.official_calls import AUDIO_CASES, TEXT_CASES, TEXT_EN, text_call
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
