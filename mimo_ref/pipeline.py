"""Every MiMo-Audio task end to end (official ``MimoAudio`` wrapper, ``src/mimo_audio/mimo_audio.py``).

A task is: audio inputs -> codes (:func:`MimoAudio.encode_audio`), a prompt (:mod:`mimo_ref.prompts`), one
jitted generation (:func:`mimo_ref.generate.generate`) with the task's official samplers and stop tokens, then
the official output handling (:func:`decode_outputs`): the text channel decoded, and for spoken answers the speech
span between ``<|sostm|>`` and ``<|eostm|>`` decoded to a 24 kHz waveform in chunks of 1500 code frames.

Spoken answers can also stream (``stream=True``, :meth:`MimoAudio.run_stream`): generation runs group by group and
the speech span is fed to the official streaming decode as it grows, yielding waveform chunks while generation runs
(:func:`speech_chunks`, :func:`stream_speech`; docs/audio_streaming.md).

:class:`MimoAudio` holds the loaded (immutable) params; each task method is a function of its arguments and
``seed``, so the same call gives the same result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mimo_ref import audio as audio_tok
from mimo_ref import generate, lm, prompts, sampling, sharding
from mimo_ref.audio.streaming import StreamingConfig, init_state, stream_frames_bound, streaming_decode
from mimo_ref.audio.waveform import EMPTY_AUDIO_SAMPLES
from mimo_ref.audio_io import AudioFileError, load_audio, resample
from mimo_ref.audio_limits import check_audio_length, file_length
from mimo_ref.bundled import BUNDLED_AUDIO_TOKENIZER, BUNDLED_LM
from mimo_ref.checkpoint import resolve_checkpoint
from mimo_ref.checks import InputError, check_long_enough, fold_seed, mono_wave, positive_int
from mimo_ref.config import LMConfig, SpecialTokens
from mimo_ref.precision import Precision, resolve_precision
from mimo_ref.prompts import AudioCodes, Prompt, PromptContext
from mimo_ref.text import TextTokenizer, decode_text_channel, load_text_tokenizer

log = logging.getLogger(__name__)  # stage messages (model loading); the CLI prints them on stderr

# audio inputs: a file path, a (wave, sample_rate) pair, or codes already encoded
AudioInput = str | os.PathLike | tuple[np.ndarray, int] | AudioCodes


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
    """Result of a task.

    text: the decoded text channel (official ``forward()`` post-processing). wav: ``[samples]`` float32 at 24 kHz
    for spoken answers, else None. ids: ``[C+1, L]`` prompt + generated ids (pass as ``history`` to continue a
    conversation). prompt_length: prompt columns in ``ids``. templates: prompt templates drawn. seed: the seed.
    """

    text: str
    wav: np.ndarray | None
    ids: np.ndarray
    prompt_length: int
    task: str
    templates: tuple[str, ...]
    seed: int

    @property
    def generated_ids(self) -> np.ndarray:
        return self.ids[:, self.prompt_length :]


def speech_span(generated: np.ndarray, *, special: SpecialTokens, cfg: LMConfig) -> np.ndarray:
    """The speech codes of a generated answer, as the official ``forward()`` selects them. -> ``[C, T]``.

    generated ``[C+1, n*G]`` (generated groups only). The text channel of the groups except the last is searched:
    the span starts one group after the first ``<|sostm|>`` (at 0 if none) and ends at the first ``<|eostm|>``
    (else after the last-but-one group); frames whose channel-0 code is channel 0's empty id are dropped.
    """
    g = cfg.group_size
    text = generated[0, ::g][:-1]  # [n-1] group text ids, last group dropped (official)
    starts = np.flatnonzero(text == special.sostm)
    ends = np.flatnonzero(text == special.eostm)
    start = int(starts[0]) * g + g if starts.size else 0
    end = int(ends[0]) * g if ends.size else text.shape[0] * g
    speech = generated[1:, start:end]  # [C, frames]
    speech = speech[:, speech[0] != cfg.speech_empty_ids[0]]
    bad = speech >= np.asarray(cfg.speech_empty_ids)[:, None]
    if bad.any():  # the official code asserts this; an empty id on another channel would be decoded as a code
        raise ValueError("the generated speech span holds an empty id outside channel 0; cannot decode it")
    return speech


def decode_outputs(
    ids: np.ndarray,
    prompt_length: int,
    *,
    tokenizer: TextTokenizer,
    cfg: LMConfig,
    audio: tuple[dict, Any] | None,
) -> tuple[str, np.ndarray | None]:
    """Official ``forward()`` output handling. ids ``[C+1, L]`` -> (text, wav ``[samples]`` or None).

    With ``audio`` = (audio tokenizer params, cfg): the speech span (:func:`speech_span`) is decoded in chunks of
    1500 frames; an empty span gives one second of silence (24000 zeros), as officially.
    """
    text = decode_text_channel(tokenizer, ids, prompt_length=prompt_length, group_size=cfg.group_size)
    if audio is None:
        return text, None
    codes = speech_span(ids[:, prompt_length:], special=tokenizer.special, cfg=cfg)
    if codes.shape[1] == 0:
        return text, np.zeros(EMPTY_AUDIO_SAMPLES, np.float32)
    params, acfg = audio
    return text, np.asarray(audio_tok.codes_to_wav(params, acfg, codes), np.float32)


# -- streaming spoken answers (docs/audio_streaming.md) -----------------------------------------------------------


def prompt_opens_speech(input_ids: np.ndarray, *, special: SpecialTokens, cfg: LMConfig) -> bool:
    """True when the prompt's last group is ``<|sostm|>`` (the answer starts as speech: plain TTS, spoken
    dialogue, in-context s2s). input_ids ``[C+1, L]``."""
    return int(input_ids[0, -cfg.group_size]) == special.sostm


def speech_chunks(
    groups: Iterable[np.ndarray], *, special: SpecialTokens, cfg: LMConfig, chunk_frames: int, opened: bool
) -> Iterator[tuple[np.ndarray, bool]]:
    """The speech span of an answer (:func:`speech_span`'s rule) cut into code chunks while groups arrive.

    groups: the generated groups in order, each ``[C+1, G]``. Yields ``(codes [C, n], last)``: every
    ``chunk_frames`` frames of the span as soon as they are known to belong to it, then the rest (possibly 0
    frames) with ``last=True``, once; a span of T frames is cut as ``[k] * (T // k) + [T % k]``. It stops reading
    ``groups`` once the span is final (closed by ``<|eostm|>``). A group is known to belong to the span when the
    next group exists (the official rule never includes the last generated group); frames whose channel-0 code is
    empty are dropped.

    ``opened`` (the prompt ended with ``<|sostm|>``, :func:`prompt_opens_speech`): frames are fed from the first
    group on. Otherwise frames before the first generated ``<|sostm|>`` are held back: dropped when one arrives,
    fed at the end when none does (the official span then starts at group 0). The span closes at the first
    ``<|eostm|>``. Concatenated, the chunks are exactly ``speech_span`` of the generated groups, except when the
    prompt opened speech and the model generates another ``<|sostm|>``: the official span restarts after it, but
    frames already streamed cannot be taken back, so they stay in the stream.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    empty = np.asarray(cfg.speech_empty_ids)[:, None]  # [C, 1]
    started = closed = False  # a generated <|sostm|> seen / the span closed by <|eostm|>
    held: list[np.ndarray] = []  # frames before the first generated <|sostm|> when the prompt did not open speech
    pending = np.zeros((cfg.audio_channels, 0), np.int64)  # frames of the span not yet yielded, [C, n]
    previous = None
    for group in groups:
        if previous is not None:
            text = int(previous[0, 0])
            if text == special.sostm and not started:
                started, held = True, []  # official: the span starts one group after the first <|sostm|>
            elif text == special.eostm:
                closed = True
            elif not closed:
                frames = previous[1:, previous[1] != empty[0, 0]]  # [C, G] -> [C, n]: empty channel-0 frames dropped
                if (frames >= empty).any():  # the official code asserts this (speech_span)
                    raise ValueError("the generated speech span holds an empty id outside channel 0; cannot decode it")
                if started or opened:
                    pending = np.concatenate([pending, frames], axis=1)
                else:
                    held.append(frames)
            if closed and (started or opened):
                break  # nothing later can change the span: flush now, without waiting for generation to end
        previous = group
        while pending.shape[1] >= chunk_frames:
            yield pending[:, :chunk_frames], False
            pending = pending[:, chunk_frames:]
    if not (started or opened):
        pending = np.concatenate([pending, *held], axis=1)  # no <|sostm|>: the official span starts at group 0
    while pending.shape[1] >= chunk_frames:
        yield pending[:, :chunk_frames], False
        pending = pending[:, chunk_frames:]
    yield pending, True  # the remainder, fewer than chunk_frames (possibly none): chunks are [k] * (T // k) + [T % k]


def stream_speech(
    chunks: Iterable[tuple[np.ndarray, bool]], audio: tuple[dict, Any], config: StreamingConfig, *, pad_to: int = 0
) -> Iterator[np.ndarray]:
    """Code chunks (as :func:`speech_chunks` yields them) -> waveform chunks ``[samples]`` float32 at 24 kHz.

    One stream through :func:`mimo_ref.audio.streaming.streaming_decode` with ``config``'s overlaps (and its
    ``pad_to``, which only picks the compiled shape); calls that return nothing yield nothing. An answer without
    any speech frame gives one second of silence, as the one-shot path (official ``forward()``).
    """
    params, acfg = audio
    state = init_state(1, acfg)
    fed = 0
    for codes, last in chunks:
        fed += codes.shape[1]
        if fed == 0:
            if last:
                yield np.zeros(EMPTY_AUDIO_SAMPLES, np.float32)
            continue
        wavs, state = streaming_decode(
            params, codes, [codes.shape[1]], state, cfg=acfg, config=config, last_chunk=last, pad_to=pad_to
        )
        if wavs[0] is not None and wavs[0].shape[0] > 0:
            yield wavs[0]


def check_messages(messages: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """A multi-turn message list: non-empty, each message a mapping with ``role`` (user | assistant) and
    ``content``. Raises :class:`mimo_ref.checks.InputError` naming the message (no bare KeyError)."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise InputError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise InputError("messages is empty: give at least one user turn")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
        if message.get("role") not in ("user", "assistant"):
            raise InputError(f"message {i}: role must be 'user' or 'assistant', got {message.get('role')!r}")
        if "content" not in message:
            raise InputError(f"message {i} ({message['role']}) has no 'content'")
    return messages


S2S_EXAMPLE_KEYS = ("input_audio", "output_transcription", "output_audio")


def check_examples(examples: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """In-context s2s examples: a list of mappings, each with every key of :data:`S2S_EXAMPLE_KEYS`."""
    if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence):
        raise InputError(f"examples must be a list of dicts with keys {', '.join(S2S_EXAMPLE_KEYS)}")
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping):
            raise InputError(f"example {i} must be a dict with keys {', '.join(S2S_EXAMPLE_KEYS)}")
        missing = [k for k in S2S_EXAMPLE_KEYS if k not in example]
        if missing:
            needs = ", ".join(S2S_EXAMPLE_KEYS)
            raise InputError(f"example {i} has no {', '.join(missing)}; each example needs {needs}")
    return examples


@dataclasses.dataclass(frozen=True, eq=False)
class MimoAudio:
    """Loaded MiMo-Audio LM + audio tokenizer, with one method per official task."""

    lm_params: dict
    lm_cfg: LMConfig
    tokenizer: TextTokenizer
    audio_params: dict
    audio_cfg: Any
    precision: Precision  # of the LM (the audio tokenizer's is recorded in audio_cfg)
    progress: Callable[[int, int], None] | None = None  # called (groups done, max groups) after every group
    mesh: Any = None  # a jax.sharding.Mesh when loaded with mesh=...: params split over it (mimo_ref/sharding.py)

    @property
    def special(self) -> SpecialTokens:
        return self.tokenizer.special

    @property
    def ctx(self) -> PromptContext:
        return prompts.prompt_context(self.tokenizer, self.lm_cfg)

    # -- inputs ---------------------------------------------------------------------------------------------------

    def encode_audio(self, audio: AudioInput, *, what: str = "audio") -> AudioCodes:
        """A file (any format libsndfile reads), a ``(wave, sample_rate)`` pair or codes -> LM codes ``[C, T]``.

        Official ``preprocess_input``: mono by averaging channels, resampled to 24 kHz, log-mel, encoded in
        6000-frame segments packed in one call, the first C codes kept, padded to a multiple of G by repeating
        the last frame. A pair's wave is ``[T]`` or ``[T, channels]`` (soundfile's layout;
        :func:`mimo_ref.checks.mono_wave`). ``what`` names the input in error messages ("voice", "example 0
        input_audio"); a file is named by its path, a too-short input by its own sample count, rate and duration.
        """
        if isinstance(audio, AudioCodes):
            return audio
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise InputError(f"{what} given as a tuple must be (wave, sample_rate), got {len(audio)} items")
            wave, sr = mono_wave(audio[0], audio[1], what=f"the {what} wave")
            name = f"the {what} wave"
        elif isinstance(audio, (str, os.PathLike)):
            header = file_length(audio)  # (samples, rate) from the file's header, without decoding the audio
            if header is not None:
                self.check_audio_length(*header, what=f"{what} file {os.fspath(audio)}")
            try:
                wave, sr = load_audio(audio)  # [T] float32 at the file's rate
            except (FileNotFoundError, AudioFileError) as exc:
                raise type(exc)(str(exc) if what == "audio" else f"{what}: {exc}") from exc
            name = f"{what} file {os.fspath(audio)}"
        else:
            raise TypeError(
                f"{what} must be a file path, a (wave, sample_rate) pair or AudioCodes, got {type(audio).__name__}"
            )
        acfg = self.audio_cfg
        check_long_enough(wave.shape[0], sr, what=name, nfft=acfg.nfft, tokenizer_rate=acfg.sampling_rate)
        self.check_audio_length(wave.shape[0], sr, what=name)
        wave = resample(wave, sr, acfg.sampling_rate)  # [T] -> [S] at the tokenizer's rate (24 kHz)
        codes = audio_tok.wav_to_codes(self.audio_params, self.audio_cfg, wave, self.lm_cfg.audio_channels)
        return AudioCodes(prompts.pad_codes_to_group(codes, self.lm_cfg.group_size))

    def check_audio_length(self, samples: int, sample_rate: int, *, what: str) -> None:
        """Refuse audio longer than the tokenizer's ``max_audio_seconds`` or too long for the LM context, before it
        is decoded or encoded (:func:`mimo_ref.audio_limits.check_audio_length`)."""
        check_audio_length(
            samples, sample_rate, what=what, cfg=self.audio_cfg,
            max_positions=self.lm_cfg.max_position_embeddings, group_size=self.lm_cfg.group_size,
        )  # fmt: skip

    def encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Encode every audio of a spoken multi-turn message list (user contents, assistant ``audio`` fields).

        Each message is a mapping with ``role`` and ``content``; a user turn's content is audio (a path, a
        ``(wave, sample_rate)`` pair or codes), so a string naming no file is an error that names the message.
        """
        out = []
        for i, message in enumerate(check_messages(messages)):
            message = dict(message)
            content = message["content"]
            if isinstance(content, Mapping):
                content = dict(content)
                if "audio" in content:
                    where = f"message {i} ({message['role']}) audio"
                    content["audio"] = self.encode_audio(content["audio"], what=where)
            elif message["role"] == "user":
                content = self.encode_audio(content, what=f"message {i} (user) audio")
            message["content"] = content
            out.append(message)
        return out

    # -- the generic runner ---------------------------------------------------------------------------------------

    def generation_options(
        self,
        prompt: Prompt,
        *,
        seed: int = 0,
        max_new_groups: int | None = None,
        min_new_groups: int = 0,
        samplers: tuple[sampling.SamplerConfig, sampling.SamplerConfig] | None = None,
    ) -> dict:
        """The keyword arguments of :func:`mimo_ref.generate.generate` for a prompt (shared by :meth:`run` and
        :meth:`run_stream`): the task's official samplers (or ``samplers``), its stop tokens, ``max_new_groups``
        defaulting to the room left in ``max_position_embeddings``, the key of ``seed``."""
        cfg = self.lm_cfg
        prompt_groups = prompt.input_ids.shape[1] // cfg.group_size
        room = cfg.max_position_embeddings - prompt_groups
        if room < 1:
            raise ValueError(
                f"the prompt has {prompt_groups} groups but the model has only {cfg.max_position_embeddings} "
                "positions; shorten the input (audio or text)"
            )
        max_new = room if max_new_groups is None else positive_int(max_new_groups, what="max_new_groups")
        text_sampler, speech_sampler = samplers or sampling.task_samplers(prompt.task)
        return dict(
            max_new_groups=max_new,
            min_new_groups=min_new_groups,
            stop_tokens=prompt.stop_tokens,
            text_sampler=text_sampler,
            speech_sampler=speech_sampler,
            key=jax.random.key(fold_seed(seed)),  # any integer seed, reduced mod 2**32 (mimo_ref.checks)
        )

    def progress_reporting(self, max_new_groups: int):
        """Context in which generation reports ``progress(groups done, max_new_groups)`` (if a callback is set)."""
        if self.progress is None:
            return contextlib.nullcontext()
        shown = [0]

        def listener(groups: int) -> None:
            if groups > shown[0]:  # one report per group (a sharded loop may call back once per device)
                shown[0] = groups
                self.progress(groups, max_new_groups)

        return generate.progress_listener(listener)

    def run(
        self,
        prompt: Prompt,
        *,
        seed: int = 0,
        max_new_groups: int | None = None,
        min_new_groups: int = 0,
        return_audio: bool = False,
        samplers: tuple[sampling.SamplerConfig, sampling.SamplerConfig] | None = None,
    ) -> Output:
        """Generate from a built prompt with its task's official samplers and stop tokens, then decode.

        ``max_new_groups`` defaults to what fits in ``max_position_embeddings`` after the prompt (the official
        default of 8192 new groups can only run that far). ``samplers`` overrides (global, local).
        """
        cfg = self.lm_cfg
        kwargs = self.generation_options(
            prompt, seed=seed, max_new_groups=max_new_groups, min_new_groups=min_new_groups, samplers=samplers
        )
        max_new = kwargs["max_new_groups"]
        # One decode path (the jitted while_loop) with or without a progress display: the loop reports each group.
        with self.progress_reporting(max_new):
            if self.mesh is not None:
                result = sharding.generate(
                    self.lm_params, cfg, self.special, prompt.input_ids, mesh=self.mesh, **kwargs
                )
            else:
                result = generate.generate(self.lm_params, cfg, self.special, prompt.input_ids, **kwargs)
        ids = result.sequence(0)
        audio = (self.audio_params, self.audio_cfg) if return_audio else None
        text, wav = decode_outputs(ids, prompt.input_ids.shape[1], tokenizer=self.tokenizer, cfg=cfg, audio=audio)
        return Output(text, wav, ids, prompt.input_ids.shape[1], prompt.task, prompt.templates, seed)

    def run_stream(
        self,
        prompt: Prompt,
        *,
        seed: int = 0,
        max_new_groups: int | None = None,
        min_new_groups: int = 0,
        samplers: tuple[sampling.SamplerConfig, sampling.SamplerConfig] | None = None,
        streaming: StreamingConfig | None = None,
        chunk_frames: int | None = None,
        on_result: Callable[[Output], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """:meth:`run` for spoken answers, as a generator of waveform chunks ``[samples]`` (float32, 24 kHz) that
        plays while generation runs (docs/audio_streaming.md).

        Generation runs group by group (:func:`mimo_ref.generate.generate_stream`, the same step function as the
        one-shot loop); the speech span is cut into chunks of ``chunk_frames`` code frames (default: the group
        size, so every speech group is fed as it appears; :func:`speech_chunks`) and decoded by the official
        streaming decode with ``streaming``'s overlaps (default: the official 250 / 40 frames; :func:`stream_speech`).
        The first audio comes once ``right_overlap`` + 1 frames of speech exist. ``on_result`` receives the
        :class:`Output` when the generator is exhausted; its ``wav`` is the concatenation of the chunks, which
        differs from :meth:`run`'s one-shot decode near chunk borders.
        """
        cfg = self.lm_cfg
        streaming = streaming or StreamingConfig()
        kwargs = self.generation_options(
            prompt, seed=seed, max_new_groups=max_new_groups, min_new_groups=min_new_groups, samplers=samplers
        )
        results: list[generate.GenerationResult] = []
        groups = generate.generate_stream(
            self.lm_params, cfg, self.special, prompt.input_ids, on_result=results.append, **kwargs
        )

        def rows() -> Iterator[np.ndarray]:  # [B=1, C+1, G] -> [C+1, G], reporting progress
            for i, group in enumerate(groups):
                if self.progress is not None:
                    self.progress(i + 1, kwargs["max_new_groups"])
                yield group[0]

        generated = rows()
        opened = prompt_opens_speech(prompt.input_ids, special=self.special, cfg=cfg)
        chunk_frames = chunk_frames or cfg.group_size
        chunks = speech_chunks(generated, special=self.special, cfg=cfg, chunk_frames=chunk_frames, opened=opened)
        pad_to = stream_frames_bound(streaming, chunk_frames)  # one compiled decoder shape for the whole answer
        wavs = []
        for wav in stream_speech(chunks, (self.audio_params, self.audio_cfg), streaming, pad_to=pad_to):
            wavs.append(wav)
            yield wav
        for _ in generated:  # the span closed early (<|eostm|>): let generation finish for the text and ids
            pass
        if on_result is not None:
            ids = results[0].sequence(0)
            text, _ = decode_outputs(ids, prompt.input_ids.shape[1], tokenizer=self.tokenizer, cfg=cfg, audio=None)
            wav = np.concatenate(wavs) if wavs else np.zeros(0, np.float32)
            on_result(Output(text, wav, ids, prompt.input_ids.shape[1], prompt.task, prompt.templates, seed))

    def speak(
        self,
        prompt: Prompt,
        *,
        seed: int,
        max_new_groups: int | None,
        stream: bool | StreamingConfig,
        on_result: Callable[[Output], None] | None,
    ) -> Output | Iterator[np.ndarray]:
        """A spoken answer: :meth:`run` (an :class:`Output`), or with ``stream`` (True for the official overlaps,
        or a :class:`StreamingConfig`) :meth:`run_stream` (a generator of waveform chunks; ``on_result`` gets the
        Output at the end)."""
        if not stream:
            if on_result is not None:
                raise ValueError("on_result is only called when streaming: pass stream=True as well")
            return self.run(prompt, seed=seed, max_new_groups=max_new_groups, return_audio=True)
        config = stream if isinstance(stream, StreamingConfig) else StreamingConfig()
        return self.run_stream(prompt, seed=seed, max_new_groups=max_new_groups, streaming=config, on_result=on_result)

    # -- official tasks -------------------------------------------------------------------------------------------

    def tts(
        self,
        text: str,
        *,
        instruct: str | None = None,
        voice: AudioInput | None = None,
        read_text_only: bool = True,
        template: str | int | None = None,
        seed: int = 0,
        max_new_groups: int | None = None,
        stream: bool | StreamingConfig = False,
        on_result: Callable[[Output], None] | None = None,
    ) -> Output | Iterator[np.ndarray]:
        """Text to speech (official ``tts_sft``); ``instruct`` is a style instruction, ``voice`` a voice prompt.

        ``stream``: True (official overlaps) or a :class:`StreamingConfig` returns a generator of waveform
        chunks instead (:meth:`run_stream`); ``on_result`` then receives the :class:`Output`.
        """
        voice_codes = None if voice is None else self.encode_audio(voice, what="voice")
        prompt = prompts.tts_prompt(
            self.ctx, text, instruct=instruct, read_text_only=read_text_only, prompt_speech=voice_codes,
            template=template, rng=None if template is not None else fold_seed(seed),
        )  # fmt: skip
        return self.speak(prompt, seed=seed, max_new_groups=max_new_groups, stream=stream, on_result=on_result)

    def asr(
        self, audio: AudioInput, *, template: str | int | None = None, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Speech recognition (official ``asr_sft``)."""
        prompt = prompts.asr_prompt(
            self.ctx, self.encode_audio(audio), template=template, rng=None if template is not None else fold_seed(seed)
        )
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def understand(
        self, audio: AudioInput, question: str, *, thinking: bool = False, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Audio understanding: a question about the audio (official ``audio_understanding_sft``)."""
        if isinstance(question, str) and not question.strip():
            raise InputError("the question is empty")
        prompt = prompts.audio_understanding_prompt(self.ctx, self.encode_audio(audio), question, thinking=thinking)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def dialogue(
        self,
        audio: AudioInput,
        *,
        system_prompt: str | None = None,
        voice: AudioInput | None = None,
        history: np.ndarray | None = None,
        seed: int = 0,
        max_new_groups=None,
        stream: bool | StreamingConfig = False,
        on_result: Callable[[Output], None] | None = None,
    ) -> Output | Iterator[np.ndarray]:
        """Spoken dialogue, speech in and speech out (official ``spoken_dialogue_sft``).

        ``stream``: True (official overlaps) or a :class:`StreamingConfig` returns a generator of waveform
        chunks instead (:meth:`run_stream`); ``on_result`` then receives the :class:`Output`.
        """
        prompt = prompts.spoken_dialogue_prompt(
            self.ctx,
            self.encode_audio(audio),
            system_prompt=system_prompt,
            prompt_speech=None if voice is None else self.encode_audio(voice, what="voice"),
            history=history,
        )
        return self.speak(prompt, seed=seed, max_new_groups=max_new_groups, stream=stream, on_result=on_result)

    def dialogue_multiturn(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system_prompt: str | None = None,
        voice: AudioInput | None = None,
        seed: int = 0,
        max_new_groups=None,
        stream: bool | StreamingConfig = False,
        on_result: Callable[[Output], None] | None = None,
    ) -> Output | Iterator[np.ndarray]:
        """Multi-turn spoken dialogue (official ``spoken_dialogue_sft_multiturn``).

        ``stream``: True (official overlaps) or a :class:`StreamingConfig` returns a generator of waveform
        chunks instead (:meth:`run_stream`); ``on_result`` then receives the :class:`Output`.
        """
        prompt = prompts.spoken_dialogue_multiturn_prompt(
            self.ctx,
            self.encode_messages(messages),
            system_prompt=system_prompt,
            prompt_speech=None if voice is None else self.encode_audio(voice, what="voice"),
        )
        return self.speak(prompt, seed=seed, max_new_groups=max_new_groups, stream=stream, on_result=on_result)

    def s2t(
        self, audio: AudioInput, *, thinking: bool = False, history=None, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Speech-to-text dialogue: a spoken question, a text answer (official ``speech2text_dialogue_sft``)."""
        prompt = prompts.s2t_dialogue_prompt(self.ctx, self.encode_audio(audio), thinking=thinking, history=history)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def s2t_multiturn(
        self, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Multi-turn speech-to-text dialogue (official ``speech2text_dialogue_sft_multiturn``)."""
        prompt = prompts.s2t_dialogue_multiturn_prompt(self.ctx, self.encode_messages(messages), thinking=thinking)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def chat(self, text: str, *, thinking: bool = False, history=None, seed: int = 0, max_new_groups=None) -> Output:
        """Text dialogue (official ``text_dialogue_sft``)."""
        if isinstance(text, str) and not text.strip():
            raise InputError("the chat message is empty")
        prompt = prompts.text_dialogue_prompt(self.ctx, text, thinking=thinking, history=history)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def chat_multiturn(
        self, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Multi-turn text dialogue (official ``text_dialogue_sft_multiturn``)."""
        prompt = prompts.text_dialogue_multiturn_prompt(self.ctx, check_messages(messages), thinking=thinking)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def s2s(
        self,
        instruction: str,
        examples: Sequence[Mapping[str, Any]],
        audio: AudioInput,
        *,
        seed: int = 0,
        max_new_groups=None,
        stream: bool | StreamingConfig = False,
        on_result: Callable[[Output], None] | None = None,
    ) -> Output | Iterator[np.ndarray]:
        """In-context speech-to-speech from examples (official ``in_context_learning_s2s``).

        ``stream``: True (official overlaps) or a :class:`StreamingConfig` returns a generator of waveform
        chunks instead (:meth:`run_stream`); ``on_result`` then receives the :class:`Output`.
        """
        encoded = [
            dict(ex)
            | {
                "input_audio": self.encode_audio(ex["input_audio"], what=f"example {i} input_audio"),
                "output_audio": self.encode_audio(ex["output_audio"], what=f"example {i} output_audio"),
            }
            for i, ex in enumerate(check_examples(examples))
        ]
        prompt = prompts.in_context_s2s_prompt(self.ctx, instruction, encoded, self.encode_audio(audio))
        return self.speak(prompt, seed=seed, max_new_groups=max_new_groups, stream=stream, on_result=on_result)


def load(
    model: str | os.PathLike = BUNDLED_LM,
    audio_tokenizer: str | os.PathLike | None = None,
    *,
    precision: str | Precision = "float32",
    audio_precision: str | Precision | None = None,
    progress: Callable[[int, int], None] | None = None,
    dtype: str | None = None,
    mesh=None,
) -> MimoAudio:
    """Load an LM checkpoint and an audio tokenizer (folders or HF repo ids). Defaults: the bundled tiny,
    random-weight checkpoints in ``weights/`` (their output is noise). ``audio_tokenizer`` may be left out only
    with the bundled LM: a real LM is never paired silently with the bundled random-weight tokenizer (pass
    ``BUNDLED_AUDIO_TOKENIZER`` explicitly to do that on purpose).

    ``precision``: a preset of :mod:`mimo_ref.precision` ("float32", "float64", "bfloat16", or "official" for
    what the official wrapper computes: bf16-rounded weights and tokenizer buffers, float32 math) or a
    ``Precision``; ``audio_precision`` defaults to it. ``dtype``: the older name of ``precision`` (a compute dtype
    name); give one of the two.

    ``mesh``: several devices (:func:`mimo_ref.sharding.make_mesh`: ``"data=2,model=4"``, a mapping or a
    ``jax.sharding.Mesh``): each device receives only its shards of the weights, read from the checkpoint's
    memory map by the rules of :mod:`mimo_ref.sharding`; generation runs over the mesh (docs/sharding.md).
    """
    if dtype is not None:
        if precision != "float32":
            raise ValueError("give `precision` or its older name `dtype`, not both")
        precision = dtype
    precision = resolve_precision(precision)
    audio_precision = precision if audio_precision is None else resolve_precision(audio_precision)
    mesh = None if mesh is None else sharding.make_mesh(mesh)  # before any loading: a bad mesh fails fast
    if audio_tokenizer is None:
        if Path(model).expanduser().resolve() != BUNDLED_LM:
            raise InputError(
                f"the LM {model} needs its audio tokenizer: pass audio_tokenizer= (the CLI's --audio-tokenizer), "
                "e.g. XiaomiMiMo/MiMo-Audio-Tokenizer; the bundled one has random weights and is used only with "
                "the bundled LM unless named explicitly"
            )
        audio_tokenizer = BUNDLED_AUDIO_TOKENIZER
    for path, what in ((model, "LM"), (audio_tokenizer, "audio tokenizer")):
        if Path(path) in (BUNDLED_LM, BUNDLED_AUDIO_TOKENIZER) and not Path(path).is_dir():
            raise FileNotFoundError(
                f"the bundled {what} checkpoint {path} is missing (it ships in the repository's weights/ folder); "
                "install from a clone with `pip install -e .` or pass a checkpoint folder / HF repo id"
            )
    folder = resolve_checkpoint(model, what="LM checkpoint")
    audio_tokenizer = resolve_checkpoint(audio_tokenizer, what="audio tokenizer checkpoint")  # both, before loading
    start = time.perf_counter()
    log.info("loading the LM from %s ...", folder)
    params, cfg, _ = lm.load_lm(folder, precision, place=None if mesh is None else sharding.lm_placer(folder, mesh))
    tokenizer = load_text_tokenizer(folder)
    log.info("loading the audio tokenizer from %s ...", audio_tokenizer)
    audio_folder = resolve_checkpoint(audio_tokenizer, what="audio tokenizer checkpoint")
    audio_place = None if mesh is None else sharding.audio_placer(audio_folder, mesh)
    audio_params, audio_cfg = audio_tok.load_audio_tokenizer(audio_folder, audio_precision, place=audio_place)
    log.info("loaded both checkpoints in %.1f s", time.perf_counter() - start)
    return MimoAudio(params, cfg, tokenizer, audio_params, audio_cfg, precision, progress, mesh)
