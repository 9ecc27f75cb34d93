"""What the official ``MimoAudio`` wrapper does around the tokenizer: waveform -> LM codes, LM codes -> waveform.

- :func:`wav_to_codes` (official ``preprocess_input`` + ``encode_batch``): log-mel of the 24 kHz wave, cut into
  segments of 6000 mel frames (60 s; the last one shorter), segments grouped so no group exceeds 256000 frames,
  each group encoded **packed in one call** (which is what makes a shorter last segment's codes depend on the
  longer ones, see ``encoder.py``), codes concatenated, first ``n_q`` levels kept. Here a group's segments are
  encoded ``SEGMENTS_PER_CALL`` at a time, each call told the group's longest length, and each segment's
  log-mel is computed from just the samples it covers: the same codes as the packed call, in memory bounded by
  a few segments instead of growing with the file (docs/audio_io.md, "Long audio").
- :func:`codes_to_wav` (official ``forward`` with ``return_audio``): codes decoded in chunks of 1500 frames
  (60 s), each chunk an independent ``decode`` call, the waveforms concatenated end to end (no overlap, no
  cross-fade), as float32.

Padding the codes to a multiple of the LM's group size (by repeating the last frame) is the LM pipeline's
job, not done here.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.decoder import check_codes, decode
from mimo_ref.audio.encoder import encode_codes_padded, padded_rows
from mimo_ref.audio.mel import check_wave, log_mel_frames, mel_frames
from mimo_ref.bucketing import bucket_length
from mimo_ref.layers import Params

SEGMENT_FRAMES = 6000  # official preprocess_input: segment_size = 6000 mel frames (60 s at 100 Hz)
MAX_PACKED_FRAMES = 256000  # official encode_batch: max_length of one packed group, in mel frames
DECODE_CHUNK_FRAMES = 1500  # official forward: segment_len = 1500 code frames (60 s at 25 Hz)
EMPTY_AUDIO_SAMPLES = 24000  # official forward: no speech tokens -> torch.zeros(24000) is written
# Segments encoded per jitted call. Not official (the official call takes a whole group, up to 42 segments, at
# once); any value gives the same codes. One segment bounds memory at one [N, T2, T2] attention score tensor per
# layer (20 x 3000 x 3000 float32 = 720 MB for the real tokenizer, 150 MB for the bundled tiny one).
SEGMENTS_PER_CALL = 1


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
    wave = check_wave(wave_24k, what="wave_24k")
    if wave.dtype != np.float32:
        wave = wave.astype(np.float32)  # a copy only when the caller's wave is not float32 already
    pad = cfg.nfft // 2
    if wave.shape[0] <= pad:
        # torch.stft's reflect padding needs more samples than it pads
        raise ValueError(f"wave has {wave.shape[0]} samples; the centered STFT needs more than {pad}")
    parts = []
    start = 0  # first mel frame of the current segment
    for group in group_by_length(segment_lengths(mel_frames(wave.shape[0], cfg), SEGMENT_FRAMES), MAX_PACKED_FRAMES):
        pack_length = max(group)  # the official packed call's batch length: all a segment needs of the others
        bucket = bucket_length(pack_length)  # one compiled shape for every call of the group
        for first in range(0, len(group), SEGMENTS_PER_CALL):
            rows = []
            for n in group[first : first + SEGMENTS_PER_CALL]:
                rows.append(np.asarray(log_mel_frames(wave, cfg, start=start, frames=n, bucket=bucket)))  # [n, M]
                start += n
            batch, lengths = padded_rows(rows, min(SEGMENTS_PER_CALL, len(group)), bucket, np.float32)
            codes, code_lengths = encode_codes_padded(
                params["encoder"], jnp.asarray(batch), jnp.asarray(lengths), jnp.int32(pack_length), cfg=cfg, n_q=n_q
            )  # [B', Tb, M] -> [n_q, B', T3]
            codes, code_lengths = np.asarray(codes), np.asarray(code_lengths)
            parts += [codes[:, row, : code_lengths[row]] for row in range(len(rows))]  # [n_q, B', T3] -> [n_q, n]
    return np.concatenate(parts, axis=1).astype(np.int64)  # segments x [n_q, n] -> [n_q, T']


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
