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
    "compare": "mimo-ref compare ref.safetensors candidate.safetensors --rtol 1e-5",
}


class CliError(Exception):
    """An error reported as one line on stderr with exit status 2."""


def note(message: str) -> None:
    print(f"mimo-ref: {message}", file=sys.stderr)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="LM checkpoint folder or HF repo id (default: bundled tiny model)")
    p.add_argument(
        "--audio-tokenizer", default=None, help="audio tokenizer folder or HF repo id (default: bundled tiny one)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--seed", type=int, default=0, help="sampling seed (also picks prompt templates)")
    p.add_argument("--max-new-groups", type=int, default=None, help="cap on generated groups (default: model room)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress on stderr")


def setup_dtype(dtype: str) -> None:
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def load_pipeline(args):
    from mimo_ref import pipeline

    setup_dtype(args.dtype)
    model = args.model or pipeline.BUNDLED_LM
    audio = args.audio_tokenizer or pipeline.BUNDLED_AUDIO_TOKENIZER
    if args.model is None or args.audio_tokenizer is None:
        note(
            "using the bundled tiny checkpoints in weights/: they have RANDOM weights, so the output is noise "
            "(pass --model XiaomiMiMo/MiMo-Audio-7B-Instruct --audio-tokenizer XiaomiMiMo/MiMo-Audio-Tokenizer)"
        )
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    return pipeline.load(model, audio, dtype=args.dtype, progress=progress_printer() if show else None)


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
            f"\rgenerating: {done}/{total} groups (at most), {rate:.1f} groups/s", end="", file=sys.stderr, flush=True
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
    print(out.text)
    if audio:
        if out.wav is None:
            raise CliError("the task produced no audio")
        write_wav(args.output, out.wav, 24000)
        note(f"wrote {args.output} ({out.wav.shape[0] / 24000:.2f} s at 24 kHz)")
    return 0


def cmd_tts(args) -> int:
    if not args.text.strip():
        raise CliError("the text to speak is empty")
    pipe = load_pipeline(args)
    voice = existing_file(args.voice) if args.voice else None
    out = pipe.tts(
        args.text,
        instruct=args.instruct,
        voice=voice,
        read_text_only=not args.free,
        seed=args.seed,
        max_new_groups=args.max_new_groups,
    )
    return finish(pipe, out, args, audio=True)


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
    out = pipe.dialogue(
        audio, system_prompt=args.system_prompt, voice=voice, seed=args.seed, max_new_groups=args.max_new_groups
    )
    return finish(pipe, out, args, audio=True)


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
    out = pipe.s2s(args.instruction, examples, audio, seed=args.seed, max_new_groups=args.max_new_groups)
    return finish(pipe, out, args, audio=True)


