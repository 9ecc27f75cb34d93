"""The ``mimo-ref`` command line: every official task, plus verify, bench, dump and compare.

Each task command loads an LM checkpoint (``--model``) and an audio tokenizer (``--audio-tokenizer``), folders or
Hugging Face repo ids, defaulting to the bundled tiny random-weight checkpoints in ``weights/`` (a note on stderr
says so: their output is noise). Text results go to stdout, waveforms to ``-o`` as 24 kHz 16-bit PCM .wav.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mimo_ref.cli_checks import CliError, HelpFormatter, check_args, generation_summary, stage_messages

EXAMPLES = {
    "tts": 'mimo-ref tts "Hello world" -o hello.wav --instruct "Speak slowly" --voice ref.wav',
    "asr": "mimo-ref asr speech.wav",
    "understand": 'mimo-ref understand speech.wav "What is the speaker\'s mood?" --thinking',
    "dialogue": "mimo-ref dialogue question.wav -o answer.wav --system-prompt 'You are helpful.'",
    "s2t": "mimo-ref s2t question.wav --thinking",
    "chat": 'mimo-ref chat "Tell me about MiMo-Audio"',
    "s2s": "mimo-ref s2s 'Convert the voice' --example in.wav 'The transcript.' out.wav input.wav -o converted.wav",
    "verify": "mimo-ref verify --golden-dir tests/fixtures/golden",
    "bench": "mimo-ref bench --preset small --random-weights --prompt-groups 32 --new-groups 32",
    "dump": "mimo-ref dump --audio speech.wav --text 'Hello' -o ref.safetensors",
    "compare": "mimo-ref compare ref.safetensors candidate.safetensors --rtol 1e-5 --only lm.patch_decoder",
    "make-checkpoint": "mimo-ref make-checkpoint --what both -o /data/scale_ckpt",
}


def note(message: str) -> None:
    print(f"mimo-ref: {message}", file=sys.stderr)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="LM checkpoint folder or HF repo id (default: bundled tiny model)")
    p.add_argument(
        "--audio-tokenizer", default=None, help="audio tokenizer folder or HF repo id (default: bundled tiny one)"
    )
    add_precision_arg(p)
    add_mesh_arg(p)
    p.add_argument(
        "--seed", type=int, default=0, help="sampling seed, also picks prompt templates; any integer (mod 2**32)"
    )
    p.add_argument(
        "--max-new-groups",
        type=int,
        default=None,
        help="cap on generated groups, 160 ms of speech each (default: as many as fit in the model's positions)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line on stderr (default: only on a terminal); --no-progress also silences the stage "
        "messages and the final summary line",
    )


PRECISION_HELP = (
    "float32 (default): float32 math on the weights as stored; float64: float64 math (1e-6 comparisons); "
    "bfloat16: bf16 weights and math (loose); official: what the official wrapper computes (weights and "
    "tokenizer buffers rounded to bf16, float32 math; reproduces its ids exactly). --dtype is an alias"
)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    from mimo_ref.precision import PRESETS

    p.add_argument(
        "--precision", "--dtype", dest="precision", default="float32", choices=sorted(PRESETS), help=PRECISION_HELP
    )


def mesh_arg(text: str) -> str:
    """``--mesh`` is checked when parsed (its device count when the model loads)."""
    from mimo_ref.sharding import ShardingError, parse_mesh

    try:
        parse_mesh(text)
    except ShardingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_mesh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mesh",
        type=mesh_arg,
        default=None,
        metavar="data=D,model=M",
        help="run on D*M devices: batch rows split over D, weights over M (tensor parallel), e.g. data=2,model=4 "
        "or model=8; see docs/sharding.md (default: one device)",
    )


def setup_dtype(precision: str) -> None:
    """float64 compute needs JAX's x64 mode, switched on before anything is traced."""
    if precision == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def load_pipeline(args):
    from mimo_ref import pipeline

    setup_dtype(args.precision)
    model = args.model or pipeline.BUNDLED_LM
    audio = args.audio_tokenizer or pipeline.BUNDLED_AUDIO_TOKENIZER
    if args.model is None or args.audio_tokenizer is None:
        note(
            "using the bundled tiny checkpoints in weights/: they have RANDOM weights, so the output is noise "
            "(pass --model XiaomiMiMo/MiMo-Audio-7B-Instruct --audio-tokenizer XiaomiMiMo/MiMo-Audio-Tokenizer)"
        )
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    pipe = pipeline.load(
        model, audio, precision=args.precision, progress=progress_printer() if show else None, mesh=args.mesh
    )
    args.task_start = time.perf_counter()  # the final summary line times the task, not the loading
    return pipe


