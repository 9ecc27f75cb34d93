"""Every MiMo-Audio task end to end (official ``MimoAudio`` wrapper, ``src/mimo_audio/mimo_audio.py``).

A task is: audio inputs -> codes (:func:`MimoAudio.encode_audio`), a prompt (:mod:`mimo_ref.prompts`), one
jitted generation (:func:`mimo_ref.generate.generate`) with the task's official samplers and stop tokens, then
the official output handling (:func:`decode_outputs`): the text channel decoded, and for spoken answers the speech
span between ``<|sostm|>`` and ``<|eostm|>`` decoded to a 24 kHz waveform in chunks of 1500 code frames.

:class:`MimoAudio` holds the loaded (immutable) params; each task method is a function of its arguments and
``seed``, so the same call gives the same result.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mimo_ref import audio as audio_tok
from mimo_ref import generate, lm, prompts, sampling
from mimo_ref.audio_io import load_audio_24k, resample
from mimo_ref.checkpoint import resolve_checkpoint
from mimo_ref.config import LMConfig, SpecialTokens
from mimo_ref.prompts import AudioCodes, Prompt, PromptContext
from mimo_ref.text import TextTokenizer, decode_text_channel, load_text_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_LM = REPO_ROOT / "weights" / "mimo_audio_tiny"
BUNDLED_AUDIO_TOKENIZER = REPO_ROOT / "weights" / "mimo_audio_tokenizer_tiny"
SAMPLE_RATE = 24000
DECODE_CHUNK_FRAMES = 1500  # official forward(): codes are decoded 1500 frames at a time

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
        return text, np.zeros(SAMPLE_RATE, np.float32)
    params, acfg = audio
    return text, np.asarray(audio_tok.codes_to_wav(params, acfg, codes), np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class MimoAudio:
    """Loaded MiMo-Audio LM + audio tokenizer, with one method per official task."""

    lm_params: dict
    lm_cfg: LMConfig
    tokenizer: TextTokenizer
    audio_params: dict
    audio_cfg: Any
    dtype: str
    progress: Callable[[int, int], None] | None = None  # called (groups done, max groups) by the streaming path

    @property
    def special(self) -> SpecialTokens:
        return self.tokenizer.special

    @property
    def ctx(self) -> PromptContext:
        return prompts.prompt_context(self.tokenizer, self.lm_cfg)

    # -- inputs ---------------------------------------------------------------------------------------------------

    def encode_audio(self, audio: AudioInput) -> AudioCodes:
        """A file (any format libsndfile reads), a ``(wave, sample_rate)`` pair or codes -> LM codes ``[C, T]``.

        Official ``preprocess_input``: mono by averaging channels, resampled to 24 kHz, log-mel, encoded in
        6000-frame segments packed in one call, the first C codes kept, padded to a multiple of G by repeating
        the last frame.
        """
        if isinstance(audio, AudioCodes):
            return audio
        if isinstance(audio, tuple):
            wave, sr = audio
            wave = np.asarray(wave, np.float32)
            if wave.ndim == 2:
                wave = wave.mean(axis=1)
            wave = resample(wave, int(sr), SAMPLE_RATE) if int(sr) != SAMPLE_RATE else wave
        elif isinstance(audio, (str, os.PathLike)):
            wave, _ = load_audio_24k(audio)
        else:
            raise TypeError(f"audio must be a file path, a (wave, sample_rate) pair or AudioCodes, got {type(audio)}")
        codes = audio_tok.wav_to_codes(self.audio_params, self.audio_cfg, wave, self.lm_cfg.audio_channels)
        return AudioCodes(prompts.pad_codes_to_group(codes, self.lm_cfg.group_size))

    def encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Encode every audio of a multi-turn message list (user contents, assistant ``audio`` fields)."""
        out = []
        for message in messages:
            message = dict(message)
            content = message.get("content")
            if isinstance(content, Mapping):
                content = dict(content)
                if "audio" in content:
                    content["audio"] = self.encode_audio(content["audio"])
            elif message.get("role") == "user" and not isinstance(content, str):
                content = self.encode_audio(content)
            elif message.get("role") == "user" and isinstance(content, str) and os.path.isfile(content):
                content = self.encode_audio(content)
            message["content"] = content
            out.append(message)
        return out

    # -- the generic runner ---------------------------------------------------------------------------------------

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
        prompt_groups = prompt.input_ids.shape[1] // cfg.group_size
        room = cfg.max_position_embeddings - prompt_groups
        if room < 1:
            raise ValueError(
                f"the prompt has {prompt_groups} groups but the model has only {cfg.max_position_embeddings} "
                "positions; shorten the input (audio or text)"
            )
        max_new = room if max_new_groups is None else int(max_new_groups)
        text_sampler, speech_sampler = samplers or sampling.task_samplers(prompt.task)
        kwargs = dict(
            max_new_groups=max_new,
            min_new_groups=min_new_groups,
            stop_tokens=prompt.stop_tokens,
            text_sampler=text_sampler,
            speech_sampler=speech_sampler,
            key=jax.random.key(seed),
        )
        if self.progress is None:
            result = generate.generate(self.lm_params, cfg, self.special, prompt.input_ids, **kwargs)
        else:
            results: list[generate.GenerationResult] = []
            for i, _ in enumerate(
                generate.generate_stream(
                    self.lm_params, cfg, self.special, prompt.input_ids, on_result=results.append, **kwargs
                )
            ):
                self.progress(i + 1, max_new)
            result = results[0]
        ids = result.sequence(0)
        audio = (self.audio_params, self.audio_cfg) if return_audio else None
        text, wav = decode_outputs(ids, prompt.input_ids.shape[1], tokenizer=self.tokenizer, cfg=cfg, audio=audio)
        return Output(text, wav, ids, prompt.input_ids.shape[1], prompt.task, prompt.templates, seed)

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
    ) -> Output:
        """Text to speech (official ``tts_sft``); ``instruct`` is a style instruction, ``voice`` a voice prompt."""
        voice_codes = None if voice is None else self.encode_audio(voice)
        prompt = prompts.tts_prompt(
            self.ctx, text, instruct=instruct, read_text_only=read_text_only, prompt_speech=voice_codes,
            template=template, rng=None if template is not None else seed,
        )  # fmt: skip
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups, return_audio=True)

    def asr(
        self, audio: AudioInput, *, template: str | int | None = None, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Speech recognition (official ``asr_sft``)."""
        prompt = prompts.asr_prompt(
            self.ctx, self.encode_audio(audio), template=template, rng=None if template is not None else seed
        )
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def understand(
        self, audio: AudioInput, question: str, *, thinking: bool = False, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Audio understanding: a question about the audio (official ``audio_understanding_sft``)."""
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
    ) -> Output:
        """Spoken dialogue, speech in and speech out (official ``spoken_dialogue_sft``)."""
        prompt = prompts.spoken_dialogue_prompt(
            self.ctx,
            self.encode_audio(audio),
            system_prompt=system_prompt,
            prompt_speech=None if voice is None else self.encode_audio(voice),
            history=history,
        )
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups, return_audio=True)

    def dialogue_multiturn(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system_prompt: str | None = None,
        voice: AudioInput | None = None,
        seed: int = 0,
        max_new_groups=None,
    ) -> Output:
        """Multi-turn spoken dialogue (official ``spoken_dialogue_sft_multiturn``)."""
        prompt = prompts.spoken_dialogue_multiturn_prompt(
            self.ctx,
            self.encode_messages(messages),
            system_prompt=system_prompt,
            prompt_speech=None if voice is None else self.encode_audio(voice),
        )
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups, return_audio=True)

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
        prompt = prompts.text_dialogue_prompt(self.ctx, text, thinking=thinking, history=history)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def chat_multiturn(
        self, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False, seed: int = 0, max_new_groups=None
    ) -> Output:
        """Multi-turn text dialogue (official ``text_dialogue_sft_multiturn``)."""
        prompt = prompts.text_dialogue_multiturn_prompt(self.ctx, messages, thinking=thinking)
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups)

    def s2s(
        self,
        instruction: str,
        examples: Sequence[Mapping[str, Any]],
        audio: AudioInput,
        *,
        seed: int = 0,
        max_new_groups=None,
    ) -> Output:
        """In-context speech-to-speech from examples (official ``in_context_learning_s2s``)."""
        encoded = [
            dict(ex)
            | {
                "input_audio": self.encode_audio(ex["input_audio"]),
                "output_audio": self.encode_audio(ex["output_audio"]),
            }
            for ex in examples
        ]
        prompt = prompts.in_context_s2s_prompt(self.ctx, instruction, encoded, self.encode_audio(audio))
        return self.run(prompt, seed=seed, max_new_groups=max_new_groups, return_audio=True)