def cmd_verify(args) -> int:
    from mimo_ref import verify

    rows = verify.run_all(Path(args.golden_dir) if args.golden_dir else None, only=args.only)
    print(verify.format_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from mimo_ref import bench

    setup_dtype(args.dtype)
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
        dtype=args.dtype,
        repeats=args.repeats,
        force_speech=not args.natural,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_dump(args) -> int:
    from mimo_ref import trace

    setup_dtype(args.dtype)
    manifest = trace.dump_run(
        output=Path(args.output),
        model=args.model,
        audio_tokenizer=args.audio_tokenizer,
        dtype=args.dtype,
        text=args.text,
        audio=args.audio,
        input_ids=args.input_ids,
        seed=args.seed,
        new_groups=args.new_groups,
    )
    note(f"wrote {args.output} ({len(manifest['tensors'])} tensors) and {Path(args.output).with_suffix('.json')}")
    return 0


def cmd_compare(args) -> int:
    from mimo_ref import trace

    report = trace.compare_dumps(Path(args.reference), Path(args.candidate), rtol=args.rtol, atol=args.atol)
    print(trace.format_report(report, fmt=args.format))
    return 0 if report["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimo-ref",
        description="MiMo-Audio reference implementation in JAX: every official task, golden verification, "
        "benchmarks, activation dumps.",
        epilog="Examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, fn):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"Example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(fn=fn)
        return p

    p = command("tts", "text to speech (with optional style instruction and voice prompt)", cmd_tts)
    p.add_argument("text")
    p.add_argument("-o", "--output", default="out.wav", help="output .wav (24 kHz, 16-bit)")
    p.add_argument("--instruct", default=None, help="style instruction, e.g. 'Speak slowly and warmly'")
    p.add_argument("--voice", default=None, help="voice prompt audio file (needs --instruct, as officially)")
    p.add_argument("--free", action="store_true", help="free-form: TEXT is an instruction, not text to read")
    add_model_args(p)

    p = command("asr", "speech recognition: audio file -> text", cmd_asr)
    p.add_argument("audio")
    add_model_args(p)

    p = command("understand", "audio understanding: answer a question about an audio file", cmd_understand)
    p.add_argument("audio")
    p.add_argument("question")
    p.add_argument("--thinking", action="store_true")
    add_model_args(p)

    p = command("dialogue", "spoken dialogue: speech in, speech (and text) out", cmd_dialogue)
    p.add_argument("audio")
    p.add_argument("-o", "--output", default="out.wav")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--voice", default=None, help="voice prompt audio file")
    add_model_args(p)

    p = command("s2t", "speech-to-text dialogue: a spoken question, a text answer", cmd_s2t)
    p.add_argument("audio")
    p.add_argument("--thinking", action="store_true")
    add_model_args(p)

    p = command("chat", "text dialogue", cmd_chat)
    p.add_argument("text")
    p.add_argument("--thinking", action="store_true")
    add_model_args(p)

    p = command("s2s", "in-context speech-to-speech from examples", cmd_s2s)
    p.add_argument("instruction")
    p.add_argument("audio")
    p.add_argument(
        "--example", nargs=3, action="append", metavar=("IN_WAV", "TRANSCRIPT", "OUT_WAV"), help="repeatable"
    )
    p.add_argument("-o", "--output", default="out.wav")
    add_model_args(p)

    p = command("verify", "run every golden case and print a table; exit 1 on any failure", cmd_verify)
    p.add_argument("--golden-dir", default=None, help="fixture set (default: the bundled copy)")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")

    p = command("bench", "time generation: compile, prefill, seconds per group (JSON)", cmd_bench)
    p.add_argument("--model", default=None, help="checkpoint (default: bundled tiny model)")
    p.add_argument("--preset", default=None, choices=["7b", "small"], help="real-shape preset (with --random-weights)")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--prompt-groups", type=int, default=32)
    p.add_argument("--new-groups", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--natural", action="store_true", help="let the model choose text groups (default: all speech)")

    p = command("dump", "write every named intermediate tensor of a run to safetensors + JSON manifest", cmd_dump)
    p.add_argument("-o", "--output", required=True, help="output .safetensors (manifest written beside it)")
    p.add_argument("--model", default=None)
    p.add_argument("--audio-tokenizer", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--text", default=None, help="text to tokenize as the prompt")
    p.add_argument("--audio", default=None, help="audio file to run through the tokenizer and the LM")
    p.add_argument("--input-ids", default=None, help=".npy file of LM input ids [C+1, L]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--new-groups", type=int, default=2, help="groups to generate (traced step by step)")

    p = command("compare", "compare two dumps tensor by tensor in pipeline order", cmd_compare)
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative L2 tolerance for float tensors")
    p.add_argument("--atol", type=float, default=0.0, help="max abs error allowed regardless of rtol")
    p.add_argument("--format", default="table", choices=["table", "json"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except CliError as exc:
        note(f"error: {exc}")
        return 2
    except (FileNotFoundError, ValueError) as exc:  # user errors: missing files, bad configs/audio/arguments
        note(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
