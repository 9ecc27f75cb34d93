"""The official MiMo-Audio prompts, as pure functions from text and audio codes to LM ``input_ids``.

Layout (official ``process_speechdata.InputSegment``): a prompt is ``[C+1, L]`` int64, ``L = n_groups * G``.
Row 0 is the text channel, rows 1..C the speech channels. Every group of G columns is either

- a **text group**: one text token in column 0 and -100 in columns 1..G-1 of row 0 (the LM reads only column
  0), and every speech row filled with its channel's empty id; or
- a **speech group**: ``<|empty|>`` in column 0 of row 0 (-100 after it) and G frames of codes in the speech
  rows.

Segments are tokenized one by one, exactly as the official builders split them (tokenizing two segments together
can merge tokens across the boundary), and concatenated along L. An audio segment is wrapped in a
``<|sosp|>`` and a ``<|eosp|>`` text group; a *streaming* segment (an assistant turn that has both a transcript
and its audio, official ``StreamingInputSegment``) interleaves 5 text tokens with 5 speech groups between
``<|sostm|>`` and ``<|eostm|>``.

Audio arrives already encoded: :class:`AudioCodes` ``[C, T]`` with T a multiple of G (the official pipeline
keeps the first C codes of the audio tokenizer and pads with :func:`pad_codes_to_group`), so every builder is
pure and needs no model. Builders that draw a template take ``template=`` (a string, or an index into the
official pool) or ``rng=`` (a seed or ``random.Random``) and record the template used in
:attr:`Prompt.templates`.

Each builder also returns the official wrapper's task name (which selects the sampler defaults) and stop tokens.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimo_ref import templates as tpl
from mimo_ref.config import LMConfig, SpecialTokens, load_lm_config
from mimo_ref.text import TextTokenizer, load_text_tokenizer

# Fill of row 0 at columns 1..G-1 of every prompt group (official `insert_between(..., value=-100)`).
TEXT_PAD = -100

# Official StreamingInputSegment defaults: 5 text tokens, then 5 speech groups, and so on.
STREAM_TEXT_TOKENS = 5
STREAM_AUDIO_GROUPS = 5

# Official task names (keys of `MimoAudio.task_sampler_configs`, chosen by each `*_sft` method).
TASK_ASR = "asr"
TASK_TTS = "tts"
TASK_AUDIO_UNDERSTANDING = "audio_understanding"
TASK_SPOKEN_DIALOGUE = "spoken_dialogue"  # also used by the speech-to-text dialogue methods
TASK_TEXT_CHAT = "text_chat"
TASK_IN_CONTEXT_S2S = "in_context_learning_s2s"

# Official `detect_language`: any character of the CJK Unified Ideographs block makes a text Chinese.
CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclasses.dataclass(frozen=True, eq=False)
class AudioCodes:
    """Audio encoded for the LM: ``codes [C, T]`` int64, T a positive multiple of G (checked when used)."""

    codes: np.ndarray

    def __post_init__(self):
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise ValueError(f"audio codes must be [C, T], got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"audio codes must be integers, got dtype {codes.dtype}")
        if codes.shape[1] == 0:
            raise ValueError("audio codes have no frames (T = 0): the audio is empty")
        if codes.size and codes.min() < 0:
            raise ValueError(f"audio codes must be >= 0, found {codes.min()}")
        codes = codes.astype(np.int64)  # a private copy, so the frozen object cannot change under us
        codes.setflags(write=False)
        object.__setattr__(self, "codes", codes)


@dataclasses.dataclass(frozen=True, eq=False)
class PromptContext:
    """What every builder needs from the checkpoint: the text tokenizer and the LM's speech layout."""

    tokenizer: TextTokenizer
    group_size: int  # G
    speech_empty_ids: tuple[int, ...]  # per channel, length C

    @property
    def audio_channels(self) -> int:
        return len(self.speech_empty_ids)

    @property
    def special(self) -> SpecialTokens:
        return self.tokenizer.special


