"""How long an audio input may be, checked before it is decoded, resampled or encoded.

Two limits, both computed from the input's length alone (a file's header gives it without decoding the audio):

- The tokenizer's ``max_audio_seconds`` (config.json, official default 1800). The official code never enforces
  it (it only sizes RoPE tables); this port refuses longer inputs so a user finds out in milliseconds, not after
  the whole file was encoded.
- The LM context: an audio input becomes ``ceil(code_frames / G)`` speech groups plus at least two delimiter
  groups (``<|sosp|>``/``<|eosp|>``, or ``<|sostm|>``/``<|eostm|>`` for an assistant turn), and at least one group
  must remain to generate, so an input with ``groups + 2 + 1 > max_position_embeddings`` can never fit, whatever
  the rest of the prompt. Code frames are counted exactly as :func:`mimo_ref.audio.wav_to_codes` makes them
  (6000-frame segments, each ``cfg.code_length``). The rest of the prompt (template text, other inputs, history)
  is checked once the prompt is built (:meth:`mimo_ref.pipeline.MimoAudio.generation_options`).

Messages give the limit and the input's duration in seconds.
"""

from __future__ import annotations

import math
import os

import soundfile as sf

from mimo_ref.arith import ceil_div
from mimo_ref.audio import waveform
from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.mel import mel_frames
from mimo_ref.checks import InputError

DELIMITER_GROUPS = 2  # <|sosp|> + <|eosp|> (or <|sostm|> + <|eostm|>) around every audio input of a prompt


def file_length(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(samples, sample_rate)`` from an audio file's header, without decoding it; None when the header does not
    say (unreadable file, unknown length): the loader then reports the problem or the decoded length is checked."""
    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        return None
    return int(info.frames), int(info.samplerate)


def code_frames(samples: int, sample_rate: int, cfg: AudioTokenizerConfig) -> int:
    """Code frames :func:`mimo_ref.audio.wav_to_codes` makes of ``samples`` at ``sample_rate`` (before the LM's
    padding to a multiple of G): resampled length ``ceil(sr_tok * samples / sample_rate)``, its mel frames, cut
    into 6000-frame segments, each ``cfg.code_length``."""
    resampled = ceil_div(cfg.sampling_rate * samples, sample_rate)  # resample() output length, exactly
    segments = waveform.segment_lengths(mel_frames(resampled, cfg), waveform.SEGMENT_FRAMES)
    return sum(cfg.code_length(n) for n in segments)


def max_fitting_seconds(cfg: AudioTokenizerConfig, max_groups: int, group_size: int) -> float:
    """Longest audio (seconds at the tokenizer's rate) whose speech groups are at most ``max_groups``."""
    low, high = 0, max_groups * group_size * cfg.samples_per_code + cfg.nfft  # samples; high is too long
    while high - low > 1:
        mid = (low + high) // 2
        groups = math.ceil(code_frames(mid, cfg.sampling_rate, cfg) / group_size)
        low, high = (mid, high) if groups <= max_groups else (low, mid)
    return low / cfg.sampling_rate


def check_audio_length(
    samples: int,
    sample_rate: int,
    *,
    what: str,
    cfg: AudioTokenizerConfig,
    max_positions: int,
    group_size: int,
) -> None:
    """Raise :class:`InputError` when ``samples`` at ``sample_rate`` is longer than ``cfg.max_audio_seconds`` or
    cannot fit an LM of ``max_positions`` groups (``max_position_embeddings``) with its delimiters and one
    generated group. ``what`` names the input ("audio file speech.wav", "the voice wave")."""
    seconds = samples / sample_rate
    if seconds > cfg.max_audio_seconds:
        raise InputError(
            f"{what} is {seconds:.1f} s long; the audio tokenizer takes at most {cfg.max_audio_seconds:g} s "
            "(`max_audio_seconds` in its config.json): cut the audio into shorter parts"
        )
    groups = math.ceil(code_frames(samples, sample_rate, cfg) / group_size)
    room = max_positions - DELIMITER_GROUPS - 1  # speech groups that can fit with the delimiters + 1 to generate
    if groups > room:
        raise InputError(
            f"{what} is {seconds:.1f} s long: its {groups} speech groups, with {DELIMITER_GROUPS} delimiter groups "
            f"and one to generate, exceed the model's {max_positions} positions (`max_position_embeddings`); at "
            f"most {max_fitting_seconds(cfg, room, group_size):.1f} s of audio fit"
        )
