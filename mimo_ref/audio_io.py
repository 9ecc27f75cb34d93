"""Audio files in and out, and the official resampler, in numpy.

- Loading (official ``MimoAudio.preprocess_input``): ``torchaudio.load`` gives float32 ``[channels, samples]``
  scaled to [-1, 1); channels are averaged to mono; audio not at the tokenizer's 24 kHz is resampled with
  ``torchaudio.functional.resample`` defaults. ``soundfile.read(dtype="float32")`` gives the same floats for
  PCM files.
- Resampling: :func:`resample` is ``torchaudio.functional.resample(wave, orig, new)`` with its defaults
  (``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``), re-derived from its definition below.
- Writing (official ``save_wav``): ``soundfile.write(path, wave, 24000)``, i.e. 16-bit PCM WAV; soundfile
  clips to [-1, 1] and scales by 32767 (libsndfile's float -> PCM_16 conversion).

Dimension letters: T samples (input), S samples (output), P phases (output samples per input period), K kernel
taps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

from mimo_ref.arith import ceil_div
from mimo_ref.outputs import atomic_outputs

# Sample rate of the MiMo-Audio tokenizer (its config.json `sampling_rate`) and of every waveform it decodes.
TOKENIZER_SR = 24000


class AudioFileError(ValueError):
    """An audio file cannot be used: unreadable, not audio, or without samples."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32.

    Returns:
      ``(wave [T] float32, sample_rate)``: channels averaged (official ``wav.mean(dim=0)``); the mean is taken
      in float64 and rounded once to float32.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      AudioFileError: ``path`` is a folder, the file is not audio soundfile can read, has no samples, or holds
        NaN or infinite samples (possible in float WAV files).
    """
    path = Path(path)
    if path.is_dir():
        raise AudioFileError(f"audio file {path} is a folder; pass an audio file")
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"{path} is not a readable audio file ({exc})") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioFileError(f"{path} holds no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioFileError(f"{path} contains NaN or infinite samples")
    wave = data.astype(np.float64).mean(axis=1).astype(np.float32)  # [T, channels] -> [T]
    return wave, int(sample_rate)


def load_audio_24k(path: str | Path, target_sr: int = TOKENIZER_SR) -> tuple[np.ndarray, int]:
    """:func:`load_audio`, then :func:`resample` to ``target_sr`` when the file's rate differs.

    Returns:
      ``(wave [S] float32, target_sr)``.
    """
    wave, sample_rate = load_audio(path)
    return resample(wave, sample_rate, target_sr), target_sr


def write_wav(path: str | Path, wave: np.ndarray, sr: int = TOKENIZER_SR) -> None:
    """Write ``wave`` (any shape, flattened to ``[T]``, as the official ``save_wav``) as 16-bit PCM WAV.

    Samples outside [-1, 1] are clipped by soundfile. The file is written atomically
    (:func:`mimo_ref.outputs.atomic_outputs`): under a temporary name, renamed into place when complete, so an
    error or Ctrl-C never leaves a partial file; missing parent folders are created.
    """
    samples = np.asarray(wave, dtype=np.float32).reshape(-1)  # [...] -> [T]
    if samples.size == 0:
        raise AudioFileError(f"refusing to write {path}: the waveform has no samples")
    with atomic_outputs(path) as (temp,):
        sf.write(str(temp), samples, int(sr), subtype="PCM_16", format="WAV")


def sinc_resample_kernel(
    orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99, dtype=np.float64
) -> tuple[np.ndarray, int, int, int]:
    """The windowed-sinc polyphase filter of ``torchaudio.functional.resample`` (Hann window).

    With the rates reduced by their gcd to ``orig``, ``new``: one period of ``orig`` input samples maps to ``new``
    output samples. Output phase p (time ``p / new`` input periods) is a dot product of the input with
    kernel row p. The ideal band-limited interpolator is ``sinc(pi * base * (i / orig - p / new))`` with cutoff
    ``base = min(orig, new) * rolloff`` (slightly below Nyquist, to suppress aliasing and edge artifacts); it is
    truncated to ``lowpass_filter_width`` zero crossings each side, which needs ``width = ceil(lpw * orig / base)``
    input samples each side, and tapered by a Hann window ``cos(pi * x / (2 * lpw))^2`` over ``x in [-lpw, lpw]``.
    The gain ``base / orig`` keeps DC at 1.

    torchaudio evaluates this in the waveform's dtype, so ``dtype`` (float32 for float32 audio) and the order of
    the operations below follow it: a float64 kernel differs from torchaudio's float32 one by ~1e-6 relative.

    Returns:
      ``(kernel [P, K], width, orig, new)`` with ``P = new``, ``K = 2 * width + orig``: tap k of phase p weighs
      input sample ``j * orig + k - width`` for output ``j * new + p``.
    """
    gcd = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // gcd, new_sr // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    # numpy keeps `dtype` when a Python float multiplies an array (NEP 50), as torch does with Python scalars
    taps = np.arange(-width, width + orig, dtype=dtype) / dtype(orig)  # [K] input times, in periods
    phases = -np.arange(new, dtype=dtype) / dtype(new)  # [P] minus output times, in periods
    x = (phases[:, None] + taps[None, :]) * dtype(base)  # [P], [K] -> [P, K] distance in zero crossings
    x = np.clip(x, -lowpass_filter_width, lowpass_filter_width)  # beyond the window both factors are ~0
    window = np.cos(x * dtype(math.pi) / dtype(lowpass_filter_width) / dtype(2)) ** 2  # [P, K]
    arg = x * dtype(math.pi)
    safe = np.where(arg == 0, dtype(1), arg)
    sinc = np.where(arg == 0, dtype(1), np.sin(safe) / safe)  # [P, K]
    return sinc * (window * dtype(base / orig)), width, orig, new


def resample(
    wave: np.ndarray, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> np.ndarray:
    """``torchaudio.functional.resample(wave, orig_sr, new_sr)`` with its defaults, in numpy.

    The input is zero-padded with ``width`` samples before and ``width + orig`` after, cut into frames of K
    samples every ``orig`` samples (a strided convolution), each frame gives ``new`` outputs (one per kernel
    row), and the result is cut to ``ceil(new * T / orig)`` samples. The kernel is built in ``wave``'s dtype as
    torchaudio builds it; the convolution sums in float64 and rounds once (torchaudio sums in the input dtype,
    in an order of its backend's choosing).

    Args:
      wave: ``[..., T]`` floating point; leading axes are independent signals.
      orig_sr, new_sr: positive integer rates (Hz). Equal rates return ``wave`` unchanged.

    Returns:
      ``[..., S]`` in ``wave``'s dtype, ``S = ceil(new_sr * T / orig_sr)``.
    """
    wave = np.asarray(wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise TypeError(f"resample needs a floating-point waveform, got dtype {wave.dtype}")
    for name, rate in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
            raise ValueError(f"{name} must be a positive integer rate in Hz, got {rate!r}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return wave
    kernel, width, orig, new = sinc_resample_kernel(orig_sr, new_sr, lowpass_filter_width, rolloff, wave.dtype.type)
    lead, length = wave.shape[:-1], wave.shape[-1]
    signals = wave.reshape(-1, length).astype(np.float64)  # [..., T] -> [B, T]
    padded = np.pad(signals, ((0, 0), (width, width + orig)))  # [B, T] -> [B, T + 2 * width + orig]
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1], axis=1)[:, ::orig]  # [B, J, K]
    out = np.einsum("BJK,PK->BJP", frames, kernel.astype(np.float64))  # [B, J, K] -> [B, J, P]
    target = ceil_div(new * length, orig)  # ceil(new * T / orig), exactly
    out = out.reshape(out.shape[0], -1)[:, :target]  # [B, J, P] -> [B, S]
    return out.reshape(*lead, target).astype(wave.dtype)  # [B, S] -> [..., S]