def progress_printer(interval_s: float = 0.25):
    """A stderr progress line, redrawn at most every ``interval_s`` seconds."""
    start = time.perf_counter()
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] < interval_s:
            return
        last[0] = now
        rate = done / max(now - start, 1e-9)
        print(
            f"\rgenerating: {done} groups, {rate:.1f} groups/s (until a stop token, at most {total})",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


def existing_file(path: str) -> str:
    if not Path(path).is_file():
        raise CliError(f"audio file {path} does not exist")
    return path


def finish(pipe, out, args, *, audio: bool) -> int:
    from mimo_ref.audio_io import write_wav

    if pipe.progress is not None:
        print(file=sys.stderr)  # end the progress line
    if args.progress is not False:
        elapsed = time.perf_counter() - getattr(args, "task_start", time.perf_counter())
        note(generation_summary(pipe, out, max_new_groups=args.max_new_groups, elapsed_s=elapsed))
    print(out.text)
    if audio:
        if out.wav is None:
            raise CliError("the task produced no audio")
        rate = pipe.audio_cfg.sampling_rate
        write_wav(args.output, out.wav, rate)
        note(f"wrote {args.output} ({out.wav.shape[0] / rate:.2f} s at {rate / 1000:g} kHz)")
    return 0


def add_stream_args(p: argparse.ArgumentParser) -> None:
    """``--stream`` and its overlaps, for the tasks that answer in speech (docs/audio_streaming.md)."""
    from mimo_ref.audio.streaming import DEFAULT_LEFT_OVERLAP, DEFAULT_RIGHT_OVERLAP

    p.add_argument(
        "--stream",
        action="store_true",
        help="write the audio while it is generated (official streaming decode): -o grows as chunks arrive; "
        "-o - writes raw 16-bit little-endian 24 kHz mono PCM to stdout (the text then goes to stderr)",
    )
    p.add_argument(
        "--left-overlap",
        type=left_overlap_arg,
        default=DEFAULT_LEFT_OVERLAP,
        help="with --stream: code frames (40 ms each) of left context kept for the next chunk (official default)",
    )
    p.add_argument(
        "--right-overlap",
        type=right_overlap_arg,
        default=DEFAULT_RIGHT_OVERLAP,
        help="with --stream: code frames held back until later frames exist; the first audio needs one more "
        "(official default)",
    )


def left_overlap_arg(text: str) -> int:
    return count_arg(text, 1, "--left-overlap")  # 0 breaks the official cache bookkeeping (audio/streaming.py)


def right_overlap_arg(text: str) -> int:
    return count_arg(text, 0, "--right-overlap")


def count_arg(text: str, minimum: int, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} must be a whole number of code frames, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{option} must be >= {minimum}, got {value}")
    return value


def stream_options(args, results: list) -> dict:
    """Keyword arguments of a spoken task: none, or with ``--stream`` the streaming config and a result sink."""
    if not args.stream:
        return {}
    from mimo_ref.audio.streaming import StreamingConfig

    config = StreamingConfig(left_overlap=args.left_overlap, right_overlap=args.right_overlap)
    return {"stream": config, "on_result": results.append}


def finish_spoken(pipe, out, results: list, args) -> int:
    """Write a spoken answer: :func:`finish` for an Output; with ``--stream`` ``out`` is the generator of waveform
    chunks, each written as it comes (a growing .wav, or raw PCM on stdout for ``-o -``)."""
    if not args.stream:
        return finish(pipe, out, args, audio=True)
    from mimo_ref import stream_io

    start = getattr(args, "task_start", time.perf_counter())
    first_audio_s = []

    def timed(chunks):
        for wav in chunks:
            if not first_audio_s:
                first_audio_s.append(time.perf_counter() - start)
            yield wav

    rate = pipe.audio_cfg.sampling_rate
    if args.output == "-":
        samples = stream_io.write_pcm_stream(sys.stdout.buffer, timed(out), rate)
    else:
        samples = stream_io.write_growing_wav(args.output, timed(out), rate)
    if pipe.progress is not None:
        print(file=sys.stderr)  # end the progress line
    result = results[0]
    if args.progress is not False:
        elapsed = time.perf_counter() - start
        note(generation_summary(pipe, result, max_new_groups=args.max_new_groups, elapsed_s=elapsed))
    print(result.text, file=sys.stderr if args.output == "-" else sys.stdout)
    where = "stdout (raw 16-bit PCM)" if args.output == "-" else args.output
    seconds, first = samples / rate, first_audio_s[0]
    note(f"streamed {seconds:.2f} s at {rate / 1000:g} kHz to {where}; first audio {first:.2f} s after the start")
    return 0


def cmd_tts(args) -> int:
    if not args.text.strip():
        raise CliError("the text to speak is empty")
    pipe = load_pipeline(args)
    voice = existing_file(args.voice) if args.voice else None
    results: list = []  # with --stream: the final Output
    out = pipe.tts(
        args.text,
        instruct=args.instruct,
        voice=voice,
        read_text_only=not args.free,
        seed=args.seed,
        max_new_groups=args.max_new_groups,
        **stream_options(args, results),
    )
    return finish_spoken(pipe, out, results, args)


def cmd_asr(args) -> int:
    audio = existing_file(args.audio)
    pipe = load_pipeline(args)
    return finish(pipe, pipe.asr(audio, seed=args.seed, max_new_groups=args.max_new_groups), args, audio=False)


def cmd_understand(args) -> int:
    audio = existing_file(args.audio)
    pipe = load_pipeline(args)
    out = pipe.understand(
        audio, args.question, thinking=args.thinking, seed=args.seed, max_new_groups=args.max_new_groups
    )
    return finish(pipe, out, args, audio=False)


def cmd_dialogue(args) -> int:
    audio = existing_file(args.audio)
    voice = existing_file(args.voice) if args.voice else None
    pipe = load_pipeline(args)
    results: list = []  # with --stream: the final Output
    out = pipe.dialogue(
        audio,
        system_prompt=args.system_prompt,
        voice=voice,
        seed=args.seed,
        max_new_groups=args.max_new_groups,
        **stream_options(args, results),
    )
    return finish_spoken(pipe, out, results, args)


def cmd_s2t(args) -> int:
    audio = existing_file(args.audio)
    pipe = load_pipeline(args)
    out = pipe.s2t(audio, thinking=args.thinking, seed=args.seed, max_new_groups=args.max_new_groups)
    return finish(pipe, out, args, audio=False)


def cmd_chat(args) -> int:
    if not args.text.strip():
        raise CliError("the message is empty")
    pipe = load_pipeline(args)
    out = pipe.chat(args.text, thinking=args.thinking, seed=args.seed, max_new_groups=args.max_new_groups)
    return finish(pipe, out, args, audio=False)


def cmd_s2s(args) -> int:
    audio = existing_file(args.audio)
    examples = [
        {"input_audio": existing_file(i), "output_transcription": t, "output_audio": existing_file(o)}
        for i, t, o in (args.example or [])
    ]
    pipe = load_pipeline(args)
    results: list = []  # with --stream: the final Output
    out = pipe.s2s(
        args.instruction,
        examples,
        audio,
        seed=args.seed,
        max_new_groups=args.max_new_groups,
        **stream_options(args, results),
    )
    return finish_spoken(pipe, out, results, args)


def cmd_verify(args) -> int:
    from mimo_ref import verify

    rows = verify.run_all(Path(args.golden_dir) if args.golden_dir else None, only=args.only)
    print(verify.format_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from mimo_ref import bench

    setup_dtype(args.precision)
    if args.random_weights and args.preset is None:
        raise CliError("--random-weights needs --preset (7b or small)")
    if args.preset is not None and not args.random_weights:
        raise CliError("--preset builds a model with random weights: add --random-weights")
    from mimo_ref.pipeline import BUNDLED_LM

    model = None if args.preset else str(args.model or BUNDLED_LM)
    result = bench.run_bench(
        model=model,
        preset=args.preset,
        prompt_groups=args.prompt_groups,
        new_groups=args.new_groups,
        batch=args.batch,
        precision=args.precision,
        weights=args.weights,
        repeats=args.repeats,
        force_speech=not args.natural,
        seed=args.seed,
        mesh=args.mesh,
        breakdown=args.breakdown,
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_dump(args) -> int:
    from mimo_ref import trace

    setup_dtype(args.precision)
    manifest = trace.dump_run(
        output=Path(args.output),
        model=args.model,
        audio_tokenizer=args.audio_tokenizer,
        dtype=args.precision,  # a precision preset name
        text=args.text,
        audio=args.audio,
        mel=args.mel,
        codes=args.codes,
        input_ids=args.input_ids,
        local_hidden=args.local_hidden,
        seed=args.seed,
        new_groups=args.new_groups,
    )
    note(f"wrote {args.output} ({len(manifest['tensors'])} tensors) and {Path(args.output).with_suffix('.json')}")
    return 0


def cmd_compare(args) -> int:
    from mimo_ref import trace

    report = trace.compare_dumps(
        Path(args.reference),
        Path(args.candidate),
        rtol=args.rtol,
        atol=args.atol,
        only=args.only or (),
        require=args.require,
    )
    print(trace.format_report(report, fmt=args.format))
    return 0 if report["passed"] else 1


def cmd_make_checkpoint(args) -> int:
    import resource

    from mimo_ref import scale

    summaries = scale.make_checkpoints(
        args.output,
        what=args.what,
        width_divisor=args.width_divisor,
        layers=args.layers,
        seed=args.seed,
        max_shard_bytes=scale.parse_size(args.shard_size),
        force=args.force,
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    for s in summaries:
        size = f"{s['bytes'] / 1e9:.2f} GB in {len(s['files'])} file(s)"
        note(f"wrote {s['folder']}: {s['tensors']} tensors, {size}, {s['seconds']:.1f} s")
    print(json.dumps({"checkpoints": summaries, "peak_rss_mib": round(peak_mb, 1)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimo-ref",
        description="MiMo-Audio reference implementation in JAX: every official task, golden verification, "
        "benchmarks, activation dumps.",
        epilog="Examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, fn):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"Example:\n  {EXAMPLES[name]}",
            formatter_class=HelpFormatter,  # every option's help ends with its default
        )
        p.set_defaults(fn=fn)
        return p

    p = command("tts", "text to speech (with optional style instruction and voice prompt)", cmd_tts)
    p.add_argument("text", help="the text to speak (with --free: a free-form instruction)")
    p.add_argument(
        "-o", "--output", default="out.wav", help="output .wav, 24 kHz 16-bit PCM; an existing file is replaced"
    )
    p.add_argument("--instruct", default=None, help="style instruction, e.g. 'Speak slowly and warmly'")
    p.add_argument("--voice", default=None, help="voice prompt audio file (needs --instruct, as officially)")
    p.add_argument("--free", action="store_true", help="free-form: TEXT is an instruction, not text to read")
    add_stream_args(p)
    add_model_args(p)

    p = command("asr", "speech recognition: audio file -> text", cmd_asr)
    p.add_argument("audio", help="input audio file (any rate and channel count libsndfile reads)")
    add_model_args(p)

    p = command("understand", "audio understanding: answer a question about an audio file", cmd_understand)
    p.add_argument("audio", help="input audio file (any rate and channel count libsndfile reads)")
    p.add_argument("question", help="the question about the audio")
    p.add_argument("--thinking", action="store_true", help="let the model think before answering (official mode)")
    add_model_args(p)

    p = command("dialogue", "spoken dialogue: speech in, speech (and text) out", cmd_dialogue)
    p.add_argument("audio", help="the spoken question: an audio file")
    p.add_argument(
        "-o", "--output", default="out.wav", help="output .wav of the spoken answer; an existing file is replaced"
    )
    p.add_argument("--system-prompt", default=None, help="system prompt put in the first user turn (default: none)")
    p.add_argument("--voice", default=None, help="voice prompt audio file for the answer (default: none)")
    add_stream_args(p)
    add_model_args(p)

    p = command("s2t", "speech-to-text dialogue: a spoken question, a text answer", cmd_s2t)
    p.add_argument("audio", help="the spoken question: an audio file")
    p.add_argument("--thinking", action="store_true", help="let the model think before answering (official mode)")
    add_model_args(p)

    p = command("chat", "text dialogue", cmd_chat)
    p.add_argument("text", help="the message")
    p.add_argument("--thinking", action="store_true", help="let the model think before answering (official mode)")
    add_model_args(p)

    p = command("s2s", "in-context speech-to-speech from examples", cmd_s2s)
    p.add_argument("instruction", help="what to do, e.g. 'Convert the voice'")
    p.add_argument("audio", help="the input audio file to convert")
    p.add_argument(
        "--example",
        nargs=3,
        action="append",
        metavar=("IN_WAV", "TRANSCRIPT", "OUT_WAV"),
        help="an in-context example: input audio, transcript of the output, output audio (repeatable; default: none)",
    )
    p.add_argument("-o", "--output", default="out.wav", help="output .wav; an existing file is replaced")
    add_stream_args(p)
    add_model_args(p)

    p = command("verify", "run every golden case and print a table; exit 1 on any failure", cmd_verify)
    p.add_argument("--golden-dir", default=None, help="fixture set (default: the bundled copy)")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")

    p = command("bench", "time generation: compile, prefill, seconds per group (JSON)", cmd_bench)
    from mimo_ref.bench import json_keys_help

    p.epilog += "\n\n" + json_keys_help()
    p.add_argument("--model", default=None, help="checkpoint (default: bundled tiny model)")
    p.add_argument("--preset", default=None, choices=["7b", "small"], help="real-shape preset (with --random-weights)")
    p.add_argument("--random-weights", action="store_true", help="build the --preset model with random weights")
    p.add_argument("--prompt-groups", type=int, default=32, help="prompt length in groups (random speech codes)")
    p.add_argument("--new-groups", type=int, default=32, help="groups to generate per row (at least 2)")
    p.add_argument("--batch", type=int, default=1, help="rows generated together (one prompt each)")
    add_precision_arg(p)
    add_mesh_arg(p)
    p.add_argument(
        "--weights",
        default=None,
        choices=["checkpoint", "bfloat16"],
        help="weight storage, overriding the precision preset's: as the checkpoint stores them (the 7b preset "
        "stands for a bf16 checkpoint) or rounded to bfloat16 (default: the preset's)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, prompts and sampling (mod 2**32)")
    p.add_argument("--natural", action="store_true", help="let the model choose text groups (default: all speech)")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each stage of a group step alone and the weight-read floor (stage_* and floor_* keys)",
    )

    p = command("dump", "write every named intermediate tensor of a run to safetensors + JSON manifest", cmd_dump)
    p.add_argument("-o", "--output", required=True, help="output .safetensors (manifest written beside it)")
    p.add_argument("--model", default=None, help="LM checkpoint folder or HF repo id (default: bundled tiny model)")
    p.add_argument(
        "--audio-tokenizer", default=None, help="audio tokenizer folder or HF repo id (default: bundled tiny one)"
    )
    add_precision_arg(p)
    p.add_argument("--text", default=None, help="text to tokenize as the prompt")
    p.add_argument("--audio", default=None, help="audio file to run through the tokenizer and the LM")
    p.add_argument("--mel", default=None, help=".npy log-mel [T, M]: start at the encoder (then decoder and LM)")
    p.add_argument("--codes", default=None, help=".npy codes [levels >= C, T]: start at the decoder (and the LM)")
    p.add_argument("--input-ids", default=None, help=".npy file of LM input ids [C+1, L]: start at the LM")
    p.add_argument("--local-hidden", default=None, help=".npy patch-decoder input [Dl] or [B, Dl]: that alone")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, any integer (mod 2**32)")
    p.add_argument("--new-groups", type=int, default=2, help="groups to generate (traced step by step)")

    p = command("compare", "compare two dumps tensor by tensor in pipeline order", cmd_compare)
    p.add_argument("reference", help="the reference dump (.safetensors written by `mimo-ref dump`)")
    p.add_argument("candidate", help="the dump to check (.safetensors, same tensor names)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative L2 tolerance for float tensors")
    p.add_argument("--atol", type=float, default=0.0, help="max abs error allowed regardless of rtol")
    p.add_argument(
        "--only",
        action="append",
        metavar="PREFIX",
        help="compare only reference tensors whose name starts with PREFIX (repeatable); each must be present",
    )
    p.add_argument("--require", action="store_true", help="fail when the candidate lacks any reference tensor")
    p.add_argument("--format", default="table", choices=["table", "json"], help="report format")

    p = command(
        "make-checkpoint",
        "write random-weight checkpoints in the real Hugging Face layout at the real shapes (docs/scale.md)",
        cmd_make_checkpoint,
    )
    p.add_argument(
        "--what",
        default="both",
        choices=["lm", "audio-tokenizer", "both"],
        help="which checkpoint: the LM (OUTPUT/lm, sharded bf16, with a generated text tokenizer), the audio "
        "tokenizer (OUTPUT/audio_tokenizer, float32) or both",
    )
    p.add_argument("-o", "--output", required=True, help="folder that receives lm/ and/or audio_tokenizer/")
    p.add_argument(
        "--width-divisor",
        type=int,
        default=1,
        metavar="K",
        help="divide every width and head count by this, for small test models (1: the real shapes)",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        metavar="N",
        help="cap every stack's layer count at this (default: the real counts)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights; any integer (mod 2**32)")
    p.add_argument(
        "--shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest LM shard: bytes or a size such as 5GB, 500MB (decimal units)",
    )
    p.add_argument("--force", action="store_true", help="replace existing non-empty lm/ or audio_tokenizer/ folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)  # every input and output checked before any model work
        with stage_messages(getattr(args, "progress", None) is not False):
            return args.fn(args)
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # off a progress line that may be half drawn
        note("interrupted (Ctrl-C); outputs are written whole or not at all")
        return 130
    except CliError as exc:
        note(f"error: {exc}")
        return 2
    except (FileNotFoundError, ValueError) as exc:  # user errors: missing files, bad configs/audio/arguments
        note(f"error: {exc}")
        return 2
    except OSError as exc:  # the system refused: disk full, permissions changed while running
        note(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
