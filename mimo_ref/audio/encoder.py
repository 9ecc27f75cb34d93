"""Encoder of the MiMo-Audio-Tokenizer: log-mel segments -> features -> RVQ codes (official ``AudioEncoder``).

Stages and rates for the real tokenizer (24 kHz, hop 240):

1. conv stem: conv1 (k3, pad 1) + GELU at 100 Hz, conv2 (k3, stride 2, pad 1) + GELU -> 50 Hz.
2. transformer: L pre-LayerNorm layers, RoPE positions restarting at 0 in every segment, attention within each
   segment (full or windowed, optionally causal). The output of layer ``encoder_skip_layer_id`` (1-based) is
   added to the last layer's output, then the final LayerNorm.
3. down-sampling: conv (kernel = stride = avg_pooler, no bias) + GELU + LayerNorm -> 25 Hz.
4. RVQ (float32): codes ``[Q, T']`` and their decoded sum (``quantized``).

Segments are several mel sequences encoded in one call (the official pipeline cuts long audio into 6000-frame
segments and packs them). The official code pads them to a batch ``[B, max_len, ...]`` (B segments) in two places, and
that padding leaks into the results of shorter segments; this port reproduces both leaks:

- the conv stem runs on the zero-padded batch, so conv1's output just past a shorter segment's end is
  ``gelu(bias + ...)``, not the zero padding conv2 would see if the segment were alone: a segment with an odd
  number of mel frames gets a different last conv2 frame when a longer segment is present, and through
  attention every frame of that segment (and possibly any of its codes) shifts;
- before down-sampling, the frames of each segment past its length are filled with **copies of its own last
  frame** (the official unpacking index repeats it) and, when the longest length is not a multiple of
  avg_pooler, zero frames are appended. So an odd-length shorter segment pools its last frame with itself
  instead of with a zero frame.

Here the batch is additionally padded to a length bucket (so lengths reuse compiled code); frames past the
official batch length are masked to what the official code would have seen (zeros).

Both leaks depend on the other segments of a pack only through the pack's longest length (``pack_length``, the
official batch length): every other step works on each segment alone (per-row convolutions, attention within
the segment, per-frame norms and RVQ). So the segments of a pack can be encoded a few at a time, each call told
the pack's length, and give exactly what the one packed call gives (:func:`encode` with ``segments_per_call``;
``mimo_ref/audio/waveform.py::wav_to_codes`` uses it to bound memory).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref.arith import ceil_div, round_up
from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.rvq import rvq_decode, rvq_encode
from mimo_ref.audio.transformer import LAYER_NORM_EPS, segment_mask, transformer
from mimo_ref.bucketing import bucket_length
from mimo_ref.layers import Params, conv1d, gelu, layer_norm
from mimo_ref.precision import model_dtype
from mimo_ref.tap import tap


def conv_stem(params: Params, mels: jax.Array, pack_length: jax.Array, *, cfg: AudioTokenizerConfig) -> jax.Array:
    """conv1 + GELU, conv2 (stride s) + GELU over the padded segment batch.

    mels ``[B, T, M]`` (zero past each length), pack_length ``[]`` mel frames of the official batch (the longest
    segment of the pack, ``<= T``) -> ``[B, T2, D]``, ``T2 = cfg.encoder_output_length(T)``.
    """
    x = mels.transpose(0, 2, 1)  # [B, T, M] -> [B, M, T]
    x = gelu(conv1d(params["conv1"], x, padding=1))  # [B, M, T] -> [B, D, T1], T1 = T + 3 - k
    # The official batch ends at the longest segment: conv2 sees zero padding there, not our bucket's frames.
    official_t1 = pack_length + 3 - cfg.kernel_size
    x = jnp.where(jnp.arange(x.shape[-1])[None, None, :] < official_t1, x, 0.0)
    x = gelu(conv1d(params["conv2"], x, stride=cfg.stride_size, padding=1))  # [B, D, T1] -> [B, D, T2]
    return x.transpose(0, 2, 1)  # [B, D, T2] -> [B, T2, D]


def down_sample(params: Params, x: jax.Array, lengths: jax.Array, pack_length: jax.Array, *, cfg: AudioTokenizerConfig):
    """Official down-sampling: x ``[B, T2, D]``, lengths ``[B]``, pack_length ``[]`` (the pack's longest conv2
    length) -> (``[B, T3, D]``, lengths ``[B]``).

    Frames past a segment's length become copies of its last frame; frames past the pack's longest length are
    zero (the official zero frame appended to reach a multiple of avg_pooler). Then conv (kernel = stride =
    avg_pooler, no bias) + GELU + LayerNorm. Output lengths ``ceil(lengths / avg_pooler)``.
    """
    p = cfg.avg_pooler
    t = round_up(x.shape[1], p)
    x = jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0)))  # [B, T2, D] -> [B, T2', D], T2' a multiple of p
    pos = jnp.arange(t)[None, :]  # [1, T2']
    source = jnp.clip(jnp.minimum(pos, lengths[:, None] - 1), 0, t - 1)  # [B, T2']: own last frame past the end
    x = jnp.take_along_axis(x, source[:, :, None], axis=1)  # [B, T2', D] -> [B, T2', D]
    x = jnp.where((pos < pack_length)[:, :, None], x, 0.0)
    x = gelu(conv1d(params["down_sample_layer"][0], x.transpose(0, 2, 1), stride=p))  # [B, D, T2'] -> [B, D, T3]
    x = layer_norm(params["down_sample_norm"], x.transpose(0, 2, 1), eps=LAYER_NORM_EPS)  # -> [B, T3, D]
    return x, ceil_div(lengths, p)


def encoder_features(
    params: Params,
    mels: jax.Array,
    lengths: jax.Array,
    pack_length: jax.Array | None = None,
    *,
    cfg: AudioTokenizerConfig,
):
    """Official ``AudioEncoder.get_features`` on a padded segment batch.

    params: the checkpoint's ``encoder`` node. mels ``[B, T, M]`` (any float dtype; cast to the params' dtype
    as the official ``input_features.to(conv1.weight)``), lengths ``[B]`` mel frames (>= 1). pack_length ``[]``:
    mel frames of the longest segment of the official packed call these rows belong to (``<= T``); None means
    the rows are the whole pack (``max(lengths)``).
    Returns features ``[B, T3, D]`` (before quantization, in the params' dtype) and their lengths ``[B]``.
    """
    pack_length = jnp.max(lengths) if pack_length is None else jnp.asarray(pack_length, lengths.dtype)
    dtype = model_dtype(cfg.compute_dtype, params["conv1"]["weight"])
    pos = jnp.arange(mels.shape[1])[None, :, None]  # [1, T, 1]
    mels = jnp.where(pos < lengths[:, None, None], mels.astype(dtype), 0.0)  # official zero padding of the batch
    x = tap("audio.encoder.conv_stem", conv_stem(params, mels, pack_length, cfg=cfg))  # [B, T, M] -> [B, T2, D]
    lengths2 = cfg.encoder_output_length(lengths)  # [B] frames after the conv stem (official get_output_length)
    pack_length2 = (pack_length + 3 - cfg.kernel_size + 2 - cfg.kernel_size) // cfg.stride_size + 1
    b, t2, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t2)[None, :], (b, t2))  # RoPE restarts at 0 in every segment
    mask = segment_mask(lengths2, t2, causal=cfg.encoder_causal, window=cfg.encoder_window)  # [B, T2, T2]
    x, skip = transformer(
        params["layers"],
        x,
        positions,
        mask,
        heads=cfg.encoder_heads,
        theta=cfg.rope_theta,
        bf16_inv_freq=cfg.bf16_buffers,
        keep_layer=cfg.encoder_skip_layer_id,
        name="audio.encoder",
    )
    if skip is not None:
        x = x + skip  # official: hidden_states += output of layer encoder_skip_layer_id
    x = tap("audio.encoder.final_norm", layer_norm(params["layer_norm"], x, eps=LAYER_NORM_EPS))
    x, lengths3 = down_sample(params, x, lengths2, pack_length2, cfg=cfg)  # [B, T2, D] -> [B, T3, D]
    return tap("audio.encoder.features", x), lengths3  # the pre-quantization features


@functools.partial(jax.jit, static_argnames=("cfg", "n_q"))
def encode_padded(
    params: Params,
    mels: jax.Array,
    lengths: jax.Array,
    pack_length: jax.Array | None = None,
    *,
    cfg: AudioTokenizerConfig,
    n_q: int,
):
    """Features, codes and quantized vectors of a padded segment batch (jitted).

    params: the checkpoint's ``encoder`` node. mels ``[B, T, M]``, lengths ``[B]``, pack_length ``[]`` or None
    (see :func:`encoder_features`) -> features ``[B, T3, D]``, lengths ``[B]``, codes ``[n_q, B, T3]`` int32,
    quantized ``[B, T3, D]`` (RVQ decode in float32, cast to the params' dtype as the official
    ``hidden_states.to(dtype)``). Frames past each length are padding.
    """
    features, out_lengths = encoder_features(params, mels, lengths, pack_length, cfg=cfg)
    codes = rvq_encode(params["quantizer"]["vq"], features, n_q=n_q)  # [B, T3, D] -> [Q, B, T3]
    quantized = rvq_decode(params["quantizer"]["vq"], codes).astype(features.dtype)  # [Q, B, T3] -> [B, T3, D]
    tap("audio.rvq.quantized", quantized)
    return features, out_lengths, codes, quantized


@functools.partial(jax.jit, static_argnames=("cfg", "n_q"))
def encode_codes_padded(
    params: Params,
    mels: jax.Array,
    lengths: jax.Array,
    pack_length: jax.Array,
    *,
    cfg: AudioTokenizerConfig,
    n_q: int,
):
    """Codes only (official ``encode(..., return_codes_only=True)``) of a padded segment batch (jitted).

    params: the checkpoint's ``encoder`` node. mels ``[B, T, M]``, lengths ``[B]``, pack_length ``[]`` (see
    :func:`encoder_features`) -> codes ``[n_q, B, T3]`` int32 and their lengths ``[B]``; the same codes as
    :func:`encode_padded` without the features and quantized vectors leaving the call.
    """
    features, out_lengths = encoder_features(params, mels, lengths, pack_length, cfg=cfg)
    return rvq_encode(params["quantizer"]["vq"], features, n_q=n_q), out_lengths  # [B, T3, D] -> [n_q, B, T3]


def padded_rows(segments: Sequence[np.ndarray], rows: int, bucket: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Segments ``[L_i, M]`` -> a batch ``[rows, bucket, M]`` zero past each length, and lengths ``[rows]`` int32.

    ``rows >= len(segments)``: the extra rows are one zero frame each (results discarded), so a call with fewer
    segments keeps the compiled batch shape.
    """
    batch = np.zeros((rows, bucket, segments[0].shape[1]), dtype)  # [B, Tb, M]
    lengths = np.ones(rows, np.int32)
    for row, segment in enumerate(segments):
        batch[row, : segment.shape[0]] = segment
        lengths[row] = segment.shape[0]
    return batch, lengths


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """What :func:`encode` returns, packed like the official outputs (segments concatenated along time).

    codes ``[Q, T']`` int64; lengths ``[B]`` code frames per segment (``sum = T'``); features ``[T', D]``
    (encoder output before quantization); quantized ``[T', D]`` (RVQ decode of ``codes``). numpy arrays.
    """

    codes: np.ndarray
    lengths: np.ndarray
    features: np.ndarray
    quantized: np.ndarray


