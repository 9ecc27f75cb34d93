"""Streaming benchmark: time to first audio and total time of a spoken answer of a given length.

``python -m mimo_ref.stream_bench [--seconds 10] [--preset 7b --random-weights] [--precision float32]`` prints a
JSON object (keys in :data:`JSON_KEYS`). It runs exactly the streaming path of the spoken tasks
(:meth:`mimo_ref.pipeline.MimoAudio.run_stream`): :func:`mimo_ref.generate.generate_stream` group by group,
:func:`mimo_ref.pipeline.speech_chunks` (every group's frames fed as they appear), and
:func:`mimo_ref.pipeline.stream_speech` (the official streaming decode, overlaps 250 / 40 by default).

The answer is forced to be all speech, as ``mimo-ref bench`` does by default: the text head is zeroed so greedy
picks id 0, id 0 is declared ``<|empty|>``, and the prompt opens speech; every group then carries G = 4 code
frames (160 ms), so a ``seconds`` long answer takes ``ceil(seconds * 25 / 4)`` speech groups (25 Hz: the
tokenizer's ``sampling_rate / samples_per_code``) plus one (the last generated group never belongs to the
official speech span). The prompt is ``--prompt-groups`` groups of random speech codes. This changes what is
computed, not how long it takes.

Models: a checkpoint pair (default: the bundled tiny ones) or ``--preset 7b --random-weights``: the real LM shapes
(bf16-stored random weights, about 16 GB) with the real tokenizer shapes
(``tests/fixtures/real_shapes/mimo_audio_tokenizer.config.json``, float32 random weights, about 5 GB). The first
run in the process includes compilation ("cold"); the warm figures are the median of ``--repeats`` further runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from mimo_ref import audio as audio_tok
from mimo_ref import bench, generate, lm, pipeline, sampling
from mimo_ref.audio.config import audio_config_from_dict
from mimo_ref.audio.streaming import DEFAULT_LEFT_OVERLAP, DEFAULT_RIGHT_OVERLAP, StreamingConfig, stream_frames_bound
from mimo_ref.precision import resolve_precision
from mimo_ref.random_weights import random_params, speech_prompt, synthetic_special
from mimo_ref.scale import REAL_AUDIO_CONFIG

JSON_KEYS = {
    "source": "the checkpoints, or the preset with random weights",
    "precision": "precision preset of both models",
    "audio_s": "seconds of audio streamed (frames x 40 ms)",
    "speech_groups": "speech groups in the answer (4 code frames each)",
    "chunk_frames": "code frames per streaming-decode call",
    "left_overlap / right_overlap": "streaming overlaps in code frames",
    "chunks": "waveform chunks the stream yielded",
    "first_audio_cold_s": "first run in the process: seconds from the start to the first audio chunk (compiles)",
    "total_cold_s": "first run: seconds to the last chunk",
    "first_audio_s": "warm (compiled): seconds from the start to the first audio chunk, median of --repeats",
    "total_s": "warm: seconds to the last chunk (generation and decoding of the whole answer), median",
    "real_time_factor": "total_s / audio_s (below 1: faster than playback)",
    "one_shot_first_audio_s": "with --one-shot: warm seconds of one-shot generate + decode, i.e. when the first "
    "audio is available without streaming",
    "backend / devices": "JAX backend and devices",
}


def load_models(model, audio_tokenizer, preset: str | None, precision, seed: int):
    """(LM params, LM cfg, special tokens, tokenizer params, tokenizer cfg, source label)."""
    if preset is None:
        params, cfg, special = lm.load_lm(model or pipeline.BUNDLED_LM, precision)
        audio_params, audio_cfg = audio_tok.load_audio_tokenizer(
            audio_tokenizer or pipeline.BUNDLED_AUDIO_TOKENIZER, precision
        )
        return params, cfg, special, audio_params, audio_cfg, f"{model or 'bundled tiny LM'} + tokenizer"
    from mimo_ref.testing.strategies import audio_params as random_audio_params

    cfg = dataclasses.replace(bench.preset_config(preset), compute_dtype=precision.compute)
    storage = precision.storage_dtype(bench.PRESET_CHECKPOINT_DTYPE[preset])
    params = random_params(lm.param_shapes(cfg), seed, storage)
    special = synthetic_special(cfg.vocab_size)
    audio_cfg = audio_config_from_dict(json.loads(REAL_AUDIO_CONFIG.read_text()), REAL_AUDIO_CONFIG)
    audio_cfg = dataclasses.replace(audio_cfg, compute_dtype=precision.compute)
    audio_params = random_audio_params(audio_cfg, seed, precision.dtype)
    return params, cfg, special, audio_params, audio_cfg, f"preset {preset} + real tokenizer shapes, random weights"


def run_stream_bench(
    *,
    model: str | None = None,
    audio_tokenizer: str | None = None,
    preset: str | None = None,
    seconds: float = 10.0,
    prompt_groups: int = 32,
    precision: str = "float32",
    left_overlap: int = DEFAULT_LEFT_OVERLAP,
    right_overlap: int = DEFAULT_RIGHT_OVERLAP,
    chunk_frames: int | None = None,
    repeats: int = 2,
    one_shot: bool = False,
    seed: int = 0,
) -> dict:
    """Time a forced all-speech answer of ``seconds`` through the streaming path. -> JSON-able dict."""
    resolved = resolve_precision(precision)
    params, cfg, special, audio_params, audio_cfg, source = load_models(model, audio_tokenizer, preset, resolved, seed)
    params = params | {"lm_head": {"weight": jnp.zeros_like(params["lm_head"]["weight"])}}  # greedy text id 0
    special = dataclasses.replace(special, empty=0)  # ... declared <|empty|>: every group is a speech group
    g = cfg.group_size
    code_rate_hz = audio_cfg.sampling_rate / audio_cfg.samples_per_code  # 25 code frames per second (real)
    speech_groups = math.ceil(seconds * code_rate_hz / g)
    prompt = speech_prompt(cfg, special, prompt_groups, seed)
    options = dict(
        max_new_groups=speech_groups + 1,  # the last generated group is never part of the official span
        min_new_groups=0,
        stop_tokens=(),
        text_sampler=sampling.GREEDY,
        speech_sampler=sampling.task_samplers("tts")[1],
        key=jax.random.key(seed),
    )
    config = StreamingConfig(left_overlap=left_overlap, right_overlap=right_overlap)
    chunk = chunk_frames or g  # default: every group fed as it appears, as MimoAudio.run_stream
    pad_to = stream_frames_bound(config, chunk)

    def stream_once() -> tuple[float, float, int, int]:
        """(seconds to the first chunk, seconds to the last, chunks, samples), timed from the call."""
        start = time.perf_counter()
        rows = (group[0] for group in generate.generate_stream(params, cfg, special, prompt, **options))
        chunks = pipeline.speech_chunks(rows, special=special, cfg=cfg, chunk_frames=chunk, opened=True)
        first, count, samples = None, 0, 0
        for wav in pipeline.stream_speech(chunks, (audio_params, audio_cfg), config, pad_to=pad_to):
            if first is None:
                first = time.perf_counter() - start  # chunks are numpy arrays: the work behind them is done
            count += 1
            samples += wav.shape[0]
        return first, time.perf_counter() - start, count, samples

    first_cold, total_cold, chunks, samples = stream_once()
    warm = [stream_once() for _ in range(repeats)]
    result = {
        "source": source,
        "precision": precision,
        "audio_s": round(samples / audio_cfg.sampling_rate, 3),
        "speech_groups": speech_groups,
        "chunk_frames": chunk,
        "left_overlap": left_overlap,
        "right_overlap": right_overlap,
        "chunks": chunks,
        "first_audio_cold_s": round(first_cold, 3),
        "total_cold_s": round(total_cold, 3),
        "first_audio_s": round(statistics.median(w[0] for w in warm), 4),
        "total_s": round(statistics.median(w[1] for w in warm), 4),
    }
    result["real_time_factor"] = round(result["total_s"] / max(result["audio_s"], 1e-9), 4)
    if one_shot:

        def one_shot_once() -> float:
            start = time.perf_counter()
            out = generate.generate(params, cfg, special, prompt, **options)
            codes = pipeline.speech_span(out.generated(0), special=special, cfg=cfg)
            audio_tok.codes_to_wav(audio_params, audio_cfg, codes)
            return time.perf_counter() - start

        one_shot_once()  # compile
        result["one_shot_first_audio_s"] = round(statistics.median(one_shot_once() for _ in range(repeats)), 4)
    result["backend"] = jax.default_backend()
    result["devices"] = [str(d) for d in jax.devices()]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mimo_ref.stream_bench",
        description="time to first audio and total time of a streamed spoken answer (JSON on stdout)",
        epilog="JSON keys:\n" + "\n".join(f"  {k}: {v}" for k, v in JSON_KEYS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="LM checkpoint (default: the bundled tiny one)")
    parser.add_argument("--audio-tokenizer", default=None, help="tokenizer checkpoint (default: the bundled one)")
    parser.add_argument("--preset", default=None, choices=["7b", "small"], help="real-shape LM preset")
    parser.add_argument("--random-weights", action="store_true", help="required with --preset")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the answer (default: 10)")
    parser.add_argument("--prompt-groups", type=int, default=32, help="prompt length in groups (default: 32)")
    parser.add_argument("--precision", default="float32", help="precision preset of both models (default: float32)")
    parser.add_argument("--left-overlap", type=int, default=DEFAULT_LEFT_OVERLAP)
    parser.add_argument("--right-overlap", type=int, default=DEFAULT_RIGHT_OVERLAP)
    parser.add_argument(
        "--chunk-frames", type=int, default=None, help="code frames per decode call (default: 4, one group)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="warm runs; the median is reported (default: 2)")
    parser.add_argument("--one-shot", action="store_true", help="also time one-shot generate + decode")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.preset is None) == args.random_weights:
        parser.error("--preset and --random-weights go together (a preset has random weights)")
    if args.preset is not None and (args.model or args.audio_tokenizer):
        parser.error("--preset builds both models with random weights; drop --model / --audio-tokenizer")
    if args.seconds <= 0 or args.repeats < 1 or args.prompt_groups < 1:
        parser.error("--seconds must be > 0, --repeats and --prompt-groups >= 1")
    if args.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    result = run_stream_bench(
        model=args.model,
        audio_tokenizer=args.audio_tokenizer,
        preset=args.preset,
        seconds=args.seconds,
        prompt_groups=args.prompt_groups,
        precision=args.precision,
        left_overlap=args.left_overlap,
        right_overlap=args.right_overlap,
        chunk_frames=args.chunk_frames,
        repeats=args.repeats,
        one_shot=args.one_shot,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