@dataclasses.dataclass(frozen=True, eq=False)
class Prompt:
    """A built prompt: the LM input, and how the official wrapper runs it."""

    input_ids: np.ndarray  # [C+1, L] int64
    task: str  # official sampler-config task name
    stop_tokens: tuple[int, ...]  # official MiMoStopper stop_tokens, in the official order
    templates: tuple[str, ...]  # random templates used, in order (empty when the builder draws none)


def prompt_context(tokenizer: TextTokenizer, cfg: LMConfig) -> PromptContext:
    """A :class:`PromptContext` from a loaded tokenizer and LM config."""
    return PromptContext(tokenizer=tokenizer, group_size=cfg.group_size, speech_empty_ids=cfg.speech_empty_ids)


def load_prompt_context(folder: str | Path) -> PromptContext:
    """A :class:`PromptContext` from an LM checkpoint folder (``tokenizer.json`` and ``config.json``)."""
    return prompt_context(load_text_tokenizer(folder), load_lm_config(folder))


# ----------------------------------------------------------------------------------------------------------------
# Audio codes


def pad_codes_to_group(codes: np.ndarray, group_size: int) -> np.ndarray:
    """Pad ``codes [C, T]`` to ``[C, ceil(T / G) * G]`` by repeating the last frame (official ``preprocess_input``).

    Raises ValueError for codes without frames (there is no last frame to repeat).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [C, T], got shape {codes.shape}")
    frames = codes.shape[1]
    if frames == 0:
        raise ValueError("codes have no frames (T = 0): cannot pad an empty audio")
    missing = -frames % group_size
    tail = np.repeat(codes[:, -1:], missing, axis=1)  # [C, 1] -> [C, missing]
    return np.concatenate([codes, tail], axis=1)  # [C, T] -> [C, T + missing]


def as_audio_codes(ctx: PromptContext, audio: AudioCodes | np.ndarray, what: str) -> np.ndarray:
    """Check ``audio`` against the LM's layout and return its ``[C, T]`` int64 codes."""
    codes = audio.codes if isinstance(audio, AudioCodes) else AudioCodes(audio).codes
    channels, frames = codes.shape
    if channels != ctx.audio_channels:
        raise ValueError(f"{what}: codes have {channels} channels but the LM uses {ctx.audio_channels}")
    if frames % ctx.group_size:
        raise ValueError(
            f"{what}: {frames} frames is not a multiple of group_size {ctx.group_size}; pad with pad_codes_to_group"
        )
    return codes


# ----------------------------------------------------------------------------------------------------------------
# Segments (official InputSegment / StreamingInputSegment): each returns a [C+1, n * G] block.


def empty_speech(ctx: PromptContext, columns: int) -> np.ndarray:
    """``[C, columns]`` speech rows holding each channel's empty id (no speech)."""
    empty = np.asarray(ctx.speech_empty_ids, dtype=np.int64)  # [C]
    return np.repeat(empty[:, None], columns, axis=1)  # [C] -> [C, columns]


def text_row(ids: Sequence[int], group_size: int) -> np.ndarray:
    """``[n * G]`` text row: ``ids`` at the first column of each group, -100 after (official ``insert_between``)."""
    row = np.full((len(ids), group_size), TEXT_PAD, dtype=np.int64)  # [n, G]
    row[:, 0] = np.asarray(ids, dtype=np.int64)
    return row.reshape(-1)  # [n, G] -> [n * G]


def token_block(ctx: PromptContext, ids: Sequence[int]) -> np.ndarray:
    """Text groups for token ids: ``[C+1, n * G]``."""
    row = text_row(ids, ctx.group_size)  # [n * G]
    return np.concatenate([row[None], empty_speech(ctx, row.shape[0])], axis=0)  # -> [C+1, n * G]


