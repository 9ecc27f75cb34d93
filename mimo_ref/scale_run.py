"""Real-shape runs on one machine: the audio tokenizer's encode + decode, and whole tasks with the 7B LM.

Scripts, not tests (they need the real-shape checkpoints of ``mimo-ref make-checkpoint``, 21 GB on disk, and up to
20 GB of memory). Each prints one JSON object with wall times and the process's peak RSS; ``docs/scale.md`` has the
figures measured on a 24 GB, 2-core CPU machine.

    python -m mimo_ref.scale_run tokenizer DIR/audio_tokenizer [--seconds 30]
    python -m mimo_ref.scale_run tasks DIR/lm DIR/audio_tokenizer [--new-groups 8] [--audio-weights bfloat16]

``tasks`` runs ``tts`` and ``asr`` through :func:`mimo_ref.pipeline.load` exactly as a user would, float32 compute
with the LM's bf16 weights as stored; ``--audio-weights bfloat16`` holds the tokenizer's float32 weights in bf16
(5.2 GB -> 2.6 GB) when the LM and a float32 tokenizer together do not fit the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def signal_wave(seconds: float, rate: int) -> np.ndarray:
    """A deterministic speech-like test signal: a few harmonics with a slow amplitude envelope, plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    tone = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((140, 280, 560, 1120)))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * tone * envelope + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def tokenizer_figures(folder: str, seconds: float) -> dict:
    from mimo_ref import audio

    t0 = time.perf_counter()
    params, cfg = audio.load_audio_tokenizer(folder)
    load_s = time.perf_counter() - t0
    wave = signal_wave(seconds, cfg.sampling_rate)
    out = {"seconds_of_audio": seconds, "load_s": round(load_s, 1)}
    for run in ("first", "second"):  # the first includes compilation
        t0 = time.perf_counter()
        codes = np.asarray(audio.wav_to_codes(params, cfg, wave, 8))
        t1 = time.perf_counter()
        wav = np.asarray(audio.codes_to_wav(params, cfg, codes))
        t2 = time.perf_counter()
        out[f"encode_s_{run}"] = round(t1 - t0, 1)
        out[f"decode_s_{run}"] = round(t2 - t1, 1)
    out |= {"code_frames": int(codes.shape[1]), "samples": int(wav.shape[0]), "peak_rss_gb": round(peak_rss_gb(), 2)}
    return out


def task_figures(lm_folder: str, audio_folder: str, new_groups: int, audio_weights: str | None, seconds: float) -> dict:
    import dataclasses

    from mimo_ref import pipeline
    from mimo_ref.precision import PRESETS

    audio_precision = PRESETS["float32"]
    if audio_weights:
        audio_precision = dataclasses.replace(audio_precision, weights=audio_weights)
    t0 = time.perf_counter()
    pipe = pipeline.load(lm_folder, audio_folder, precision="float32", audio_precision=audio_precision)
    out = {"load_s": round(time.perf_counter() - t0, 1), "audio_weights": audio_precision.weights}
    t0 = time.perf_counter()
    tts = pipe.tts("Hello from the real shapes.", max_new_groups=new_groups)
    out |= {"tts_s": round(time.perf_counter() - t0, 1), "tts_samples": int(tts.wav.shape[0])}
    wave = signal_wave(seconds, pipe.audio_cfg.sampling_rate)
    t0 = time.perf_counter()
    asr = pipe.asr((wave, pipe.audio_cfg.sampling_rate), max_new_groups=new_groups)
    out |= {"asr_s": round(time.perf_counter() - t0, 1), "asr_generated_groups": int(asr.generated_ids.shape[1] // 4)}
    out |= {"new_groups": new_groups, "asr_audio_seconds": seconds, "peak_rss_gb": round(peak_rss_gb(), 2)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mimo_ref.scale_run", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("tokenizer", help="encode + decode of a test signal with a real-shape audio tokenizer")
    p.add_argument("folder")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the test signal (default 30)")
    p = sub.add_parser("tasks", help="tts and asr with the real-shape LM and audio tokenizer")
    p.add_argument("lm")
    p.add_argument("audio_tokenizer")
    p.add_argument("--new-groups", type=int, default=8, help="groups each task generates at most (default 8)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the asr input (default 10)")
    p.add_argument(
        "--audio-weights", choices=["bfloat16"], default=None, help="hold the tokenizer in bf16 (default: as stored)"
    )
    args = parser.parse_args(argv)
    if args.what == "tokenizer":
        result = tokenizer_figures(args.folder, args.seconds)
    else:
        result = task_figures(args.lm, args.audio_tokenizer, args.new_groups, args.audio_weights, args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
