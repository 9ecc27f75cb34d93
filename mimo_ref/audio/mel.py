"""Log-mel front end of the MiMo-Audio-Tokenizer (official ``MimoAudio.wav2mel``).

The official pipeline runs torchaudio's ``MelSpectrogram(sample_rate, n_fft, hop_length, win_length, f_min,
f_max, n_mels, power=1.0, center=True)`` and then ``log(clip(x, min=1e-7))``. This module reproduces it in
JAX without torch:

- STFT: the wave is reflect-padded by ``n_fft // 2`` on both sides (torch.stft ``center=True``,
  ``pad_mode="reflect"``), cut into frames of ``n_fft`` samples every ``hop`` samples, multiplied by a periodic
  Hann window of ``win_length`` samples (zero-padded to ``n_fft`` in the middle, as torch.stft does), and
  real-FFT'd. Frames: ``T = samples // hop + 1`` (for even ``n_fft``).
- Magnitude (``power=1``: ``|X|``, not ``|X|^2``), then an HTK mel filterbank without area normalisation.
- ``log(max(mel, 1e-7))``.

Rates for the real tokenizer: 24 kHz in, hop 240 -> 100 mel frames per second, M = 128 mel bins.

The filterbank and the window are built in float32 exactly the way torchaudio builds them (``torch.linspace``
in float32, HTK formulas on float32 tensors), because the official module holds them as float32 buffers: a
float64 run of that module casts those float32 values, so this port does the same in float64 mode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.bucketing import bucket_length
from mimo_ref.tap import tap

LOG_FLOOR = 1e-7  # official wav2mel: torch.log(torch.clip(spec, min=1e-7))
FINITE_CHECK_BLOCK = 1 << 20  # samples checked for NaN / inf at a time


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit on CPU.

    torch computes ``step = (end - start) / (steps - 1)`` in float32, then fills the first half as
    ``start + i * step`` and the second half as ``end - (steps - 1 - i) * step`` (symmetric rounding).
    """
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps)
    first = start32 + i.astype(np.float32) * step
    second = end32 - (steps - 1 - i).astype(np.float32) * step
    return np.where(i < steps // 2, first, second).astype(np.float32)


def _hz_to_mel_htk(freq: float) -> float:
    """HTK mel scale of a frequency in Hz (torchaudio ``_hz_to_mel``, Python float math)."""
    return 2595.0 * math.log10(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: AudioTokenizerConfig) -> np.ndarray:
    """torchaudio ``melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sr, norm=None, mel_scale="htk")``.

    Returns ``[n_freq, M]`` float32 (n_freq = n_fft // 2 + 1 frequency bins): triangular filters whose corners are
    ``M + 2`` points equally spaced on the HTK mel scale, each filter the min of its rising and falling slope,
    clipped at 0, unnormalised.
    """
    n_freqs = cfg.nfft // 2 + 1
    # torchaudio: all_freqs = torch.linspace(0, sample_rate // 2, n_freqs) (integer division of the rate)
    all_freqs = _torch_linspace_f32(0.0, float(cfg.sampling_rate // 2), n_freqs)  # [n_freq]
    m_pts = _torch_linspace_f32(_hz_to_mel_htk(cfg.fmin), _hz_to_mel_htk(cfg.fmax), cfg.n_mels + 2)  # [M+2]
    f_pts = np.float32(700.0) * (np.float32(10.0) ** (m_pts / np.float32(2595.0)) - np.float32(1.0))  # [M+2]
    f_diff = f_pts[1:] - f_pts[:-1]  # [M+2] -> [M+1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freq, M+2]
    down = (np.float32(-1.0) * slopes[:, :-2]) / f_diff[:-1]  # [n_freq, M+2] -> [n_freq, M]
    up = slopes[:, 2:] / f_diff[1:]  # [n_freq, M+2] -> [n_freq, M]
    return np.maximum(np.float32(0.0), np.minimum(down, up)).astype(np.float32)


def periodic_hann(length: int) -> np.ndarray:
    """``torch.hann_window(length)`` (periodic): ``0.5 - 0.5 cos(2 pi n / length)``, n = 0..length-1, float32."""
    n = np.arange(length, dtype=np.float32)
    # torch builds hamming_window(length + 1) with alpha = beta = 0.5 and drops the last sample
    angle = n * np.float32(2.0 * math.pi / length)
    return (np.float32(0.5) - np.float32(0.5) * np.cos(angle)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def stft_window(cfg: AudioTokenizerConfig) -> np.ndarray:
    """The mel STFT window ``[n_fft]``: periodic Hann of ``window_size`` centred in ``n_fft`` zeros (torch.stft)."""
    window = periodic_hann(cfg.window_size)  # [W]
    left = (cfg.nfft - cfg.window_size) // 2
    return np.pad(window, (left, cfg.nfft - cfg.window_size - left))  # [W] -> [n_fft]


def mel_frames(num_samples: int, cfg: AudioTokenizerConfig) -> int:
    """Mel frames of a wave of ``num_samples``: centered STFT, ``1 + (samples + 2 (n_fft // 2) - n_fft) // hop``."""
    return 1 + (num_samples + 2 * (cfg.nfft // 2) - cfg.nfft) // cfg.hop_length


@functools.partial(jax.jit, static_argnames=("cfg", "frames"))
def log_mel_spectrogram(padded: jax.Array, *, cfg: AudioTokenizerConfig, frames: int) -> jax.Array:
    """Log-mel of an already reflect-padded wave.

    padded ``[(frames - 1) * hop + n_fft]`` (the centered wave, zero tail allowed) -> ``[frames, M]`` in the
    dtype of ``padded``. Frame t covers ``padded[t * hop : t * hop + n_fft]``.
    """
    window = jnp.asarray(stft_window(cfg)).astype(padded.dtype)  # float32 values, as torch's buffer
    fbank = jnp.asarray(mel_filterbank(cfg)).astype(padded.dtype)
    index = jnp.arange(frames)[:, None] * cfg.hop_length + jnp.arange(cfg.nfft)[None, :]  # [T, n_fft]
    segments = padded[index] * window  # [samples] -> [T, n_fft]
    magnitude = jnp.abs(jnp.fft.rfft(segments, axis=-1))  # [T, n_fft] -> [T, n_freq] (power 1: |X|)
    mel = jnp.matmul(magnitude, fbank, precision=jax.lax.Precision.HIGHEST)  # [T, n_freq] @ [n_freq, M] -> [T, M]
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def check_wave(wave, *, what: str = "wave") -> np.ndarray:
    """Validate a mono waveform: a non-empty, finite, 1-D float array. Returns it as numpy."""
    array = np.asarray(wave)
    if array.ndim != 1:
        raise ValueError(
            f"{what} must be a mono 1-D array of samples, got shape {array.shape}; average the channels first"
        )
    if array.size == 0:
        raise ValueError(f"{what} is empty: there is no audio to encode")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} has dtype {array.dtype}; pass float samples in [-1, 1] (convert PCM integers)")
    # checked a block at a time: no temporary as long as the wave (long audio, docs/audio_io.md)
    if not all(np.isfinite(array[i : i + FINITE_CHECK_BLOCK]).all() for i in range(0, array.size, FINITE_CHECK_BLOCK)):
        raise ValueError(f"{what} contains NaN or infinite samples")
    return array


def log_mel(wave, cfg: AudioTokenizerConfig, *, sample_rate: int) -> jax.Array:
    """Official ``wav2mel``: log-mel spectrogram of a mono wave at ``cfg.sampling_rate``.

    wave ``[samples]`` float (numpy or JAX) -> ``[T, M]``, ``T = samples // hop + 1`` (100 frames per second at
    24 kHz / hop 240). Computes in float32 (the official MelSpectrogram is a float32 module), or in float64 when
    given a float64 wave with JAX's x64 mode on. ``sample_rate`` must equal ``cfg.sampling_rate``: resampling is
    the caller's job (the official pipeline uses torchaudio's resampler).

    Different lengths reuse compiled code: the padded wave is extended with zeros to a bucketed number of
    frames, and the frames past ``T`` are dropped (each frame depends only on its own samples).
    """
    array = check_wave(wave)
    if sample_rate != cfg.sampling_rate:
        raise ValueError(
            f"log_mel got audio at {sample_rate} Hz but the tokenizer expects {cfg.sampling_rate} Hz; resample first"
        )
    pad = cfg.nfft // 2
    if array.shape[0] <= pad:
        # torch.stft's reflect padding needs more samples than it pads
        raise ValueError(f"wave has {array.shape[0]} samples; the centered STFT needs more than {pad}")
    dtype = np.float64 if array.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32
    frames = mel_frames(array.shape[0], cfg)
    bucket = bucket_length(frames)
    centered = np.pad(array.astype(dtype), (pad, pad), mode="reflect")  # [samples] -> [samples + 2 pad]
    total = (bucket - 1) * cfg.hop_length + cfg.nfft
    # zero tail up to the bucket's frames; when the bucket is exactly T frames the centered wave can be longer
    # than they read, so cut it (samples past the last frame's window are never used)
    padded = np.pad(centered, (0, max(0, total - centered.shape[0])))[:total]
    mel = log_mel_spectrogram(jnp.asarray(padded), cfg=cfg, frames=bucket)[:frames]  # [Tb, M] -> [T, M]
    return tap("audio.mel", mel)


def log_mel_frames(wave, cfg: AudioTokenizerConfig, *, start: int, frames: int, bucket: int | None = None) -> jax.Array:
    """Frames ``[start, start + frames)`` of :func:`log_mel` of the whole wave, reading only the samples they cover.

    wave ``[samples]`` at ``cfg.sampling_rate`` (already checked by :func:`check_wave`; float32, or float64 under
    x64) -> ``[frames, M]``. Frame t of the centered STFT covers samples ``[t * hop - n_fft // 2, t * hop + n_fft
    // 2)`` of the wave, reflected at both ends as ``torch.stft(center=True)`` pads: this builds exactly that
    slice of the reflect-padded wave, so memory follows ``frames``, not the file. ``bucket`` (>= frames, default
    the frames' bucket) is the number of frames computed (the compiled shape); frames past ``frames`` are dropped.
    Gives the same values as slicing :func:`log_mel` (``tests/test_long_audio.py``).
    """
    array = np.asarray(wave)
    n, pad, hop = array.shape[0], cfg.nfft // 2, cfg.hop_length
    total_frames = mel_frames(n, cfg)
    if not 0 <= start < start + frames <= total_frames:
        raise ValueError(f"frames [{start}, {start + frames}) are outside the wave's {total_frames} mel frames")
    if n <= pad:
        raise ValueError(f"wave has {n} samples; the centered STFT needs more than {pad}")
    bucket = bucket_length(frames) if bucket is None else bucket
    if bucket < frames:
        raise ValueError(f"bucket {bucket} is shorter than the {frames} frames asked for")
    dtype = np.float64 if array.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32
    first = start * hop  # index of the slice's first sample in the centered (reflect-padded) wave
    span = (bucket - 1) * hop + cfg.nfft  # samples the bucket's frames read
    centered = np.arange(first, min(first + span, n + 2 * pad))  # [S] indices into the centered wave
    source = centered - pad  # [S] indices into the wave; reflected at both ends (numpy's / torch's "reflect")
    source = np.where(source < 0, -source, np.where(source >= n, 2 * (n - 1) - source, source))
    padded = np.zeros(span, dtype)  # zero tail past the centered wave, as log_mel's bucket padding
    padded[: source.shape[0]] = array[source]
    return log_mel_spectrogram(jnp.asarray(padded), cfg=cfg, frames=bucket)[:frames]  # [Tb, M] -> [frames, M]
