"""What the command line checks before any model work, and how it reports progress.

:func:`check_args` runs on the parsed arguments of every command before anything is loaded, so a bad input fails
in a second with one line that names the option, not after minutes of loading and generating:

- counts are positive (``--max-new-groups``, ``--new-groups``, ``--prompt-groups``, ``--batch``, ``--repeats``);
- ``--seed`` is any integer, reduced modulo 2**32 (:func:`mimo_ref.checks.fold_seed`);
- output paths can be written and have the format's suffix (:func:`mimo_ref.outputs.check_output_path`);
- every input audio file exists, is a file, is audio soundfile can read, and has finite samples;
- option combinations the official prompts do not support are named in option terms (``--voice`` needs
  ``--instruct``; ``--instruct`` does not apply with ``--free``);
- a real LM (``--model``) is never silently paired with the bundled random-weight audio tokenizer: tasks that
  encode or decode audio need ``--audio-tokenizer`` too (``chat`` uses no audio, so it does not);
- ``compare`` inputs are safetensors dumps.

:func:`stage_messages` prints the package's stage log (model loading, bench and dump stages) on stderr, and
:func:`generation_summary` is the final line of a task: groups generated, why generation stopped, elapsed time.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from mimo_ref.checks import fold_seed

TASKS = ("tts", "asr", "understand", "dialogue", "s2t", "chat", "s2s")
AUDIO_OUTPUT = ("tts", "dialogue", "s2s")  # tasks that write -o as 16-bit PCM WAV
COUNTS = {  # argparse dest -> option name and smallest value (per command when it differs)
    "max_new_groups": ("--max-new-groups", {}),
    "prompt_groups": ("--prompt-groups", {}),
    "new_groups": ("--new-groups", {"bench": 2}),  # bench's per-group time is a difference of two run lengths
    "batch": ("--batch", {}),
    "repeats": ("--repeats", {}),
}


class CliError(Exception):
    """An error reported as one line on stderr with exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's help ends with its default unless the help already states it.

    Flags (default False) show none; an option left out by default (None) shows "(default: none)" unless its help
    says what happens instead.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and not action.required and action.default is not False
        if not shown or action.default == argparse.SUPPRESS:
            return text
        if "default" in text:
            return text
        return f"{text} (default: none)" if action.default is None else f"{text} (default: %(default)s)"


def check_args(args: argparse.Namespace) -> None:
    """Validate parsed arguments before any model work; raises :class:`CliError` naming the option."""
    command = args.command
    for dest, (option, minimum_by_command) in COUNTS.items():
        value = getattr(args, dest, None)
        minimum = minimum_by_command.get(command, 1)
        if value is not None and value < minimum:
            raise CliError(f"{option} must be >= {minimum}, got {value}")
    if getattr(args, "seed", None) is not None:
        args.seed = fold_seed(args.seed, what="--seed")
    if command in AUDIO_OUTPUT and args.output == "-" and not args.stream:
        raise CliError("-o - (raw 16-bit PCM on stdout) needs --stream")
    if command in AUDIO_OUTPUT and args.output != "-":  # "-": stdout, with --stream (cli.finish_spoken)
        check_output(args.output, (".wav",))
    if command == "dump":
        out = check_output(args.output, (".safetensors",))
        if out.with_suffix(".json").is_dir():
            raise CliError(f"-o/--output {args.output}: its manifest {out.with_suffix('.json')} would be a folder")
    for option, path in audio_inputs(args):
        check_audio_file(path, option)
    if command == "tts":
        if args.voice and not args.instruct and not args.free:
            raise CliError("--voice needs --instruct: the official TTS prompt takes a voice only with an instruction")
        if args.free and args.instruct:
            raise CliError("--instruct does not apply with --free (the free-form prompt takes no style instruction)")
    if command == "understand" and not args.question.strip():
        raise CliError("the question is empty")
    dump_audio = command == "dump" and any(getattr(args, k, None) for k in ("audio", "mel", "codes"))
    needs_tokenizer = (command in TASKS and command != "chat") or dump_audio
    if needs_tokenizer and getattr(args, "model", None) and not getattr(args, "audio_tokenizer", None):
        raise CliError(
            f"--model {args.model} needs --audio-tokenizer too (e.g. XiaomiMiMo/MiMo-Audio-Tokenizer): the bundled "
            "audio tokenizer has random weights (pass --audio-tokenizer weights/mimo_audio_tokenizer_tiny to use "
            "it anyway)"
        )
    if command == "compare":
        for label in ("reference", "candidate"):
            check_dump_file(getattr(args, label), label)


def check_output(path: str, suffixes: tuple[str, ...]) -> Path:
    from mimo_ref.outputs import OutputPathError, check_output_path

    try:
        return check_output_path(path, suffixes=suffixes, option="-o/--output")
    except OutputPathError as exc:
        raise CliError(str(exc)) from exc


def audio_inputs(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(option name, path) of every input audio file of a command."""
    if args.command in TASKS and getattr(args, "audio", None):
        yield "AUDIO", args.audio
    if args.command == "dump" and getattr(args, "audio", None):
        yield "--audio", args.audio
    if getattr(args, "voice", None):
        yield "--voice", args.voice
    for i, (input_wav, _, output_wav) in enumerate(getattr(args, "example", None) or []):
        yield f"--example {i + 1} IN_WAV", input_wav
        yield f"--example {i + 1} OUT_WAV", output_wav


def check_audio_file(path: str, option: str) -> None:
    """The file exists, is audio soundfile reads, has samples and all of them finite (read once, here)."""
    from mimo_ref.audio_io import AudioFileError, load_audio

    try:
        load_audio(path)
    except (FileNotFoundError, AudioFileError) as exc:
        raise CliError(str(exc) if option == "AUDIO" else f"{option}: {exc}") from exc


def check_dump_file(path: str, label: str) -> None:
    from mimo_ref.checkpoint import CheckpointError, SafetensorsFile

    if not Path(path).is_file():
        raise CliError(f"{label} dump {path} does not exist" + (" (it is a folder)" if Path(path).is_dir() else ""))
    try:
        SafetensorsFile(Path(path))
    except CheckpointError as exc:
        raise CliError(f"{label} dump: {exc}; `mimo-ref compare` reads .safetensors files of `mimo-ref dump`") from exc


@contextlib.contextmanager
def stage_messages(enabled: bool) -> Iterator[None]:
    """Print the ``mimo_ref`` package's INFO log (stages: loading, compiling, timing, writing) on stderr."""
    logger = logging.getLogger("mimo_ref")
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mimo-ref: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def generation_summary(pipe, out, *, max_new_groups: int | None, elapsed_s: float) -> str:
    """``generated N groups in S s (...); stopped: WHY``. WHY: the stop token the model emitted, the
    ``--max-new-groups`` cap, or the model's position limit (the default cap)."""
    g = pipe.lm_cfg.group_size
    generated = out.generated_ids  # [C+1, n*G]
    n = generated.shape[1] // g
    room = pipe.lm_cfg.max_position_embeddings - out.prompt_length // g
    cap = room if max_new_groups is None else min(max_new_groups, room)
    if n < cap and n > 0:
        why = f"the model emitted {pipe.tokenizer.decode([int(generated[0, (n - 1) * g])])}"
    elif max_new_groups is not None and cap == max_new_groups:
        why = f"reached --max-new-groups {max_new_groups}"
    else:
        why = f"reached the model's limit of {pipe.lm_cfg.max_position_embeddings} positions"
    return f"generated {n} groups in {elapsed_s:.1f} s (audio coding and compilation included); stopped: {why}"
