"""Golden parity of the prompt builders against the official ``input_ids`` (``pipeline/prompts.safetensors``).

Three layers:
- text-only prompts, rebuilt from the call arguments (``arguments.md``) and the templates the official run drew
  (``cases.json``): exact equality;
- prompts with audio, rebuilt STRUCTURALLY: the audio codes are read back out of the golden array itself and fed
  to the builder, which proves every text id, -100, empty id and wrapper group is exact, independently of the
  audio tokenizer;
- prompts with audio, end to end: wav -> ``load_audio_24k`` -> ``mimo_ref.audio.wav_to_codes`` ->
  ``pad_codes_to_group`` -> builder: every non-code id exact, codes to the agreement that the official
  bfloat16 encoding allows (see ``MIN_CODE_AGREEMENT``).

Ids, shapes and templates come from the fixture files; only the call arguments (the official calls themselves)
are written here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mimo_ref import audio
from mimo_ref import prompts as P
from mimo_ref import templates as tpl
from mimo_ref.audio_io import load_audio_24k
from tests.golden_utils import load_arrays

# The official calls of arguments.md. Audio arguments are the names of the fixture wavs ("W24" / "W16").
TEXT_EN = "Hello world, this is a test."  # cases.json inputs.text_en (checked below)

TEXT_CASES = {
    "tts": lambda ctx, t: P.tts_prompt(ctx, TEXT_EN, template=t[0]),
    "tts_lowercase": lambda ctx, t: P.tts_prompt(ctx, "hello world", template=t[0]),
    "tts_zh": lambda ctx, t: P.tts_prompt(ctx, "今天天气很好", template=t[0]),
    "tts_instruct": lambda ctx, t: P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly and warmly", template=t[0]),
    "tts_free": lambda ctx, t: P.tts_prompt(ctx, "Speak slowly and warmly", read_text_only=False),
    "text_dialogue": lambda ctx, t: P.text_dialogue_prompt(ctx, "What is in the audio?"),
    "text_dialogue_think": lambda ctx, t: P.text_dialogue_prompt(ctx, "What is in the audio?", thinking=True),
    "text_dialogue_multiturn": lambda ctx, t: P.text_dialogue_multiturn_prompt(
        ctx,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Describe the sound."},
        ],
        thinking=True,
    ),
}


def audio_call(name: str, ctx, a: dict, t: list[str]):
    """The official call of an audio case, with ``a[...]`` the codes of each audio argument."""
    if name in ("asr", "asr_16k"):
        return P.asr_prompt(ctx, a["input"], template=t[0])
    if name == "tts_instruct_voice":
        return P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly", prompt_speech=a["voice"], template=t[0])
    if name == "tts_free_voice":
        return P.tts_prompt(ctx, "Speak slowly", read_text_only=False, prompt_speech=a["voice"])
    if name == "audio_understanding":
        return P.audio_understanding_prompt(ctx, a["input"], "What is in the audio?")
    if name == "audio_understanding_think":
        return P.audio_understanding_prompt(ctx, a["input"], "Describe the sound.", thinking=True)
    if name == "spoken_dialogue":
        return P.spoken_dialogue_prompt(ctx, a["input"], system_prompt="You are helpful.", prompt_speech=a["voice"])
    if name == "spoken_dialogue_plain":
        return P.spoken_dialogue_prompt(ctx, a["input"])
    if name == "spoken_dialogue_multiturn":
        messages = [
            {"role": "user", "content": a["user0"]},
            {"role": "assistant", "content": {"text": "Hello there.", "audio": a["assistant1"]}},
            {"role": "user", "content": a["user2"]},
        ]
        return P.spoken_dialogue_multiturn_prompt(ctx, messages, system_prompt="Be brief.", prompt_speech=a["voice"])
    if name in ("s2t_dialogue", "s2t_dialogue_think"):
        return P.s2t_dialogue_prompt(ctx, a["input"], thinking=name.endswith("think"))
    if name == "s2t_dialogue_multiturn":
        messages = [
            {"role": "user", "content": a["user0"]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": a["user2"]},
        ]
        return P.s2t_dialogue_multiturn_prompt(ctx, messages)
    if name == "in_context_s2s":
        example = {
            "input_audio": a["example_in"],
            "output_transcription": "The quick brown fox jumps over the lazy dog.",
            "output_audio": a["example_out"],
        }
        return P.in_context_s2s_prompt(ctx, "Convert the voice", [example], a["input"])
    raise KeyError(name)


# Audio arguments of each case: (argument name, wav) in the order their codes appear in the prompt.
AUDIO_CASES = {
    "asr": [("input", "W24")],
    "asr_16k": [("input", "W16")],
    "tts_instruct_voice": [("voice", "W16")],
    "tts_free_voice": [("voice", "W24")],
    "audio_understanding": [("input", "W24")],
    "audio_understanding_think": [("input", "W24")],
    "spoken_dialogue": [("voice", "W16"), ("input", "W24")],
    "spoken_dialogue_plain": [("input", "W16")],
    "spoken_dialogue_multiturn": [("voice", "W24"), ("user0", "W24"), ("assistant1", "W16"), ("user2", "W16")],
    "s2t_dialogue": [("input", "W24")],
    "s2t_dialogue_think": [("input", "W24")],
    "s2t_dialogue_multiturn": [("user0", "W24"), ("user2", "W16")],
    "in_context_s2s": [("example_in", "W24"), ("example_out", "W16"), ("input", "W16")],
}


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


def extract_audio(ids: np.ndarray, ctx) -> list[np.ndarray]:
    """The codes ``[C, T]`` of every audio argument in a prompt, in order.

    A wrapped audio is the speech groups between ``<|sosp|>`` and ``<|eosp|>``; a streamed one is all speech
    groups between ``<|sostm|>`` and ``<|eostm|>`` (its chunks are split by transcript groups).
    """
    g, s = ctx.group_size, ctx.special
    text = ids[0, ::g]  # [L] -> [L / G]
    found, current, inside = [], [], None
    for k, token in enumerate(text):
        if token == s.empty:
            assert inside is not None, f"speech group {k} outside sosp/eosp and sostm/eostm"
            current.append(ids[1:, k * g : (k + 1) * g])
        elif token in (s.sosp, s.sostm):
            inside, current = token, []
        elif token in (s.eosp, s.eostm) and inside is not None:
            if current:  # a trailing `<|sostm|>` that opens the answer has no end and no audio
                found.append(np.concatenate(current, axis=1))
            inside = None
    return found


def test_cases_json_matches_the_calls(cases, golden):
    assert cases["inputs"]["text_en"] == TEXT_EN
    assert set(TEXT_CASES) | set(AUDIO_CASES) == set(golden), "every golden prompt is covered by one test"


def rebuild(name: str, ctx, golden, cases) -> P.Prompt:
    """The prompt of case ``name``; audio codes (if any) read back from the golden prompt."""
    used = cases["templates_used"][name]
    if name in TEXT_CASES:
        return TEXT_CASES[name](ctx, used)
    found = extract_audio(golden[name], ctx)
    assert len(found) == len(AUDIO_CASES[name]), f"{name}: {len(found)} audio segments in the golden prompt"
    return audio_call(name, ctx, {arg: c for (arg, _), c in zip(AUDIO_CASES[name], found, strict=True)}, used)


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
        by_index = TEXT_CASES[name](ctx, [pool.index(used)])
        assert_same_ids(by_index.input_ids, golden[name], f"{name} by index")


# ----------------------------------------------------------------------------------------------------------------
# End to end through the audio tokenizer (wav -> codes -> prompt)


@pytest.fixture(scope="module")
def wav_codes(golden_dir, ctx, cases):
    """Codes of both fixture wavs, the way the official pipeline makes them (first C codes, padded to G)."""
    params, cfg = audio.load_audio_tokenizer(golden_dir / "audio_tokenizer", "float32")
    out = {}
    for key, wav in (("W24", cases["inputs"]["wav_24k"]), ("W16", cases["inputs"]["wav_16k"])):
        wave, _ = load_audio_24k(golden_dir / "pipeline" / wav)
        codes = np.asarray(audio.wav_to_codes(params, cfg, wave, ctx.audio_channels))
        out[key] = P.pad_codes_to_group(codes, ctx.group_size)
    return out


# The official wrapper encodes prompt audio with the tokenizer cast to bfloat16 (`MimoAudio.__init__`:
# `.bfloat16()`), and the fixtures were made on a machine whose bfloat16 kernels round differently from this
# CPU's: official torch run here reproduces neither the fixture codes in bfloat16 (90% of them for speech_24k)
# nor in float32 (93%), while this port's float32 codes equal official torch float32 exactly. Codes of this
# random tiny tokenizer sit close to ties, so the rounding of a bfloat16 run decides about one code in ten.
# What is pinned here: the shape and every non-code id exactly, and at least MIN_CODE_AGREEMENT of the codes (a
# wrong tokenizer agrees on about 1/1024 to 1/128 of them). The layout test above pins the rest exactly.
MIN_CODE_AGREEMENT = 0.85


@pytest.mark.parametrize("name", sorted(AUDIO_CASES))
def test_audio_prompt_from_wav(name, ctx, golden, cases, wav_codes):
    codes = {arg: wav_codes[wav] for arg, wav in AUDIO_CASES[name]}
    prompt = audio_call(name, ctx, codes, cases["templates_used"][name])
    want = golden[name]
    assert prompt.input_ids.shape == want.shape, f"{name}: shape {prompt.input_ids.shape} != {want.shape}"
    np.testing.assert_array_equal(prompt.input_ids[0], want[0], err_msg=f"{name}: text row")
    empty = np.asarray(ctx.speech_empty_ids)[:, None]
    is_code = want[1:] != empty  # speech positions that hold audio codes (not empty ids)
    np.testing.assert_array_equal(prompt.input_ids[1:][~is_code], want[1:][~is_code], err_msg=f"{name}: empty ids")
    agreement = float(np.mean(prompt.input_ids[1:][is_code] == want[1:][is_code]))
    assert agreement >= MIN_CODE_AGREEMENT, f"{name}: only {agreement:.1%} of the audio codes agree"
