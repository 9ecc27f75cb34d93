"""Writing waveform chunks as they are produced: a growing .wav file, or raw 16-bit PCM on a byte stream.

Both write exactly the samples :func:`mimo_ref.audio_io.write_wav` would write for the concatenated chunks
(the float -> 16-bit conversion is soundfile's, done chunk by chunk on the same floats), so a streamed answer's
file is byte-identical to the one-shot writer's file of the same waveform.

- :func:`write_growing_wav`: a 44-byte PCM WAV header (mono, 16-bit) whose sizes are rewritten after every
  chunk, so at any moment the file is a valid WAV of everything produced so far (a player or ``soundfile`` can
  open it while it grows). Deliberately not atomic (unlike ``write_wav``): the partial file is the point; an
  interrupted run leaves a valid WAV of the audio produced until then.
- :func:`write_pcm_stream`: headerless little-endian signed 16-bit mono samples (``-o -`` on the command line),
  flushed after every chunk, e.g. for ``mimo-ref tts ... --stream -o - | aplay -f S16_LE -r 24000 -c 1``.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

BYTES_PER_SAMPLE = 2  # 16-bit PCM, mono
HEADER_BYTES = 44  # RIFF + fmt (16 bytes, PCM) + data chunk headers


def pcm16_bytes(wave: np.ndarray, sr: int) -> bytes:
    """``wave`` ``[samples]`` float -> little-endian 16-bit PCM bytes, converted by soundfile exactly as
    :func:`mimo_ref.audio_io.write_wav` converts (clipped to [-1, 1], scaled by 32767)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, np.float32).reshape(-1), int(sr), subtype="PCM_16", format="RAW", endian="LITTLE")
    return buffer.getvalue()


def wav_header(data_bytes: int, sr: int) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV holding ``data_bytes`` bytes of samples."""
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", 36 + data_bytes),  # bytes after this field: "WAVE" + fmt chunk (24) + data header (8)
            b"WAVE",
            b"fmt ",
            struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * BYTES_PER_SAMPLE, BYTES_PER_SAMPLE, 8 * BYTES_PER_SAMPLE),
            b"data",
            struct.pack("<I", data_bytes),
        ]
    )


def write_growing_wav(path: str | os.PathLike, chunks: Iterable[np.ndarray], sr: int) -> int:
    """Write each chunk ``[samples]`` to the WAV file ``path`` as it arrives; returns the samples written.

    The header's sizes are updated and the file flushed after every chunk. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_bytes = 0
    with open(path, "wb") as f:
        f.write(wav_header(0, sr))
        f.flush()
        for wave in chunks:
            pcm = pcm16_bytes(wave, sr)
            f.seek(0, os.SEEK_END)
            f.write(pcm)
            data_bytes += len(pcm)
            f.seek(0)
            f.write(wav_header(data_bytes, sr))
            f.flush()
    return data_bytes // BYTES_PER_SAMPLE


def write_pcm_stream(stream: BinaryIO, chunks: Iterable[np.ndarray], sr: int) -> int:
    """Write each chunk ``[samples]`` to ``stream`` as raw 16-bit PCM, flushing after each; returns the samples."""
    samples = 0
    for wave in chunks:
        pcm = pcm16_bytes(wave, sr)
        stream.write(pcm)
        stream.flush()
        samples += len(pcm) // BYTES_PER_SAMPLE
    return samples
