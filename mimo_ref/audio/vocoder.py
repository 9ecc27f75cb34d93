"""Vocoder of the MiMo-Audio-Tokenizer: coarse mel -> 24 kHz waveform (official ``TransformerVocos`` + ``ISTFTHead``).

- input projection ``Linear(M -> vocoder_dim, no bias)``;
- transformer layers with a ``(40, 10)`` attention window (never causal), RoPE positions ``0..T-1`` counted over
  the **packed** frames of the whole batch (they do not restart per sequence, unlike the encoder/decoder);
- final LayerNorm; frames past a sequence's length are zeroed (official ``unpack_hidden_states``);
- ISTFT head (Vocos): ``Linear(dim -> n_fft + 2)``, first half log-magnitude, second half phase; magnitude
  ``exp``'d and clipped at 1e2; complex spectrum built in float32 (complex64) whatever the model dtype; inverse
  STFT with "same" padding and division by the window envelope.

One mel frame gives ``hop`` samples (240 at 24 kHz: 100 frames per second).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.transformer import LAYER_NORM_EPS, segment_mask, transformer
from mimo_ref.layers import Params, layer_norm, linear
from mimo_ref.precision import model_dtype
from mimo_ref.tap import tap

MAX_MAGNITUDE = 1e2  # official ISTFTHead: torch.clip(exp(log_mag), max=1e2), "safeguard" against huge values


def istft(spec: jax.Array, window: jax.Array, frames: jax.Array, *, hop: int) -> jax.Array:
    """Inverse STFT with "same" padding (official ``ISTFT(padding="same")``, the Vocos head).

    spec ``[B, n_freq, T]`` complex (n_freq = n_fft / 2 + 1), window ``[n_fft]`` (the checkpoint's periodic Hann
    buffer), frames: the number of frames that exist (a traced scalar; frames past it are bucket padding and
    contribute nothing) -> ``[B, T * hop]``.

    Each frame is ``irfft(n_fft) * window``; frames are overlap-added every ``hop`` samples, ``(n_fft - hop) / 2``
    samples are trimmed from each side, and the result is divided by the overlap-added squared window (the
    window envelope), which makes analysis/synthesis with the same window an identity. The product with the
    window follows type promotion, as in torch (float32 frames times a float64 window give float64).
    """
    n_fft = window.shape[0]
    t = spec.shape[-1]
    pad = (n_fft - hop) // 2
    out_len = (t - 1) * hop + n_fft
    valid = jnp.arange(t) < frames  # [T]
    signal = jnp.fft.irfft(spec, n=n_fft, axis=1)  # [B, n_freq, T] -> [B, n_fft, T] (norm "backward": 1/n_fft)
    signal = jnp.where(valid[None, None, :], signal * window[None, :, None], 0)  # [B, n_fft, T]
    index = jnp.arange(t)[:, None] * hop + jnp.arange(n_fft)[None, :]  # [T, n_fft]: sample of each frame value
    zeros = jnp.zeros((spec.shape[0], out_len), signal.dtype)
    y = zeros.at[:, index].add(signal.transpose(0, 2, 1))  # [B, T, n_fft] -> [B, out_len] (overlap-add)
    squared = jnp.where(valid[:, None], jnp.square(window)[None, :], 0)  # [T, n_fft], in the window's dtype
    envelope = jnp.zeros((out_len,), window.dtype).at[index].add(squared)  # [T, n_fft] -> [out_len]
    y = y[:, pad : out_len - pad]  # [B, out_len] -> [B, T * hop] ("same" padding)
    envelope = envelope[pad : out_len - pad]
    # Past the existing frames the envelope is 0 (bucket padding only): divide by 1 there instead.
    samples_valid = jnp.arange(t * hop) < frames * hop
    return y / jnp.where(samples_valid, envelope, 1)[None, :]


def istft_head(params: Params, x: jax.Array, frames: jax.Array, *, cfg: AudioTokenizerConfig) -> jax.Array:
    """Official ``ISTFTHead``: x ``[B, T, D]`` -> waveform ``[B, T * hop]`` in x's dtype.

    params: the checkpoint's ``head`` node (``out``, ``istft.window``). frames: existing frames (traced scalar).
    """
    y = linear(params["out"], x)  # [B, T, D] -> [B, T, n_fft + 2]
    log_mag, phase = jnp.split(y, 2, axis=-1)  # [B, T, n_fft + 2] -> 2 x [B, T, n_freq]
    tap("audio.istft.log_magnitude", log_mag)
    tap("audio.istft.phase", phase)
    mag = jnp.minimum(jnp.exp(log_mag), MAX_MAGNITUDE)  # exp and clip in the model dtype, as officially
    # official: S = mag.float() * (cos(p).float() + 1j * sin(p).float()), complex64 whatever the model dtype
    real = mag.astype(jnp.float32) * jnp.cos(phase).astype(jnp.float32)
    imag = mag.astype(jnp.float32) * jnp.sin(phase).astype(jnp.float32)
    tap("audio.istft.spectrum_real", real)
    tap("audio.istft.spectrum_imag", imag)
    spec = jax.lax.complex(real, imag).transpose(0, 2, 1)  # [B, T, n_freq] -> [B, n_freq, T] complex64
    window = params["istft"]["window"].astype(x.dtype)  # the checkpoint buffer, in the model dtype (upcast at use)
    audio = istft(spec, window, frames, hop=cfg.hop_length)  # [B, n_freq, T] -> [B, T * hop]
    return audio.astype(x.dtype)  # official: audio.to(original_dtype)


def vocoder(params: Params, mel: jax.Array, lengths: jax.Array, *, cfg: AudioTokenizerConfig) -> jax.Array:
    """Official ``TransformerVocos.forward``: coarse mel -> waveform.

    params: the checkpoint's ``decoder.vocoder`` node. mel ``[B, T, M]`` (rows padded past their lengths),
    lengths ``[B]`` frames -> wav ``[B, 1, T * hop]`` in the params' dtype; row b is valid for its first
    ``lengths[b] * hop`` samples. With B > 1 the official quirks hold: positions run on across rows, and the
    frames of a shorter row up to the longest length go through the head as zero vectors (bias-only frames).
    """
    t = mel.shape[1]
    dtype = model_dtype(cfg.compute_dtype, params["embeddings"]["weight"])
    x = linear(params["embeddings"], mel.astype(dtype))  # [B, T, M] -> [B, T, D]
    tap("audio.vocoder.embed", x)
    offsets = jnp.cumsum(lengths) - lengths  # [B]: packed start of each row
    positions = offsets[:, None] + jnp.arange(t)[None, :]  # [B, T]: RoPE positions do not restart per row
    mask = segment_mask(lengths, t, causal=False, window=cfg.vocoder_window)  # [B, T, T]
    x, _ = transformer(
        params["layers"],
        x,
        positions,
        mask,
        heads=cfg.vocoder_heads,
        theta=cfg.rope_theta,
        bf16_inv_freq=cfg.bf16_buffers,
        name="audio.vocoder",
    )
    x = tap("audio.vocoder.final_norm", layer_norm(params["layer_norm"], x, eps=LAYER_NORM_EPS))
    x = jnp.where((jnp.arange(t)[None, :] < lengths[:, None])[:, :, None], x, 0)  # official unpack: zero past length
    wav = istft_head(params["head"], x, jnp.max(lengths), cfg=cfg)  # [B, T, D] -> [B, T * hop]
    return wav[:, None, :]  # [B, T * hop] -> [B, 1, T * hop]
