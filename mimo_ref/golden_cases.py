"""The official calls behind the golden fixtures.

Shared by the golden tests (``tests/golden/``) and ``mimo-ref verify`` (:mod:`mimo_ref.verify`), so both check
exactly the same thing. See ``docs/fixtures.md`` for how the fixtures were made and what each one proves.

- Prompt cases: ``pipeline/prompts.safetensors`` holds one ``input_ids`` array per official prompt-builder call;
  :func:`text_call` / :func:`audio_call` are those calls (the table of ``tests/fixtures/golden/arguments.md``),
  written against :mod:`mimo_ref.prompts`. Ids, shapes and the randomly drawn templates come from the fixture
  files (``cases.json`` ``templates_used``); only the call arguments are written here.
- Generations: :func:`fixture_generate` is the official ``generate()`` run of the ``lm/`` fixtures. The
  pipeline runs (``e2e_*``) are plain greedy generations in the ``official`` precision (see ``docs/numerics.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mimo_ref import generate
from mimo_ref import prompts as P

# ----------------------------------------------------------------------------------------------------------------
# Prompt cases (arguments.md). Audio arguments are the names of the fixture wavs: "W24" = cases.json
# inputs.wav_24k (speech_24k.wav), "W16" = inputs.wav_16k (speech_16k.wav, resampled to 24 kHz on load).

TEXT_EN = "Hello world, this is a test."  # cases.json inputs.text_en (the tests check it)

# Cases whose only inputs are text.
TEXT_CASES = (
    "tts",
    "tts_lowercase",
    "tts_zh",
    "tts_instruct",
    "tts_free",
    "text_dialogue",
    "text_dialogue_think",
    "text_dialogue_multiturn",
)

# Cases with audio: (argument name, wav) in the order their codes appear in the prompt.
AUDIO_CASES: dict[str, list[tuple[str, str]]] = {
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


def text_call(name: str, ctx: P.PromptContext, templates: Sequence) -> P.Prompt:
    """The official call of text-only case ``name``; ``templates``: the template(s) it drew, in order."""
    if name == "tts":
        return P.tts_prompt(ctx, TEXT_EN, template=templates[0])
    if name == "tts_lowercase":
        return P.tts_prompt(ctx, "hello world", template=templates[0])
    if name == "tts_zh":
        return P.tts_prompt(ctx, "今天天气很好", template=templates[0])
    if name == "tts_instruct":
        return P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly and warmly", template=templates[0])
    if name == "tts_free":
        return P.tts_prompt(ctx, "Speak slowly and warmly", read_text_only=False)
    if name == "text_dialogue":
        return P.text_dialogue_prompt(ctx, "What is in the audio?")
    if name == "text_dialogue_think":
        return P.text_dialogue_prompt(ctx, "What is in the audio?", thinking=True)
    if name == "text_dialogue_multiturn":
        messages = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Describe the sound."},
        ]
        return P.text_dialogue_multiturn_prompt(ctx, messages, thinking=True)
    raise KeyError(name)


def audio_call(name: str, ctx: P.PromptContext, a: dict, templates: Sequence) -> P.Prompt:
    """The official call of audio case ``name``, with ``a[arg]`` the codes ``[C, T]`` of each audio argument."""
    if name in ("asr", "asr_16k"):
        return P.asr_prompt(ctx, a["input"], template=templates[0])
    if name == "tts_instruct_voice":
        return P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly", prompt_speech=a["voice"], template=templates[0])
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


def extract_audio(ids: np.ndarray, ctx: P.PromptContext) -> list[np.ndarray]:
    """The codes ``[C, T]`` of every audio argument in a prompt ``[C+1, L]``, in order.

    A wrapped audio is the speech groups between ``<|sosp|>`` and ``<|eosp|>``; a streamed one is all speech
    groups between ``<|sostm|>`` and ``<|eostm|>`` (its chunks are split by transcript groups).
    """
    g, s = ctx.group_size, ctx.special
    text = ids[0, ::g]  # [L] -> [L / G]
    found, current, inside = [], [], None
    for k, token in enumerate(text):
        if token == s.empty:
            if inside is None:
                raise ValueError(f"speech group {k} outside sosp/eosp and sostm/eostm")
            current.append(ids[1:, k * g : (k + 1) * g])
        elif token in (s.sosp, s.sostm):
            inside, current = token, []
        elif token in (s.eosp, s.eostm) and inside is not None:
            if current:  # a trailing `<|sostm|>` that opens the answer has no end and no audio
                found.append(np.concatenate(current, axis=1))
            inside = None
    return found


def official_prompt(name: str, ctx: P.PromptContext, golden_ids: np.ndarray, templates: Sequence) -> P.Prompt:
    """The prompt of case ``name`` rebuilt from its official call; audio codes (if any) read from ``golden_ids``.

    This pins every text id, -100 filler, empty id and wrapper group exactly, independently of the tokenizer.
    """
    if name in TEXT_CASES:
        return text_call(name, ctx, templates)
    found = extract_audio(golden_ids, ctx)
    if len(found) != len(AUDIO_CASES[name]):
        raise ValueError(
            f"{name}: {len(found)} audio segments in the golden prompt, the call has {len(AUDIO_CASES[name])}"
        )
    codes = {arg: c for (arg, _), c in zip(AUDIO_CASES[name], found, strict=True)}
    return audio_call(name, ctx, codes, templates)


def fixture_generate(params, cfg, special, inputs: dict, *, with_stop: bool) -> np.ndarray:
    """The official ``generate()`` run of the ``lm/`` fixtures: greedy samplers on ``generate_prompt`` with
    ``generate_params = (max_new_groups, min_length, stop_token)``; ``min_length`` counts the prompt's groups.
    Without ``with_stop`` no stop token is given (``generate_greedy_ids_nostop``). -> ids ``[C+1, T_total*G]``."""
    prompt = inputs["generate_prompt"]
    max_new, min_length, stop_token = (int(v) for v in inputs["generate_params"])
    prompt_groups = prompt.shape[-1] // cfg.group_size
    result = generate.generate(
        params,
        cfg,
        special,
        prompt,
        max_new_groups=max_new,
        min_new_groups=max(0, min_length - prompt_groups) if with_stop else 0,
        stop_tokens=[stop_token] if with_stop else [],
    )
    return result.sequence(0)
