"""What the official ``MimoAudio`` wrapper does around the tokenizer: waveform -> LM codes, LM codes -> waveform.

- :func:`wav_to_codes` (official ``preprocess_input`` + ``encode_batch``): log-mel of the 24 kHz wave, cut into
  segments of 6000 mel frames (60 s; the last one shorter), segments grouped so no group exceeds 256000 frames,
  each group encoded **packed in one call** (which is what makes a shorter last segment's codes depend on the
  longer ones, see ``encoder.py``), codes concatenated, first ``n_q`` levels kept.
- :func:`codes_to_wav` (official ``forward`` with ``return_audio``): codes decoded in chunks of 1500 frames
  (60 s), each chunk an independent ``decode`` call, the waveforms concatenated end to end (no overlap, no
  cross-fade), as float32.

Padding the codes to a multiple of the LM's group size (by repeating the last frame) is the LM pipeline's
job, not done here.
"""

from __future__ import annotations

import numpy as np

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.decoder import check_codes, decode
from mimo_ref.audio.encoder import encode
from mimo_ref.audio.mel import check_wave, log_mel
from mimo_ref.layers import Params

SEGMENT_FRAMES = 6000  # official preprocess_input: segment_size = 6000 mel frames (60 s at 100 Hz)
MAX_PACKED_FRAMES = 256000  # official encode_batch: max_length of one packed group, in mel frames
DECODE_CHUNK_FRAMES = 1500  # official forward: segment_len = 1500 code frames (60 s at 25 Hz)
EMPTY_AUDIO_SAMPLES = 24000  # official forward: no speech tokens -> torch.zeros(24000) is written


def segment_lengths(frames: int, segment: int = SEGMENT_FRAMES) -> list[int]:
    """Official segmentation: ``[segment] * (frames // segment)`` plus the remainder when non-zero."""
    lengths = [segment] * (frames // segment)
    if frames % segment:
        lengths.append(frames % segment)
    return lengths


def group_by_length(lengths: list[int], max_length: int = MAX_PACKED_FRAMES) -> list[list[int]]:
    """Official ``group_by_length``: consecutive segments are grouped until adding the next would pass
    ``max_length`` frames (a segment alone may exceed it). Returns the lengths of each group."""
    groups: list[list[int]] = [[]]
    total = 0
    for n in lengths:
        if total > 0 and total + n > max_length:
            groups.append([])
            total = 0
        groups[-1].append(n)
        total += n
    return groups


def wav_to_codes(params: Params, cfg: AudioTokenizerConfig, wave_24k: np.ndarray, n_q: int) -> np.ndarray:
    """Official ``MimoAudio.preprocess_input`` (tokenizer part): mono 24 kHz wave ``[samples]`` -> codes ``[n_q, T']``.

    ``wave_24k`` must already be mono and at ``cfg.sampling_rate`` (the official pipeline averages channels and
    resamples with torchaudio first); it is read as float32, as ``torchaudio.load`` gives. ``T'`` is 25 code
    frames per second for the real tokenizer (``ceil(ceil(mel_frames_per_segment / 2) / 2)`` summed over
    segments). Returns int64 codes.
    """
    if not 1 <= n_q <= cfg.num_quantizers:
        raise ValueError(f"n_q must be in 1..{cfg.num_quantizers}, got {n_q}")
    wave = check_wave(wave_24k, what="wave_24k").astype(np.float32)
    mels = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))  # [samples] -> [T, M], float32
    parts = []
    start = 0
    for group in group_by_length(segment_lengths(mels.shape[0], SEGMENT_FRAMES), MAX_PACKED_FRAMES):
        frames = sum(group)
        result = encode(params, mels[start : start + frames], group, cfg=cfg, n_q=n_q)  # -> codes [n_q, T'_g]
        parts.append(result.codes)
        start += frames
    return np.concatenate(parts, axis=1)  # groups x [n_q, T'_g] -> [n_q, T']


def codes_to_wav(params: Params, cfg: AudioTokenizerConfig, codes: np.ndarray) -> np.ndarray:
    """Official detokenization in ``MimoAudio.forward``: codes ``[C, T]`` -> float32 wave ``[samples]`` at 24 kHz.

    Chunks of 1500 code frames are decoded independently (each restarts positions and normalisation) and their
    waveforms concatenated: ``samples = T * cfg.samples_per_code`` (960 per frame for the real tokenizer). As
    officially, no frames at all give 24000 zero samples.
    """
    array = np.asarray(codes)
    if array.ndim == 2 and array.shape[1] == 0:
        return np.zeros(EMPTY_AUDIO_SAMPLES, np.float32)
    array = check_codes(array, cfg)
    chunks = []
    for start in range(0, array.shape[1], DECODE_CHUNK_FRAMES):
        wav = decode(params, array[:, start : start + DECODE_CHUNK_FRAMES], cfg=cfg).wav  # -> [1, 1, samples]
        chunks.append(wav.astype(np.float32))  # official: .float()
    return np.concatenate(chunks, axis=-1).reshape(-1)  # chunks x [1, 1, n] -> [samples]
