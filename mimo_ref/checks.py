"""Checks of user input for the task API and the command line, raised early and in the user's terms.

Each check names the input the way the caller gave it (``what``: a file name, an option, an argument) and states
the rule in the caller's units (samples at the file's own rate, seconds), so an error never surfaces as a shape
error deep inside the model.

Rules stated here once:

- Seeds: any integer. The seed is reduced modulo 2**32 (:func:`fold_seed`) before it seeds anything, which is
  what ``jax.random.key`` does by itself without x64 mode; doing it explicitly makes a seed give the same
  samples and templates in float32, bfloat16 and float64 runs. Seeds that differ by a multiple of 2**32 are
  the same seed.
- Waveforms given as arrays: ``[T]`` (mono) or ``[T, channels]``, the layout ``soundfile.read`` returns;
  channels are averaged. A 2-D array with at least as many columns as rows looks channels-first (``[channels,
  T]``) and is rejected rather than averaged over time.
- Counts (groups, repeats, batch sizes) and sample rates are positive integers: ``2.5`` or ``16000.5`` is
  an error, not silently truncated.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

SEED_MODULUS = 2**32  # jax.random.key keeps the low 32 bits of a seed without x64 mode


class InputError(ValueError):
    """A user input that breaks a documented rule; the message names the input."""


def fold_seed(seed, *, what: str = "seed") -> int:
    """Any integer -> ``seed mod 2**32`` (a non-negative int below 2**32). Non-integers raise :class:`InputError`."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"{what} must be an integer, got {seed!r}")
    return int(seed) % SEED_MODULUS


def positive_int(value, *, what: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; floats (even 2.0), bools and strings raise :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InputError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def mono_wave(wave, sample_rate, *, what: str) -> tuple[np.ndarray, int]:
    """A ``(wave, sample_rate)`` pair -> ``(wave [T] float32, rate)``, channels averaged (in float64, rounded once).

    ``wave``: ``[T]`` or ``[T, channels]`` floating point. Raises :class:`InputError` for other layouts, integer
    samples, no samples or non-finite samples, and for a rate that is not a positive integer.
    """
    rate = positive_int(sample_rate, what=f"the sample rate of {what}")
    array = np.asarray(wave)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{what} has {array.dtype} samples; pass floats in [-1, 1] (soundfile.read(path, dtype='float32'))"
        )
    if array.ndim == 2:
        if array.shape[0] <= array.shape[1]:
            raise InputError(
                f"{what} has shape {list(array.shape)}: waves are [T] or [T, channels] (as soundfile returns), and "
                f"{array.shape[1]} channels of {array.shape[0]} samples looks channels-first; pass wave.T"
            )
        array = array.astype(np.float64).mean(axis=1)  # [T, channels] -> [T]
    elif array.ndim != 1:
        raise InputError(f"{what} has shape {list(array.shape)}; waves are [T] or [T, channels]")
    if array.shape[0] == 0:
        raise InputError(f"{what} has no samples")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{what} contains NaN or infinite samples")
    return array.astype(np.float32), rate


def check_long_enough(samples: int, sample_rate: int, *, what: str, nfft: int, tokenizer_rate: int) -> None:
    """Raise unless a wave of ``samples`` at ``sample_rate`` is long enough for the tokenizer's centered STFT.

    The STFT reflect-pads ``nfft // 2`` samples at the tokenizer's rate, which needs more samples than it pads
    (``torch.stft`` rejects shorter input). The message counts in the input's own rate and in milliseconds.
    """
    resampled = math.ceil(tokenizer_rate * samples / sample_rate)  # resample() output length
    pad = nfft // 2
    if resampled <= pad:
        raise InputError(
            f"{what} is too short: {samples} samples at {sample_rate} Hz ({1000 * samples / sample_rate:.1f} ms); "
            f"the audio tokenizer needs more than {1000 * pad / tokenizer_rate:.0f} ms of audio"
        )