def encode(
    params: Params,
    mels,
    lengths: Sequence[int],
    *,
    cfg: AudioTokenizerConfig,
    n_q: int | None = None,
    segments_per_call: int | None = None,
) -> EncodeResult:
    """Encode packed log-mel segments as one official ``AudioEncoder.encode`` call.

    params: the full tokenizer params (``params["encoder"]`` is read). mels ``[T, M]``: segments concatenated
    along frames; lengths: mel frames of each segment (positive, summing to T). n_q: quantizer levels to
    compute (default all Q). segments_per_call: run at most this many segments per jitted call (each call told
    the pack's longest length, so the results equal the single packed call's; memory then holds that many
    segments, not all); None runs them all in one call. Returns an :class:`EncodeResult` (code frames at 25 Hz
    for the real tokenizer).
    """
    n_q = cfg.num_quantizers if n_q is None else n_q
    if not 1 <= n_q <= cfg.num_quantizers:
        raise ValueError(f"n_q must be in 1..{cfg.num_quantizers}, got {n_q}")
    mels = np.asarray(mels)
    if mels.ndim != 2 or mels.shape[1] != cfg.n_mels:
        raise ValueError(f"mels must be [frames, {cfg.n_mels}], got shape {mels.shape}")
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1 or sum(lengths) != mels.shape[0]:
        raise ValueError(f"segment lengths {lengths} must be positive and sum to the {mels.shape[0]} mel frames")
    if not np.all(np.isfinite(mels)):
        raise ValueError("mels contain NaN or infinite values")

    per_call = len(lengths) if segments_per_call is None else int(segments_per_call)
    if per_call < 1:
        raise ValueError(f"segments_per_call must be >= 1, got {segments_per_call}")
    per_call = min(per_call, len(lengths))

    # Batch layout [B, bucket, M], zero past each segment (the official unpack_hidden_states layout).
    bucket = bucket_length(max(lengths))
    pack_length = jnp.asarray(max(lengths), jnp.int32)  # the official batch length, whichever rows run
    # float32 unless the caller passes float64 under x64; encoder_features casts to the params' dtype
    dtype = np.float64 if mels.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    segments = [mels[start : start + n] for start, n in zip(starts, lengths, strict=True)]
    parts: dict[str, list[np.ndarray]] = {"codes": [], "lengths": [], "features": [], "quantized": []}
    for first in range(0, len(segments), per_call):
        rows = segments[first : first + per_call]
        batch, row_lengths = padded_rows(rows, per_call, bucket, dtype)  # [B', Tb, M], [B']
        features, out_lengths, codes, quantized = encode_padded(
            params["encoder"], jnp.asarray(batch), jnp.asarray(row_lengths), pack_length, cfg=cfg, n_q=n_q
        )
        # Unpack: keep each segment's valid frames, concatenated (the official packed layout).
        out_lengths = np.asarray(out_lengths).astype(np.int64)[: len(rows)]
        features, codes, quantized = np.asarray(features), np.asarray(codes), np.asarray(quantized)
        for row, n in enumerate(out_lengths):
            parts["codes"].append(codes[:, row, :n])  # [Q, B', T3] -> [Q, n]
            parts["features"].append(features[row, :n])  # [B', T3, D] -> [n, D]
            parts["quantized"].append(quantized[row, :n])  # [B', T3, D] -> [n, D]
        parts["lengths"].append(out_lengths)
    return EncodeResult(
        codes=np.concatenate(parts["codes"], axis=1).astype(np.int64),  # segments x [Q, n] -> [Q, T']
        lengths=np.concatenate(parts["lengths"]),
        features=np.concatenate(parts["features"], axis=0),  # segments x [n, D] -> [T', D]
        quantized=np.concatenate(parts["quantized"], axis=0),  # segments x [n, D] -> [T', D]
    )
