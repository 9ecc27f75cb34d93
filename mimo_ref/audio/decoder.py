"""Decoder of the MiMo-Audio-Tokenizer: codes -> coarse mel -> waveform (official ``MiMoAudioTokenizer.decode``).

Stages and rates for the real tokenizer:

1. RVQ decode (float32): codes ``[Q, T]`` at 25 Hz -> vectors ``[T, D]`` (``vq``), cast to the model dtype.
2. dconv1: ``ConvTranspose1d(D, D, k = s = avg_pooler)`` + GroupNorm(1 group) -> 50 Hz, ``2T`` frames.
3. causal transformer (positions restart per sequence; window per config), final LayerNorm.
4. dconv2: ``ConvTranspose1d(D, M, k3, s2)`` + GroupNorm(1 group) computed over the **untrimmed** output
   (``(L - 1) * 2 + 3`` frames), then the last ``k - s`` frames are trimmed -> 100 Hz coarse mel, ``4T`` frames.
5. vocoder (``vocoder.py``) -> ``4T * hop = 960 T`` samples at 24 kHz.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.rvq import rvq_decode
from mimo_ref.audio.transformer import LAYER_NORM_EPS, segment_mask, transformer
from mimo_ref.audio.vocoder import vocoder
from mimo_ref.bucketing import bucket_length
from mimo_ref.layers import Params, compute_dtype, conv_transpose1d, layer_norm
from mimo_ref.precision import at_use, model_dtype
from mimo_ref.tap import tap

GROUP_NORM_EPS = 1e-5  # torch nn.GroupNorm default


def group_norm_1(params: Params, x: jax.Array, frames: jax.Array) -> jax.Array:
    """``nn.GroupNorm(1, D)`` over the first ``frames`` positions only (the rest is bucket padding).

    x ``[B, D, T]``, frames: traced scalar -> ``[B, D, T]``. Mean and biased variance over all channels and the
    existing positions of each row; affine per channel.
    """
    xc = x.astype(compute_dtype(x.dtype))
    valid = (jnp.arange(x.shape[-1]) < frames)[None, None, :]  # [1, 1, T]
    count = frames * x.shape[1]
    mean = jnp.sum(jnp.where(valid, xc, 0), axis=(1, 2), keepdims=True) / count  # [B, D, T] -> [B, 1, 1]
    var = jnp.sum(jnp.where(valid, jnp.square(xc - mean), 0), axis=(1, 2), keepdims=True) / count  # -> [B, 1, 1]
    y = ((xc - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS)).astype(x.dtype)
    return y * params["weight"][None, :, None] + params["bias"][None, :, None]


def transposed_conv_block(params: Params, x: jax.Array, lengths: jax.Array, *, stride: int):
    """Official ``CausalConvTranspose1d``: ConvTranspose1d + GroupNorm(1) + trim of the last ``k - s`` frames.

    params: ``{"conv", "norm"}``. x ``[B, T, Din]`` (rows padded past ``lengths`` ``[B]``) ->
    (``[B, (T - 1) s + min(k, s), Dout]``, lengths ``(L - 1) s + min(k, s)``), i.e. ``T s`` / ``L s`` when k >= s.

    The GroupNorm statistics cover the untrimmed official batch, ``(max(lengths) - 1) s + k`` frames, in which
    a shorter row's padded inputs are zeros (so their bias-only output frames count, as officially). Output
    frames past each row's length are zeroed (official ``torch.where(sequence_mask, ., 0)``).
    """
    k = params["conv"]["weight"].shape[-1]
    t = x.shape[1]
    params = at_use(params, x.dtype, x)  # bf16-stored weights upcast at use (mimo_ref/precision.py)
    x = jnp.where((jnp.arange(t)[None, :] < lengths[:, None])[:, :, None], x, 0)  # official zero-filled unpack
    y = conv_transpose1d(params["conv"], x.transpose(0, 2, 1), stride=stride)  # [B, Din, T] -> [B, Dout, (T-1)s+k]
    y = group_norm_1(params["norm"], y, (jnp.max(lengths) - 1) * stride + k)
    trim = max(0, k - stride)
    y = y[:, :, : y.shape[-1] - trim].transpose(0, 2, 1)  # [B, Dout, (T-1)s+k] -> [B, (T-1)s+k-trim, Dout]
    out_lengths = (lengths - 1) * stride + k - trim
    y = jnp.where((jnp.arange(y.shape[1])[None, :] < out_lengths[:, None])[:, :, None], y, 0)
    return y, out_lengths


def audio_decoder(params: Params, vq: jax.Array, lengths: jax.Array, *, cfg: AudioTokenizerConfig):
    """Official ``AudioDecoder`` up to the vocoder input: vq ``[B, T, D]`` -> (coarse mel ``[B, T2, M]``, lengths).

    params: the checkpoint's ``decoder`` node. vq is cast to the params' dtype (official ``.to(layer_norm.weight)``).
    ``T2 = T * avg_pooler * decoder_stride`` (4T for the real settings), lengths likewise per row.
    """
    x = vq.astype(model_dtype(cfg.compute_dtype, params["layer_norm"]["weight"]))
    x, lengths1 = transposed_conv_block(params["dconv1"], x, lengths, stride=cfg.avg_pooler)  # [B, T, D] -> [B, T1, D]
    tap("audio.decoder.dconv1", x)
    b, t1, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t1)[None, :], (b, t1))  # restart per sequence (get_position_ids)
    mask = segment_mask(lengths1, t1, causal=cfg.decoder_causal, window=cfg.decoder_window)  # [B, T1, T1]
    x, _ = transformer(
        params["layers"],
        x,
        positions,
        mask,
        heads=cfg.decoder_heads,
        theta=cfg.rope_theta,
        bf16_inv_freq=cfg.bf16_buffers,
        name="audio.decoder",
    )
    final_norm = at_use(params["layer_norm"], x.dtype, x)
    x = tap("audio.decoder.final_norm", layer_norm(final_norm, x, eps=LAYER_NORM_EPS))
    # [B, T1, D] -> [B, T2, M]
    mel, lengths2 = transposed_conv_block(params["dconv2"], x, lengths1, stride=cfg.decoder_stride_size)
    return tap("audio.decoder.coarse_mel", mel), lengths2


@functools.partial(jax.jit, static_argnames=("cfg",))
def decode_padded(params: Params, codes: jax.Array, lengths: jax.Array, *, cfg: AudioTokenizerConfig):
    """Jitted decode of padded code rows.

    params: the full tokenizer params. codes ``[Q, B, T]`` int (any valid id past each row's length),
    lengths ``[B]`` -> vq ``[B, T, D]`` float32, coarse mel ``[B, T2, M]``, mel lengths ``[B]``,
    wav ``[B, 1, T2 * hop]`` (the params' dtype).
    """
    vq = tap("audio.decoder.vq", rvq_decode(params["encoder"]["quantizer"]["vq"], codes))  # [Q, B, T] -> [B, T, D]
    mel, mel_lengths = audio_decoder(params["decoder"], vq, lengths, cfg=cfg)  # [B, T, D] -> [B, T2, M]
    wav = tap("audio.wav", vocoder(params["decoder"]["vocoder"], mel, mel_lengths, cfg=cfg))  # -> [B, 1, T2 * hop]
    return vq, mel, mel_lengths, wav


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """What :func:`decode` returns (numpy): vq ``[T, D]`` float32 (RVQ decode), coarse_mel ``[1, T2, M]`` (decoder
    output before the vocoder), wav ``[1, 1, samples]`` (24 kHz, ``samples = T * samples_per_code``)."""

    vq: np.ndarray
    coarse_mel: np.ndarray
    wav: np.ndarray


def check_codes(codes, cfg: AudioTokenizerConfig) -> np.ndarray:
    """Validate codes ``[C, T]``: integers, C <= Q, T >= 1, each level's ids inside its codebook."""
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"codes must be [levels, frames], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {array.dtype}")
    levels, frames = array.shape
    if not 1 <= levels <= cfg.num_quantizers:
        raise ValueError(f"codes have {levels} levels; the tokenizer has 1..{cfg.num_quantizers}")
    if frames == 0:
        raise ValueError("codes have no frames to decode")
    for level in range(levels):
        low, high = int(array[level].min()), int(array[level].max())
        if low < 0 or high >= cfg.codebook_sizes[level]:
            raise ValueError(
                f"codes of level {level} span [{low}, {high}] but its codebook has {cfg.codebook_sizes[level]} "
                "entries (an empty/padding id left in the codes?)"
            )
    return array


def decode(params: Params, codes, *, cfg: AudioTokenizerConfig) -> DecodeResult:
    """Official ``MiMoAudioTokenizer.decode``: codes ``[C, T]`` (C <= Q levels, LM codes have 8) -> waveform.

    One sequence, as the official call. Returns a :class:`DecodeResult`; the wav has ``T * 960`` samples for
    the real tokenizer. Codes are padded to a length bucket so nearby lengths reuse compiled code.
    """
    array = check_codes(codes, cfg)
    frames = array.shape[1]
    bucket = bucket_length(frames, minimum=16, step=512)
    padded = np.zeros((array.shape[0], 1, bucket), np.int32)  # [C, 1, Tb]; id 0 exists in every codebook
    padded[:, 0, :frames] = array
    vq, mel, mel_lengths, wav = decode_padded(params, jnp.asarray(padded), jnp.asarray([frames], jnp.int32), cfg=cfg)
    n = int(mel_lengths[0])
    samples = n * cfg.hop_length
    return DecodeResult(
        vq=np.asarray(vq[0, :frames]),  # [1, Tb, D] -> [T, D]
        coarse_mel=np.asarray(mel[:, :n]),  # [1, T2b, M] -> [1, T2, M]
        wav=np.asarray(wav[:, :, :samples]),  # [1, 1, T2b * hop] -> [1, 1, samples]
    )
