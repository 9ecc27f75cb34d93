"""Peak memory of encoding long audio: ``python -m mimo_ref.long_audio_bench --minutes 1 20 60``.

Each length runs :func:`mimo_ref.audio.wav_to_codes` in a **fresh process** (so one run's peak cannot hide
another's) on a synthetic mono 24 kHz wave (seeded noise, float32), and reports that process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), split into what was resident before encoding (Python, JAX,
the tokenizer params, the input wave itself) and the growth during ``wav_to_codes``. The input wave is the caller's
array (4 bytes a sample, 5.8 MB a minute at 24 kHz) and is listed on its own line: encoding cannot hold less than
its input. The parent polls each child's RSS and stops it above ``--limit-gb`` (default 6), so a run of the
unbounded encoder cannot exhaust a shared machine; such a run is reported as "stopped above" the limit.

``--one-call`` measures the official structure instead (what ``wav_to_codes`` did before it was bounded): the
whole file's log-mel at once, then each group of up to 256000 mel frames in one packed call
(:func:`packed_reference_codes`; same codes).

Figures measured with it are in ``docs/audio_io.md`` ("Long audio").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from mimo_ref.audio_io import TOKENIZER_SR as SAMPLE_RATE
from mimo_ref.bundled import BUNDLED_AUDIO_TOKENIZER, REPO_ROOT


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_wave(seconds: float, seed: int = 0):
    """Seeded speech-band noise ``[samples]`` float32 at 24 kHz, written minute by minute (no float64 copy)."""
    import numpy as np

    samples = int(round(seconds * SAMPLE_RATE))
    wave = np.empty(samples, np.float32)
    rng = np.random.default_rng(seed)
    step = 60 * SAMPLE_RATE
    for start in range(0, samples, step):
        n = min(step, samples - start)
        wave[start : start + n] = rng.standard_normal(n, dtype=np.float32)
        wave[start : start + n] *= np.float32(0.1)
    return wave


def packed_reference_codes(params, cfg, wave, n_q: int):
    """The official encoding structure, literally: log-mel of the whole wave, then each group of segments in one
    packed call (``encode`` with all of the group's segments at once). -> codes ``[n_q, T']``."""
    import numpy as np

    from mimo_ref.audio import encode, log_mel, waveform

    mels = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))  # [samples] -> [T, M]
    parts, start = [], 0
    lengths = waveform.segment_lengths(mels.shape[0], waveform.SEGMENT_FRAMES)
    for group in waveform.group_by_length(lengths, waveform.MAX_PACKED_FRAMES):
        parts.append(encode(params, mels[start : start + sum(group)], group, cfg=cfg, n_q=n_q).codes)
        start += sum(group)
    return np.concatenate(parts, axis=1)  # groups x [n_q, T'_g] -> [n_q, T']


def child(minutes: float, tokenizer: str, n_q: int, save: str | None, one_call: bool = False) -> dict:
    """One measurement, in this (fresh) process: load, make the wave, encode, report."""
    import numpy as np

    from mimo_ref.audio import load_audio_tokenizer, wav_to_codes

    params, cfg = load_audio_tokenizer(tokenizer)
    wave = synthetic_wave(minutes * 60)
    before = peak_rss_mb()
    start = time.perf_counter()
    encoder = packed_reference_codes if one_call else wav_to_codes
    codes = np.asarray(encoder(params, cfg, wave, n_q))  # [n_q, T']
    seconds = time.perf_counter() - start
    if save:
        np.save(save, codes)
    return {
        "minutes": minutes,
        "encoder": "one call per group" if one_call else "wav_to_codes",
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_encode_mb": round(before, 1),
        "input_wave_mb": round(wave.nbytes / 2**20, 1),
        "codes_shape": list(codes.shape),
        "codes_mb": round(codes.nbytes / 2**20, 2),
        "encode_s": round(seconds, 1),
    }


def run_one(
    minutes: float, tokenizer: str, n_q: int, limit_gb: float, save: str | None, one_call: bool = False
) -> dict:
    """Start a child process for one length, watch its RSS, return its report (or the limit it passed)."""
    command = [sys.executable, "-m", "mimo_ref.long_audio_bench", "--child", str(minutes), "--tokenizer", tokenizer]
    command += ["--n-q", str(n_q)] + (["--save", save] if save else []) + (["--one-call"] if one_call else [])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    limit_kb = limit_gb * 2**20
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        except (OSError, StopIteration):
            rss_kb = 0
        if rss_kb > limit_kb:
            proc.kill()
            proc.wait()
            return {"minutes": minutes, "one_call": one_call, "stopped_above_gb": limit_gb}
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"measurement of {minutes} min failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 20, 60], help="audio lengths to measure")
    parser.add_argument("--tokenizer", default=str(BUNDLED_AUDIO_TOKENIZER), help="tokenizer checkpoint folder")
    parser.add_argument("--n-q", type=int, default=8, help="code levels kept (the LM keeps 8)")
    parser.add_argument("--limit-gb", type=float, default=6.0, help="stop a run whose RSS passes this")
    parser.add_argument("--save", default=None, help="save the codes of each run to this .npy file")
    parser.add_argument("--one-call", action="store_true", help="measure the one-call-per-group structure instead")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.tokenizer, args.n_q, args.save, args.one_call)))
        return 0
    for minutes in args.minutes:
        report = run_one(minutes, args.tokenizer, args.n_q, args.limit_gb, args.save, args.one_call)
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