def load(
    model: str | os.PathLike = BUNDLED_LM,
    audio_tokenizer: str | os.PathLike = BUNDLED_AUDIO_TOKENIZER,
    *,
    dtype: str = "float32",
    audio_dtype: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MimoAudio:
    """Load an LM checkpoint and an audio tokenizer (folders or HF repo ids). Defaults: the bundled tiny,
    random-weight checkpoints in ``weights/`` (their output is noise). ``audio_dtype`` defaults to ``dtype``."""
    for path, what in ((model, "LM"), (audio_tokenizer, "audio tokenizer")):
        if Path(path) in (BUNDLED_LM, BUNDLED_AUDIO_TOKENIZER) and not Path(path).is_dir():
            raise FileNotFoundError(
                f"the bundled {what} checkpoint {path} is missing (it ships in the repository's weights/ folder); "
                "install from a clone with `pip install -e .` or pass a checkpoint folder / HF repo id"
            )
    folder = resolve_checkpoint(model, what="LM checkpoint")
    params, cfg, _ = lm.load_lm(folder, dtype)
    tokenizer = load_text_tokenizer(folder)
    audio_params, audio_cfg = audio_tok.load_audio_tokenizer(audio_tokenizer, audio_dtype or dtype)
    return MimoAudio(params, cfg, tokenizer, audio_params, audio_cfg, dtype, progress)