def text_block(ctx: PromptContext, text: str) -> np.ndarray:
    """Text groups for one official text segment: ``[C+1, n * G]`` (n = tokens of ``text``, 0 for "")."""
    return token_block(ctx, ctx.tokenizer.encode(text))


def audio_block(ctx: PromptContext, codes: np.ndarray, *, wrap: bool = True) -> np.ndarray:
    """Speech groups for ``codes [C, T]``: ``[C+1, T]``, or ``[C+1, T + 2G]`` wrapped in ``<|sosp|>``/``<|eosp|>``.

    Row 0 holds ``<|empty|>`` at each group's first column (-100 after); the wrapping groups are text groups
    (empty speech). Streaming segments use ``wrap=False``.
    """
    group_size = ctx.group_size
    n_groups = codes.shape[1] // group_size
    text = [ctx.special.empty] * n_groups
    speech = codes  # [C, T]
    if wrap:
        text = [ctx.special.sosp, *text, ctx.special.eosp]
        edge = empty_speech(ctx, group_size)  # [C, G]
        speech = np.concatenate([edge, codes, edge], axis=1)  # [C, T] -> [C, T + 2G]
    return np.concatenate([text_row(text, group_size)[None], speech], axis=0)  # -> [C+1, columns]


def stream_block(ctx: PromptContext, text: str, codes: np.ndarray) -> np.ndarray:
    """An assistant turn with transcript and audio, interleaved (official ``StreamingInputSegment``).

    ``<|sostm|>``, then alternately 5 transcript tokens and 5 speech groups (unwrapped) while both last, then the
    rest of whichever is longer, then ``<|eostm|>``. ``<|eot|>`` is appended to the transcript's last chunk.

    Returns:
      ``[C+1, L]`` int64.
    """
    ids = ctx.tokenizer.encode(text)
    if not ids:
        # official: IndexError on the empty chunk list; fail with a message instead
        raise ValueError("a streaming (transcript + audio) segment needs a non-empty transcript")
    text_chunks = [ids[i : i + STREAM_TEXT_TOKENS] for i in range(0, len(ids), STREAM_TEXT_TOKENS)]
    # official: tokenizes the string "<|eot|>", which is this single added token
    text_chunks[-1] = [*text_chunks[-1], ctx.special.eot]
    frames = STREAM_AUDIO_GROUPS * ctx.group_size
    audio_chunks = [codes[:, i : i + frames] for i in range(0, codes.shape[1], frames)]

    both = min(len(text_chunks), len(audio_chunks))
    blocks = [token_block(ctx, [ctx.special.sostm])]
    for i in range(both):
        blocks += [token_block(ctx, text_chunks[i]), audio_block(ctx, audio_chunks[i], wrap=False)]
    blocks += [token_block(ctx, chunk) for chunk in text_chunks[both:]]
    blocks += [audio_block(ctx, chunk, wrap=False) for chunk in audio_chunks[both:]]
    blocks.append(token_block(ctx, [ctx.special.eostm]))
    return np.concatenate(blocks, axis=1)


