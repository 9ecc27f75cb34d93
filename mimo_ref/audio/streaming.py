"""Streaming decode of the MiMo-Audio-Tokenizer: codes that arrive in chunks -> waveform chunks (official
``MiMoAudioTokenizer.streaming_decode``, ``StreamingConfig``, ``StreamingCache``).

Several streams (S of them) are decoded together, one call per arrival of new code frames. A call, for each stream
i, with ``n_i`` new frames:

1. RVQ-decodes the new frames (float32) and prepends the stream's cached RVQ-decoded frames ("hidden states", the
   decoder's *input*, not any internal decoder state) from earlier calls: the stream's input is
   ``L_i = cached_i + n_i`` frames;
2. decodes all S inputs as one packed batch (the one-shot decoder and vocoder of ``decoder.py``/``vocoder.py``,
   with their batch behaviour: a shorter row is padded up to the longest, ``max_i L_i`` frames);
3. returns, per stream, the waveform of frames ``[processed_i, L_i - right_overlap)`` (``u`` samples a frame,
   ``u = hop * avg_pooler * stride_size`` = 960 for the real tokenizer), or nothing while
   ``L_i <= right_overlap``: the last ``right_overlap`` frames are held back until later frames give them right
   context;
4. keeps, after an emitting call with ``L_i > left_overlap``, only the last ``left_overlap`` input frames as the
   next call's left context, shifting ``processed_i`` to match; otherwise the whole input stays cached.

On the last call (``last_chunk``) every stream gets the rest, from ``processed_i`` to the end of the **padded**
batch output: a stream shorter than the longest input of that call also gets the decoder's output over the padding
frames (official quirk, reproduced). A non-emitting call sets ``processed_i`` to 0 (official; it matters only when
``left_overlap < right_overlap``, where the input can shrink back to ``<= right_overlap`` after an emission and
the next emission then starts again at the cache start; there ``processed_i`` can also go negative after the cache
is cut, and the slice then counts from the end of the padded output, as Python/torch slicing does).

Why the concatenation of a stream's chunks differs from the one-shot :func:`mimo_ref.audio.decode` of all its
codes: each call decodes only a window (left context <= ``left_overlap`` frames, right context
``right_overlap`` frames), with positions, GroupNorm statistics and vocoder attention restarted on that window,
so samples near each chunk border see different context than in one pass. See ``docs/audio_streaming.md``.

Official defaults: ``left_overlap = 250`` frames (10 s at 25 Hz), ``right_overlap = 40`` (1.6 s). The
official ``seg_point``/``process_seg_point``/``seg_point_left_overlap`` fields are never read by
``streaming_decode`` and are not mirrored.

The state (official ``StreamingCache``) is an explicit value here: :func:`init_state` makes a fresh one and every
call returns the next one; nothing is mutated (the official ``history_cache=StreamingCache()`` default is one
shared mutable object, a trap this API does not have).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.decoder import audio_decoder, check_codes
from mimo_ref.audio.rvq import rvq_decode
from mimo_ref.audio.vocoder import vocoder
from mimo_ref.bucketing import bucket_length
from mimo_ref.layers import Params

DEFAULT_LEFT_OVERLAP = 250  # official StreamingConfig.left_overlap = 10 * 25 code frames (10 s of left context)
DEFAULT_RIGHT_OVERLAP = 40  # official StreamingConfig.right_overlap = 40 code frames (1.6 s held back)
# Inputs are padded to power-of-two buckets from 64 frames: every call before the first emission with the default
# overlaps (inputs <= 40 + a chunk) shares one compiled program, and the steady state (250 cached + a few new
# frames) another (256, or 512 for chunks over 6 frames).
BUCKET_MINIMUM = 64


@dataclasses.dataclass(frozen=True)
class StreamingConfig:
    """The overlaps of the official ``StreamingConfig``, in code frames (25 Hz for the real tokenizer).

    left_overlap: cached frames kept as left context after an emitting call. right_overlap: trailing frames of
    each input held back (not emitted) until a later call or the last one.
    """

    left_overlap: int = DEFAULT_LEFT_OVERLAP
    right_overlap: int = DEFAULT_RIGHT_OVERLAP

    def __post_init__(self):
        for name in ("left_overlap", "right_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"streaming {name} must be a whole number of code frames >= 0, got {value!r}")
        if self.left_overlap == 0:
            # official: the cache is cut with `[-left_overlap:]`, which for 0 keeps everything and drives
            # processed_length negative; no meaningful stream comes out of it
            raise ValueError("streaming left_overlap must be >= 1 code frame (0 breaks the official bookkeeping)")


class StreamingState(NamedTuple):
    """What a stream carries from one call to the next (official ``StreamingCache``), one entry per stream.

    hidden: ``[S_i, D]`` float32, the RVQ-decoded input frames kept as left context (``S_i`` may be 0).
    processed: how many of those cached frames have already been returned as waveform.
    """

    hidden: tuple[np.ndarray, ...]
    processed: tuple[int, ...]


def init_state(streams: int, cfg: AudioTokenizerConfig) -> StreamingState:
    """A fresh state for ``streams`` streams (official ``StreamingCache()``: nothing cached, nothing processed)."""
    if streams < 1:
        raise ValueError(f"a streaming decode needs at least one stream, got {streams}")
    empty = np.zeros((0, cfg.d_model), np.float32)
    return StreamingState(hidden=(empty,) * streams, processed=(0,) * streams)


def samples_per_frame(cfg: AudioTokenizerConfig) -> int:
    """Samples a code frame stands for in the official slicing: ``avg_pooler * stride_size * hop_length`` (960).

    The official code multiplies by the *encoder's* ``stride_size``; the decoder makes
    ``hop * avg_pooler * decoder_stride_size`` samples a frame (:attr:`AudioTokenizerConfig.samples_per_code`).
    Both strides are 2 in every released config; the official formula is kept so other configs slice as
    officially.
    """
    return cfg.avg_pooler * cfg.stride_size * cfg.hop_length


rvq_decode_jit = jax.jit(rvq_decode)  # codes [C, Nb] (bucketed) -> [Nb, D] float32: one compile per bucket


def stream_frames_bound(config: StreamingConfig, chunk_frames: int) -> int:
    """The most frames any call decodes per stream when every call brings at most ``chunk_frames`` new ones:
    the cache never holds more than ``max(left_overlap, right_overlap)`` frames between calls (an emitting call
    keeps at most ``left_overlap``, a silent one at most ``right_overlap``). Pass it as ``pad_to``."""
    return max(config.left_overlap, config.right_overlap) + chunk_frames


@functools.partial(jax.jit, static_argnames=("cfg",))
def decode_hidden_padded(params: Params, hidden: jax.Array, lengths: jax.Array, *, cfg: AudioTokenizerConfig):
    """The tokenizer's decoder + vocoder on RVQ-decoded rows (official ``AudioDecoder.forward`` on a packed batch).

    params: the full tokenizer params. hidden ``[B, T, D]`` float32 (rows padded past ``lengths`` ``[B]``) ->
    (wav ``[B, 1, T * u]`` in the model dtype, mel lengths ``[B]``); the official padded batch output is the first
    ``max(mel lengths) * hop`` samples of every row.
    """
    mel, mel_lengths = audio_decoder(params["decoder"], hidden, lengths, cfg=cfg)  # [B, T, D] -> [B, 4T, M]
    wav = vocoder(params["decoder"]["vocoder"], mel, mel_lengths, cfg=cfg)  # [B, 4T, M] -> [B, 1, 4T * hop]
    return wav, mel_lengths


def _check_call(codes, chunk_lengths: Sequence[int], state: StreamingState, cfg: AudioTokenizerConfig):
    """Validate one call's arguments in the caller's terms; returns (codes ``[C, N]``, lengths as ints)."""
    lengths = [int(n) for n in chunk_lengths]
    if len(lengths) != len(state.hidden):
        raise ValueError(f"chunk_lengths has {len(lengths)} entries but the state holds {len(state.hidden)} streams")
    if any(n < 0 for n in lengths):
        raise ValueError(f"chunk lengths must be >= 0, got {lengths}")
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"codes must be [levels, frames], got shape {array.shape}")
    if array.shape[1] != sum(lengths):
        raise ValueError(
            f"codes hold {array.shape[1]} frames but chunk_lengths {lengths} add up to {sum(lengths)} "
            "(every stream's chunk, concatenated along time in stream order)"
        )
    if array.shape[1] > 0:
        array = check_codes(array, cfg)
    if all(h.shape[0] + n == 0 for h, n in zip(state.hidden, lengths, strict=True)):
        raise ValueError("nothing to decode: no stream has cached or new frames")
    return array, lengths


def streaming_decode(
    params: Params,
    codes,
    chunk_lengths: Sequence[int],
    state: StreamingState,
    *,
    cfg: AudioTokenizerConfig,
    config: StreamingConfig = StreamingConfig(),
    last_chunk: bool = False,
    pad_to: int = 0,
) -> tuple[list[np.ndarray | None], StreamingState]:
    """One official ``streaming_decode`` call.

    params: the full tokenizer params. codes ``[C, N]`` int: this call's chunk of every stream, concatenated along
    time in stream order (stream i contributes ``chunk_lengths[i]`` frames, possibly 0; ``N = sum``).
    state: :func:`init_state` for the first call, then what the previous call returned. ``config``: the overlaps.
    ``last_chunk``: True on the final call only (flushes what was held back). ``pad_to``: pad the decoded batch
    to exactly this many frames when every input fits (:func:`stream_frames_bound` gives a length that holds every
    call of a stream, so the whole stream runs one compiled program); otherwise (and by default) each call pads
    its input to a power-of-two bucket from 64 frames. Padding never changes the result.

    Returns ``(wavs, new_state)``: ``wavs[i]`` is stream i's new waveform ``[samples]`` float32 (official
    ``wav.float()``), or None when the call returned nothing for it. Sample counts are multiples of
    :func:`samples_per_frame`.
    """
    array, lengths = _check_call(codes, chunk_lengths, state, cfg)
    n = array.shape[1]
    codes_padded = np.zeros((array.shape[0], bucket_length(n, minimum=BUCKET_MINIMUM, step=512)), np.int32)  # [C, Nb]
    codes_padded[:, :n] = array  # id 0 exists in every codebook; the padding's vectors are dropped below
    new = np.asarray(rvq_decode_jit(params["encoder"]["quantizer"]["vq"], jnp.asarray(codes_padded)))[:n]  # [N, D]
    starts = np.cumsum([0] + lengths)  # stream i's new frames are new[starts[i] : starts[i + 1]]
    inputs = [
        np.concatenate([cached, new[starts[i] : starts[i + 1]]], axis=0)  # [S_i, D] + [n_i, D] -> [L_i, D]
        for i, cached in enumerate(state.hidden)
    ]
    input_lengths = [x.shape[0] for x in inputs]

    u = samples_per_frame(cfg)
    if not last_chunk and all(length <= config.right_overlap for length in input_lengths):
        # every stream returns None: the official call decodes the batch and discards it; skip that work
        return [None] * len(inputs), StreamingState(hidden=tuple(inputs), processed=(0,) * len(inputs))
    if pad_to >= max(input_lengths):
        bucket = pad_to  # the caller's one shape for the whole stream
    else:
        bucket = bucket_length(max(input_lengths), minimum=BUCKET_MINIMUM, step=512)  # few compiled shapes
    padded = np.zeros((len(inputs), bucket, cfg.d_model), np.float32)  # [B, Tb, D]
    for i, x in enumerate(inputs):
        padded[i, : x.shape[0]] = x
    wav, mel_lengths = decode_hidden_padded(params, jnp.asarray(padded), jnp.asarray(input_lengths, jnp.int32), cfg=cfg)
    batch_samples = int(np.max(np.asarray(mel_lengths))) * cfg.hop_length  # official output: padded to the longest
    wav = np.asarray(wav)[:, 0, :batch_samples].astype(np.float32)  # [B, 1, Tb * u] -> [B, batch_samples]

    wavs: list[np.ndarray | None] = []
    hidden, processed = [], []
    for i, length in enumerate(input_lengths):
        start = state.processed[i]
        cached = inputs[i]
        if last_chunk:
            wavs.append(wav[i, start * u :])  # to the end of the padded batch output (official quirk)
            new_processed = length
        elif length <= config.right_overlap:
            wavs.append(None)
            new_processed = 0  # official: reset even if earlier calls emitted
        else:
            end = length - config.right_overlap
            wavs.append(wav[i, start * u : end * u])
            new_processed = end
            if length > config.left_overlap:
                cached = cached[length - config.left_overlap :]  # keep the last left_overlap frames
                new_processed -= length - config.left_overlap
        hidden.append(cached)
        processed.append(new_processed)
    return wavs, StreamingState(hidden=tuple(hidden), processed=tuple(processed))