def join(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate segment blocks along L: ``[C+1, L]`` int64 (official ``get_input_ids``)."""
    return np.concatenate(blocks, axis=1).astype(np.int64)


def prepend_history(history: np.ndarray | None, input_ids: np.ndarray) -> np.ndarray:
    """Official ``forward(add_history=True)``: the previous call's full ids ``[C+1, L0]`` before the new prompt."""
    if history is None:
        return input_ids
    history = np.asarray(history, dtype=np.int64)
    if history.ndim != 2 or history.shape[0] != input_ids.shape[0]:
        raise ValueError(f"history must be [C+1, L0] with C+1 = {input_ids.shape[0]}, got shape {history.shape}")
    return np.concatenate([history, input_ids], axis=1)  # [C+1, L0] + [C+1, L] -> [C+1, L0 + L]


# ----------------------------------------------------------------------------------------------------------------
# Templates, text normalisation, stop tokens


def choose_template(pool: Sequence[str], template: str | int | None, rng: random.Random | int | None) -> str:
    """The template to use: ``template`` (a string, or an index into ``pool``), else a draw from ``rng``.

    ``rng`` is a seed or a ``random.Random``; ``random.Random(seed).choice(pool)`` picks what the official
    ``random.choice(pool)`` picks after ``random.seed(seed)``. With neither given there is no reproducible
    choice, so this raises.
    """
    if isinstance(template, bool):
        raise TypeError(f"template must be a string or an index, got {template!r}")
    if isinstance(template, str):
        return template
    if isinstance(template, int):
        if not -len(pool) <= template < len(pool):
            raise ValueError(f"template index {template} is outside the {len(pool)} official templates")
        return pool[template]
    if template is not None:
        raise TypeError(f"template must be a string or an index, got {template!r}")
    if rng is None:
        raise ValueError("this prompt draws a random template: pass template= (string or index) or rng= (seed)")
    if isinstance(rng, int) and not isinstance(rng, bool):
        rng = random.Random(rng)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be an int seed or a random.Random, got {type(rng).__name__}")
    return rng.choice(pool)


def is_chinese(text: str) -> bool:
    """Official ``detect_language(text) == "zh"``: the text has a CJK unified ideograph."""
    return CJK.search(text) is not None


def normalize_tts_text(text: str) -> str:
    """Official ``preprocess_input`` on text: all-lowercase or all-uppercase text is ``str.capitalize()``-d.

    ``str.capitalize`` also lower-cases the rest ("HELLO WORLD" -> "Hello world"); text without cased characters
    (Chinese, digits) and mixed-case text are unchanged.
    """
    if text.isupper() or text.islower():
        return text.capitalize()
    return text


def with_eos(ctx: PromptContext, *stops: int) -> tuple[int, ...]:
    """Official stop list ``[tokenizer.eos_token_id, *stops]``.

    A tokenizer without ``eos_token`` has ``eos_token_id = None`` officially, which never matches a token, so it is
    left out here.
    """
    eos = ctx.tokenizer.eos_id
    return stops if eos is None else (eos, *stops)


def text_stops(ctx: PromptContext) -> tuple[int, ...]:
    """Official stop tokens of text answers: ``[eos, <|im_end|>]``."""
    return with_eos(ctx, ctx.special.im_end)


def speech_stops(ctx: PromptContext) -> tuple[int, ...]:
    """Official stop tokens of spoken answers: ``[eos, <|eostm|>, <|im_end|>]``."""
    return with_eos(ctx, ctx.special.eostm, ctx.special.im_end)


def thinking_text(thinking: bool) -> str:
    """The assistant turn's thinking block: open when thinking, empty otherwise."""
    return tpl.THINKING if thinking else tpl.NO_THINKING


def require_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Builders, one per official `get_*_prompt`


def asr_prompt(
    ctx: PromptContext,
    audio: AudioCodes | np.ndarray,
    *,
    template: str | int | None = None,
    rng: random.Random | int | None = None,
) -> Prompt:
    """Speech recognition (official ``get_asr_sft_prompt``, run by ``asr_sft``).

    ``user: <audio> <instruction>``, assistant opened with an empty thinking block. The instruction is drawn
    from the Chinese and English ASR templates together (:data:`templates.ASR_TEMPLATES`), whatever the audio.

    Args:
      audio: codes ``[C, T]``.
    """
    codes = as_audio_codes(ctx, audio, "asr audio")
    chosen = choose_template(tpl.ASR_TEMPLATES, template, rng)
    blocks = [
        text_block(ctx, "<|im_start|>user\n"),
        audio_block(ctx, codes),
        text_block(ctx, chosen),
        text_block(ctx, "<|im_end|>\n"),
        text_block(ctx, "<|im_start|>assistant\n"),
        text_block(ctx, tpl.NO_THINKING),
    ]
    return Prompt(join(blocks), TASK_ASR, text_stops(ctx), (chosen,))


def tts_prompt(
    ctx: PromptContext,
    text: str,
    *,
    instruct: str | None = None,
    read_text_only: bool = True,
    prompt_speech: AudioCodes | np.ndarray | None = None,
    template: str | int | None = None,
    rng: random.Random | int | None = None,
) -> Prompt:
    """Text to speech (official ``get_tts_sft_prompt``, run by ``tts_sft``).

    ``read_text_only=True`` (read ``text`` aloud): ``user: "<template>: <text>"``, or with ``instruct``
    ``user: "<template>: <text>(<instruct>)"`` after a style system message, which carries the voice prompt's
    audio when ``prompt_speech`` is given. Without ``instruct`` the assistant turn opens with ``<|sostm|>``;
    with it, with ``<think>\\n``.
    The template is drawn from the Chinese pool when ``text`` has a CJK character, else from the English one.

    ``read_text_only=False`` (free form: ``text`` describes the speech to make): style system message (with the
    voice prompt's audio if given), ``user: <text>``, assistant opened with ``<think>\\n``; no template.

    ``text`` is capitalized first when it is all-lowercase or all-uppercase (:func:`normalize_tts_text`).

    Deliberate deviations: where the official code silently ignores an argument, this raises instead (drop the
    argument to get the official ids): ``prompt_speech`` without ``instruct`` in read mode, ``instruct`` or
    ``template`` with ``read_text_only=False``. Empty ``text`` is an error too (nothing to speak).
    """
    require_text(text, "tts text")
    if not text.strip():
        raise ValueError("tts text is empty: there is nothing to speak")
    voice = None if prompt_speech is None else as_audio_codes(ctx, prompt_speech, "tts prompt_speech")
    spoken = normalize_tts_text(text)

    if not read_text_only:
        if instruct is not None:
            raise ValueError("instruct is ignored by the official free-form TTS prompt (read_text_only=False)")
        if template is not None:
            raise ValueError("the free-form TTS prompt (read_text_only=False) uses no template")
        blocks = style_system(ctx, voice) + [
            text_block(ctx, f"<|im_start|>user\n{spoken}<|im_end|>\n"),
            text_block(ctx, "<|im_start|>assistant\n<think>\n"),
        ]
        return Prompt(join(blocks), TASK_TTS, speech_stops(ctx), ())

    if instruct is None and voice is not None:
        raise ValueError("the official plain TTS prompt ignores prompt_speech: give instruct= to use a voice prompt")
    pool = tpl.TTS_ZH_TEMPLATES if is_chinese(text) else tpl.TTS_EN_TEMPLATES
    chosen = choose_template(pool, template, rng)
    if instruct is None:
        blocks = [
            text_block(ctx, f"<|im_start|>user\n{chosen}: {spoken}<|im_end|>\n"),
            text_block(ctx, "<|im_start|>assistant\n<|sostm|>"),
        ]
    else:
        blocks = style_system(ctx, voice) + [
            text_block(ctx, f"<|im_start|>user\n{chosen}: {spoken}({instruct})<|im_end|>\n"),
            text_block(ctx, "<|im_start|>assistant\n<think>\n"),
        ]
    return Prompt(join(blocks), TASK_TTS, speech_stops(ctx), (chosen,))


def style_system(ctx: PromptContext, voice: np.ndarray | None) -> list[np.ndarray]:
    """The TTS style system message, with the voice prompt's audio when given."""
    if voice is None:
        return [
            text_block(ctx, "<|im_start|>system\n"),
            text_block(ctx, tpl.TTS_STYLE_SYSTEM),
            text_block(ctx, "<|im_end|>\n"),
        ]
    return [
        text_block(ctx, "<|im_start|>system\n"),
        text_block(ctx, tpl.TTS_STYLE_VOICE_SYSTEM),
        audio_block(ctx, voice),
        text_block(ctx, "<|im_end|>\n"),
    ]


def audio_understanding_prompt(
    ctx: PromptContext, audio: AudioCodes | np.ndarray, text: str, *, thinking: bool = False
) -> Prompt:
    """A question about an audio (official ``get_audio_understanding_sft_prompt``, run by ``audio_understanding_sft``).

    ``user: <audio> <text>``, assistant opened with an empty thinking block, or an open one when ``thinking``.
    """
    codes = as_audio_codes(ctx, audio, "audio understanding audio")
    blocks = [
        text_block(ctx, "<|im_start|>user\n"),
        audio_block(ctx, codes),
        text_block(ctx, require_text(text, "audio understanding text")),
        text_block(ctx, "<|im_end|>\n"),
        text_block(ctx, "<|im_start|>assistant\n"),
        text_block(ctx, thinking_text(thinking)),
    ]
    return Prompt(join(blocks), TASK_AUDIO_UNDERSTANDING, text_stops(ctx), ())


def voice_system(ctx: PromptContext, voice: np.ndarray) -> list[np.ndarray]:
    """The spoken-dialogue system message carrying the voice prompt's audio."""
    return [
        text_block(ctx, "<|im_start|>system\n"),
        text_block(ctx, tpl.DIALOGUE_VOICE_SYSTEM),
        audio_block(ctx, voice),
        text_block(ctx, "<|im_end|>\n"),
    ]


def user_audio_turn(ctx: PromptContext, codes: np.ndarray, system_prompt: str | None) -> list[np.ndarray]:
    """``user: [<system_prompt>\\n\\n] <audio>``: the system prompt rides in the user turn, before the audio."""
    blocks = [text_block(ctx, "<|im_start|>user\n")]
    if system_prompt:  # official truthiness: "" means no system prompt
        blocks += [text_block(ctx, system_prompt), text_block(ctx, "\n\n")]
    return blocks + [audio_block(ctx, codes), text_block(ctx, "<|im_end|>\n")]


def spoken_dialogue_prompt(
    ctx: PromptContext,
    audio: AudioCodes | np.ndarray,
    *,
    system_prompt: str | None = None,
    prompt_speech: AudioCodes | np.ndarray | None = None,
    history: np.ndarray | None = None,
) -> Prompt:
    """Speech in, speech out (official ``get_spoken_dialogue_sft_prompt``, run by ``spoken_dialogue_sft``).

    ``[system: "Your voice should be:" <voice>] user: [<system_prompt>\\n\\n] <audio>``, assistant opened with
    ``<|sostm|>``.

    ``history`` (``[C+1, L0]``, the previous call's prompt + generated ids) continues a conversation, as the
    official ``add_history=True`` does: the new turn is only ``user: <audio>`` + the assistant opening, and the
    history is prepended. Officially ``system_prompt`` and ``prompt_speech`` are then ignored; here passing them
    with ``history`` is an error (give them on the first turn).
    """
    codes = as_audio_codes(ctx, audio, "spoken dialogue audio")
    if history is not None:
        if system_prompt or prompt_speech is not None:
            raise ValueError("system_prompt / prompt_speech apply to the first turn only: not with history")
        blocks = user_audio_turn(ctx, codes, None) + [text_block(ctx, "<|im_start|>assistant\n<|sostm|>")]
        return Prompt(prepend_history(history, join(blocks)), TASK_SPOKEN_DIALOGUE, speech_stops(ctx), ())
    blocks = []
    if prompt_speech is not None:
        blocks += voice_system(ctx, as_audio_codes(ctx, prompt_speech, "spoken dialogue prompt_speech"))
    blocks += user_audio_turn(ctx, codes, system_prompt)
    blocks.append(text_block(ctx, "<|im_start|>assistant\n<|sostm|>"))
    return Prompt(join(blocks), TASK_SPOKEN_DIALOGUE, speech_stops(ctx), ())


def message_role(message: Mapping[str, Any], index: int) -> str:
    role = message.get("role") if isinstance(message, Mapping) else None
    if role not in ("user", "assistant"):
        raise ValueError(f"message {index}: role must be 'user' or 'assistant', got {role!r}")
    return role


def spoken_dialogue_multiturn_prompt(
    ctx: PromptContext,
    messages: Sequence[Mapping[str, Any]],
    *,
    system_prompt: str | None = None,
    prompt_speech: AudioCodes | np.ndarray | None = None,
) -> Prompt:
    """A spoken conversation so far (official ``get_spoken_dialogue_sft_multiturn_prompt``).

    ``messages``: ``{"role": "user", "content": <codes>}`` and
    ``{"role": "assistant", "content": {"text": <transcript>, "audio": <codes>}}`` (assistant turns are streamed:
    :func:`stream_block`). ``system_prompt`` goes into the first message, which must then be a user turn (the
    official code silently drops it otherwise); ``prompt_speech`` adds the voice system message.
    Ends with an assistant turn opened by ``<|sostm|>``.
    """
    if system_prompt and messages and message_role(messages[0], 0) != "user":
        raise ValueError("system_prompt is put into the first user turn, but the first message is not a user turn")
    blocks = []
    if prompt_speech is not None:
        blocks += voice_system(ctx, as_audio_codes(ctx, prompt_speech, "spoken dialogue prompt_speech"))
    for i, message in enumerate(messages):
        if message_role(message, i) == "user":
            codes = as_audio_codes(ctx, message.get("content"), f"message {i} (user) audio")
            blocks += user_audio_turn(ctx, codes, system_prompt if i == 0 else None)
        else:
            content = message.get("content")
            if not isinstance(content, Mapping) or "text" not in content or "audio" not in content:
                raise ValueError(f"message {i} (assistant): content must be {{'text': str, 'audio': codes}}")
            transcript = require_text(content["text"], f"message {i} (assistant) text")
            codes = as_audio_codes(ctx, content["audio"], f"message {i} (assistant) audio")
            blocks += [
                text_block(ctx, "<|im_start|>assistant\n"),
                stream_block(ctx, transcript, codes),
                text_block(ctx, "<|im_end|>\n"),
            ]
    blocks.append(text_block(ctx, "<|im_start|>assistant\n<|sostm|>"))
    return Prompt(join(blocks), TASK_SPOKEN_DIALOGUE, speech_stops(ctx), ())


def assistant_opening(ctx: PromptContext, thinking: bool) -> list[np.ndarray]:
    """The final assistant turn of a text answer: ``<|im_start|>assistant\\n`` + thinking block."""
    return [text_block(ctx, "<|im_start|>assistant\n"), text_block(ctx, thinking_text(thinking))]


def s2t_dialogue_prompt(
    ctx: PromptContext, audio: AudioCodes | np.ndarray, *, thinking: bool = False, history: np.ndarray | None = None
) -> Prompt:
    """Speech in, text out (official ``get_s2t_dialogue_sft_prompt``, run by ``speech2text_dialogue_sft``).

    ``user: <audio>``, then the assistant opening. Officially run under the ``spoken_dialogue`` sampler settings.
    ``history`` is prepended as the official ``add_history=True`` does (the prompt itself does not change).
    """
    codes = as_audio_codes(ctx, audio, "speech-to-text dialogue audio")
    blocks = user_audio_turn(ctx, codes, None) + assistant_opening(ctx, thinking)
    return Prompt(prepend_history(history, join(blocks)), TASK_SPOKEN_DIALOGUE, text_stops(ctx), ())


def s2t_dialogue_multiturn_prompt(
    ctx: PromptContext, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False
) -> Prompt:
    """A speech-to-text conversation (official ``get_s2t_dialogue_sft_multiturn_prompt``).

    ``messages``: ``{"role": "user", "content": <codes>}``, ``{"role": "assistant", "content": <text>}``.
    """
    blocks = []
    for i, message in enumerate(messages):
        if message_role(message, i) == "user":
            blocks += user_audio_turn(ctx, as_audio_codes(ctx, message.get("content"), f"message {i} audio"), None)
        else:
            blocks += text_turn(ctx, "assistant", require_text(message.get("content"), f"message {i} text"))
    blocks += assistant_opening(ctx, thinking)
    return Prompt(join(blocks), TASK_SPOKEN_DIALOGUE, text_stops(ctx), ())


def text_turn(ctx: PromptContext, role: str, text: str) -> list[np.ndarray]:
    """``<|im_start|>{role}\\n`` + text + ``<|im_end|>\\n`` as three segments."""
    return [text_block(ctx, f"<|im_start|>{role}\n"), text_block(ctx, text), text_block(ctx, "<|im_end|>\n")]


def text_dialogue_prompt(
    ctx: PromptContext, text: str, *, thinking: bool = False, history: np.ndarray | None = None
) -> Prompt:
    """Text chat (official ``get_text_dialogue_sft_prompt``, run by ``text_dialogue_sft``).

    ``history`` is prepended as the official ``add_history=True`` does.
    """
    blocks = text_turn(ctx, "user", require_text(text, "text dialogue text")) + assistant_opening(ctx, thinking)
    return Prompt(prepend_history(history, join(blocks)), TASK_TEXT_CHAT, text_stops(ctx), ())


def text_dialogue_multiturn_prompt(
    ctx: PromptContext, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False
) -> Prompt:
    """A text conversation (official ``get_text_dialogue_sft_multiturn_prompt``); contents are strings."""
    blocks = []
    for i, message in enumerate(messages):
        role = message_role(message, i)
        blocks += text_turn(ctx, role, require_text(message.get("content"), f"message {i} text"))
    blocks += assistant_opening(ctx, thinking)
    return Prompt(join(blocks), TASK_TEXT_CHAT, text_stops(ctx), ())


def in_context_s2s_prompt(
    ctx: PromptContext,
    instruction: str,
    examples: Sequence[Mapping[str, Any]],
    audio: AudioCodes | np.ndarray,
) -> Prompt:
    """Few-shot speech-to-speech (official ``get_in_context_learning_s2s_prompt``, run by ``in_context_learning_s2s``).

    ``[Int]:<instruction>\\n``, then per example ``<input audio>\\n<streamed transcript + output audio> \\n\\n``,
    then ``<audio>\\n<|sostm|>``; no chat markup. ``examples``: ``{"input_audio": codes,
    "output_transcription": str, "output_audio": codes}``. Stop tokens are ``[eos, <|eostm|>]``.
    """
    blocks = [text_block(ctx, f"[Int]:{require_text(instruction, 'instruction')}\n")]
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping):
            raise TypeError(f"example {i} must be a mapping, got {type(example).__name__}")
        missing = [k for k in ("input_audio", "output_transcription", "output_audio") if k not in example]
        if missing:
            raise ValueError(f"example {i} lacks {missing}")
        blocks += [
            audio_block(ctx, as_audio_codes(ctx, example["input_audio"], f"example {i} input_audio")),
            text_block(ctx, "\n"),
            stream_block(
                ctx,
                require_text(example["output_transcription"], f"example {i} output_transcription"),
                as_audio_codes(ctx, example["output_audio"], f"example {i} output_audio"),
            ),
            text_block(ctx, " \n\n"),
        ]
    blocks += [
        audio_block(ctx, as_audio_codes(ctx, audio, "in-context audio")),
        text_block(ctx, "\n"),
        text_block(ctx, "<|sostm|>"),
    ]
    return Prompt(join(blocks), TASK_IN_CONTEXT_S2S, with_eos(ctx, ctx.special.eostm), ())
