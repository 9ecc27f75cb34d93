"""What a new user runs into (issue 15): errors in their terms before any model work, no half-written files,
honest progress and help.

Two tables hold the user errors: ``CLI_ROWS`` (exit status, one ``mimo-ref: error:`` line naming the input, no
traceback, no file left behind) and ``API_ROWS`` (the same checks through :class:`mimo_ref.pipeline.MimoAudio`:
a ``ValueError`` with a one-line message, never a KeyError or a shape error). The other tests pin what the
rows cannot: seeds of any size, atomic writes under Ctrl-C, the final progress line, stage messages, bench keys,
the memory estimate and ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import save_file

from mimo_ref import bench, bench_breakdown, cli, pipeline
from mimo_ref.checkpoint import CheckpointError, SafetensorsFile
from mimo_ref.checks import InputError, fold_seed
from mimo_ref.outputs import atomic_outputs

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
WAV24 = GOLDEN / "pipeline" / "speech_24k.wav"
DOCS = Path(__file__).parents[1] / "docs"
BUNDLED_TOKENIZER = str(pipeline.BUNDLED_AUDIO_TOKENIZER)
PYTHON_NAMES = ("max_new_groups", "prompt_speech", "instruct=", "read_text_only", "wave_24k")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def cut_checkpoint(src: Path, dst: Path, missing_bytes: int) -> Path:
    """A copy of checkpoint ``src`` whose model.safetensors lost its last ``missing_bytes`` (a cut download)."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - missing_bytes])
    return weights


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A fresh current folder holding every input the table rows name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "models").mkdir()  # so models/typo reads as a local path
    shutil.copy(WAV24, tmp_path / "speech.wav")
    nan = np.full(4800, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "short16k.wav", np.full(160, 0.1, np.float32), 16000)  # 10 ms at 16 kHz
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "ref.safetensors"))
    cut_checkpoint(pipeline.BUNDLED_LM, tmp_path / "lm_cut", 1000)
    cut_checkpoint(pipeline.BUNDLED_AUDIO_TOKENIZER, tmp_path / "tok_cut", 1000)
    return tmp_path


# (id, argv, exit status, fragments of the error line)
CLI_ROWS = [
    ("tts-output-under-a-file", ["tts", "Hello", "-o", "afile/x.wav"], 2, ["afile is a file"]),
    ("tts-output-is-a-folder", ["tts", "Hello", "-o", "adir"], 2, ["-o/--output adir is a folder"]),
    ("tts-output-mp3", ["tts", "Hello", "-o", "x.mp3"], 2, ["x.mp3", "writes .wav files only"]),
    ("dialogue-output-is-a-folder", ["dialogue", "speech.wav", "-o", "adir"], 2, ["adir is a folder"]),
    ("s2s-output-suffix", ["s2s", "Convert", "speech.wav", "-o", "x.flac"], 2, ["writes .wav files only"]),
    ("dump-output-is-a-folder", ["dump", "--text", "Hello", "-o", "adir"], 2, ["adir is a folder"]),
    ("dump-output-suffix", ["dump", "--text", "Hello", "-o", "x.npy"], 2, ["writes .safetensors files only"]),
    (
        "lm-checkpoint-truncated",
        ["asr", "speech.wav", "--model", "lm_cut", "--audio-tokenizer", BUNDLED_TOKENIZER],
        2,
        ["lm_cut/model.safetensors is truncated", "bytes but the file has", "download the checkpoint again"],
    ),
    (
        "audio-tokenizer-truncated",
        ["asr", "speech.wav", "--audio-tokenizer", "tok_cut"],
        2,
        ["tok_cut/model.safetensors is truncated", "download the checkpoint again"],
    ),
    (
        "compare-a-wav",
        ["compare", "ref.safetensors", "speech.wav"],
        2,
        ["candidate dump", "speech.wav is not a readable safetensors file"],
    ),
    ("compare-missing", ["compare", "nope.safetensors", "ref.safetensors"], 2, ["reference dump nope.safetensors"]),
    (
        "tokenizer-folder-typo",
        ["asr", "speech.wav", "--audio-tokenizer", "models/typo"],
        2,
        ["no such folder", "models/typo does not exist", "models/ exists"],
    ),
    (
        "real-lm-with-bundled-tokenizer",
        ["asr", "speech.wav", "--model", "lm_cut"],
        2,
        ["--model lm_cut needs --audio-tokenizer"],
    ),
    ("audio-with-nan", ["asr", "nan.wav"], 2, ["nan.wav contains NaN or infinite samples"]),
    ("audio-too-short", ["asr", "short16k.wav"], 2, ["short16k.wav is too short: 160 samples at 16000 Hz (10.0 ms)"]),
    ("audio-is-a-folder", ["asr", "adir"], 2, ["audio file adir is a folder"]),
    ("audio-missing", ["s2t", "nope.wav"], 2, ["audio file nope.wav does not exist"]),
    (
        "voice-missing",
        ["tts", "Hello", "--instruct", "Slowly", "--voice", "nope.wav"],
        2,
        ["--voice: audio file nope.wav does not exist"],
    ),
    ("voice-without-instruct", ["tts", "Hello", "--voice", "speech.wav"], 2, ["--voice needs --instruct"]),
    ("instruct-with-free", ["tts", "Hello", "--free", "--instruct", "Slowly"], 2, ["--instruct does not apply"]),
    ("max-new-groups-zero", ["asr", "speech.wav", "--max-new-groups", "0"], 2, ["--max-new-groups must be >= 1"]),
    ("bench-new-groups-one", ["bench", "--new-groups", "1"], 2, ["--new-groups must be >= 2"]),
    ("bench-batch-zero", ["bench", "--batch", "0"], 2, ["--batch must be >= 1"]),
    (
        "s2s-example-missing",
        ["s2s", "Convert", "speech.wav", "--example", "speech.wav", "Its text.", "nope.wav"],
        2,
        ["--example 1 OUT_WAV: audio file nope.wav does not exist"],
    ),
    ("understand-empty-question", ["understand", "speech.wav", "  "], 2, ["the question is empty"]),
    ("chat-empty", ["chat", ""], 2, ["the message is empty"]),
]


@pytest.mark.parametrize("argv, status, fragments", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_user_error(argv, status, fragments, workdir, capsys):
    before = files_under(workdir)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == status, err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("mimo-ref: error: "), err
    for fragment in fragments:
        assert fragment in last, last
    assert not any(name in err for name in PYTHON_NAMES), err  # option names, not Python names
    assert files_under(workdir) == before  # no output file, partial or whole


def test_cli_unwritable_output_folder(workdir, capsys, monkeypatch):
    """A folder this user may not write into. Root may write anywhere (tests run as root in CI), so the permission
    answer is simulated for that one folder rather than skipped."""
    import mimo_ref.outputs as outputs

    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access
    monkeypatch.setattr(
        outputs.os, "access", lambda p, mode: False if Path(p).resolve() == locked.resolve() else real_access(p, mode)
    )
    assert cli.main(["tts", "Hello", "-o", "locked/x.wav"]) == 2
    assert "the folder locked is not writable" in capsys.readouterr().err


def test_truncated_checkpoint_names_sizes(tmp_path):
    weights = cut_checkpoint(pipeline.BUNDLED_AUDIO_TOKENIZER, tmp_path / "tok", 1000)
    actual = weights.stat().st_size
    with pytest.raises(CheckpointError) as info:
        SafetensorsFile(weights)
    message = str(info.value)
    assert f"{weights} is truncated: its header promises {actual + 1000} bytes but the file has {actual}" in message
    assert "\n" not in message
    weights.write_bytes(weights.read_bytes()[:100])  # cut inside the header
    with pytest.raises(CheckpointError, match=r"truncated: its header needs at least \d+ bytes but the file has 100"):
        SafetensorsFile(weights)


# -- the Python API ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimo():
    return pipeline.load()


QUIET = np.full(24000, 0.01, np.float32)
EXAMPLE = {"input_audio": str(WAV24), "output_transcription": "Hi.", "output_audio": str(WAV24)}
NO_OUTPUT_AUDIO = {k: v for k, v in EXAMPLE.items() if k != "output_audio"}

# (id, call, fragment of the message); every call must raise a ValueError (FileNotFoundError for a missing file)
# before generating
API_ROWS = [
    ("chat-empty", lambda m: m.chat(""), "the chat message is empty"),
    ("chat-blank", lambda m: m.chat("   "), "the chat message is empty"),
    ("tts-empty", lambda m: m.tts(""), "tts text is empty"),
    ("dialogue-multiturn-empty", lambda m: m.dialogue_multiturn([]), "messages is empty"),
    ("s2t-multiturn-empty", lambda m: m.s2t_multiturn([]), "messages is empty"),
    ("chat-multiturn-empty", lambda m: m.chat_multiturn([]), "messages is empty"),
    ("understand-empty-question", lambda m: m.understand(str(WAV24), " "), "the question is empty"),
    (
        "message-names-missing-file",
        lambda m: m.dialogue_multiturn([{"role": "user", "content": "q2.wav"}]),
        "message 0 (user) audio: audio file q2.wav does not exist",
    ),
    ("message-not-a-dict", lambda m: m.s2t_multiturn(["hi"]), "message 0 must be a dict"),
    ("message-without-content", lambda m: m.dialogue_multiturn([{"role": "user"}]), "(user) has no 'content'"),
    ("message-bad-role", lambda m: m.chat_multiturn([{"role": "bot", "content": "x"}]), "role must be 'user'"),
    ("wave-channels-first", lambda m: m.asr((np.zeros((2, 24000), np.float32), 24000)), "looks channels-first"),
    ("wave-empty", lambda m: m.asr((np.zeros(0, np.float32), 24000)), "the audio wave has no samples"),
    ("wave-nan", lambda m: m.asr((np.full(24000, np.nan, np.float32), 24000)), "NaN or infinite"),
    ("wave-integers", lambda m: m.asr((np.zeros(24000, np.int16), 24000)), "int16 samples"),
    ("wave-3d", lambda m: m.asr((np.zeros((1, 2, 24000), np.float32), 24000)), "waves are [T] or [T, channels]"),
    ("rate-fraction", lambda m: m.asr((QUIET, 16000.5)), "sample rate of the audio wave must be an integer"),
    ("rate-zero", lambda m: m.asr((QUIET, 0)), "must be >= 1"),
    ("wave-too-short", lambda m: m.asr((QUIET[:160], 16000)), "160 samples at 16000 Hz (10.0 ms)"),
    ("voice-too-short", lambda m: m.tts("Hi", instruct="Calm", voice=(QUIET[:100], 24000)), "the voice wave is too"),
    ("max-new-groups-fraction", lambda m: m.chat("Hi", max_new_groups=2.5), "max_new_groups must be an integer"),
    ("max-new-groups-zero", lambda m: m.chat("Hi", max_new_groups=0), "max_new_groups must be >= 1"),
    ("seed-float", lambda m: m.chat("Hi", seed=1.5), "seed must be an integer"),
    ("s2s-example-missing-key", lambda m: m.s2s("Go", [NO_OUTPUT_AUDIO], str(WAV24)), "example 0 has no output_audio"),
    ("s2s-example-not-a-dict", lambda m: m.s2s("Convert", [str(WAV24)], str(WAV24)), "example 0 must be a dict"),
    ("s2s-examples-a-dict", lambda m: m.s2s("Convert", EXAMPLE, str(WAV24)), "examples must be a list"),
]  # fmt: skip


@pytest.mark.parametrize("call, fragment", [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_api_user_error(call, fragment, mimo):
    with pytest.raises((ValueError, FileNotFoundError)) as info:  # never a KeyError, TypeError or shape error
        call(mimo)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_real_lm_never_pairs_silently_with_the_bundled_tokenizer(tmp_path):
    lm_copy = tmp_path / "lm"
    shutil.copytree(pipeline.BUNDLED_LM, lm_copy)
    with pytest.raises(InputError, match="needs its audio tokenizer"):
        pipeline.load(lm_copy)
    explicit = pipeline.load(lm_copy, pipeline.BUNDLED_AUDIO_TOKENIZER)  # named on purpose: allowed
    assert explicit.audio_cfg.num_quantizers > 0


def test_wave_layout_rule(mimo):
    """[T, channels] (soundfile's layout) is averaged over channels, like a file with those channels."""
    wave, rate = sf.read(WAV24, dtype="float32")
    stereo = np.stack([wave, 0.5 * wave], axis=1)  # [T, 2]
    mono = ((wave.astype(np.float64) + 0.5 * wave) / 2).astype(np.float32)
    np.testing.assert_array_equal(mimo.encode_audio((stereo, rate)).codes, mimo.encode_audio((mono, rate)).codes)


def test_any_integer_seed_is_folded_mod_2_32(mimo):
    assert fold_seed(2**70) == 2**70 % 2**32 and fold_seed(-1) == 2**32 - 1 and fold_seed(7) == 7
    # max_new_groups 6: the shapes of tests/test_cli.py's chat runs, compiled once per session
    big = mimo.chat("Hi", seed=2**70 + 5, max_new_groups=6)
    small = mimo.chat("Hi", seed=5, max_new_groups=6)
    np.testing.assert_array_equal(big.ids, small.ids)
    assert big.seed == 2**70 + 5  # the seed as given is recorded


# -- command line: what a run reports ------------------------------------------------------------------------------


def test_huge_seed_and_final_progress_line(capsys):
    code = cli.main(["chat", "Hi", "--seed", "99999999999999999999999", "--max-new-groups", "6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert cli.main(["chat", "Hi", "--seed", str(99999999999999999999999 % 2**32), "--max-new-groups", "6"]) == 0
    assert capsys.readouterr().out == out  # the same seed after folding
    summary = [line for line in err.splitlines() if line.startswith("mimo-ref: generated ")]
    assert len(summary) == 1, err
    assert re.search(r"generated [1-6] groups in [\d.]+ s .*; stopped: (reached --max-new-groups 6|the model emitted)",
                     summary[0])  # fmt: skip
    assert "loading the LM from" in err and "loaded both checkpoints in" in err  # model-load stages


def test_tts_creates_missing_output_folders(tmp_path, capsys):
    # the arguments of tests/test_cli.py::test_tts_writes_a_24k_pcm16_wav, so a whole-suite run compiles once
    out = tmp_path / "new" / "deeper" / "out.wav"
    assert cli.main(["tts", "Hello", "-o", str(out), "--max-new-groups", "6", "--no-progress"]) == 0
    assert sf.info(out).samplerate == 24000
    assert files_under(tmp_path) == {"new", "new/deeper", "new/deeper/out.wav"}  # no temporary file left
    assert f"wrote {out}" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line(workdir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.MimoAudio, "run", interrupted)
    before = files_under(workdir)
    assert cli.main(["tts", "Hello", "-o", "out.wav"]) == 130
    err = capsys.readouterr().err
    assert err.rstrip("\n").splitlines()[-1].startswith("mimo-ref: interrupted (Ctrl-C)") and "Traceback" not in err
    assert files_under(workdir) == before


def test_ctrl_c_while_writing_leaves_old_file_and_no_partial(workdir, capsys, monkeypatch):
    (workdir / "out.wav").write_bytes(b"an older result")
    fake = pipeline.Output("", np.zeros(2400, np.float32), np.zeros((9, 8), np.int64), 4, "tts", (), 0)
    monkeypatch.setattr(pipeline.MimoAudio, "tts", lambda self, *a, **k: fake)
    monkeypatch.setattr(cli, "generation_summary", lambda *a, **k: "generated")

    def write_half_then_interrupt(path, *args, **kwargs):
        Path(path).write_bytes(b"RIFF half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("mimo_ref.audio_io.sf.write", write_half_then_interrupt)
    before = files_under(workdir)
    assert cli.main(["tts", "Hello", "-o", "out.wav", "--no-progress"]) == 130
    assert files_under(workdir) == before  # no temporary file left
    assert (workdir / "out.wav").read_bytes() == b"an older result"


def test_atomic_outputs_create_folders_and_clean_up(tmp_path):
    target = tmp_path / "new" / "deeper" / "x.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_outputs(target, target.with_suffix(".json")) as (a, b):
            a.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert files_under(tmp_path) == set()  # temporary files and the folders made for them are gone
    with atomic_outputs(target, target.with_suffix(".json")) as (a, b):
        a.write_bytes(b"tensors")
        b.write_text("{}")
    assert files_under(tmp_path / "new" / "deeper") == {"x.safetensors", "x.json"}


def test_dump_reports_stages_and_writes_both_files(tmp_path, capsys):
    hidden = tmp_path / "hidden.npy"
    local_dim = json.loads((pipeline.BUNDLED_LM / "config.json").read_text())["local_dim"]
    np.save(hidden, np.zeros(local_dim, np.float32))
    out = tmp_path / "made" / "d.safetensors"  # a missing folder is created
    assert cli.main(["dump", "--local-hidden", str(hidden), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    for stage in ("loading the LM from", "running every stage", "writing"):
        assert stage in err
    assert files_under(out.parent) == {"d.safetensors", "d.json"}


def test_bench_rates_count_all_rows():
    # the case: 93 ms decode steps of 8 rows are 86 groups/s in all, 10.75 per row (it reported 10.8)
    assert bench.throughput(0.093, 8) == {"s_per_group": 0.093, "groups_per_s": 86.02, "groups_per_s_per_row": 10.75}
    assert bench.throughput(-0.001, 2)["groups_per_s"] is None  # noise, not a negative rate


def test_bench_states_the_hosts_huge_page_setting(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")  # the kernel's format: the active mode in brackets
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.hugetlb=1"}
    assert bench.host_huge_pages(mode_file, tunables) == "madvise, glibc.malloc.hugetlb=1"
    assert bench.host_huge_pages(mode_file, {}) == "madvise, glibc.malloc.hugetlb unset"
    assert bench.host_huge_pages(tmp_path / "absent", {}) == "unknown, glibc.malloc.hugetlb unset"


def test_bench_reports_stages_and_documents_every_key(capsys):
    # the same shapes as tests/test_cli.py::test_bench_prints_json, so a whole-suite run compiles them once
    assert cli.main(["bench", "--prompt-groups", "4", "--new-groups", "3", "--repeats", "1"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    for stage in ("loading the LM from", "compiling generate for 3 groups x 1 rows", "timing"):
        assert stage in err  # stage messages as it runs
    undocumented = set(result) - set(bench.JSON_KEYS)
    assert not undocumented, f"bench keys missing from bench.JSON_KEYS: {undocumented}"
    assert not set(bench_breakdown.JSON_KEYS) & set(result)  # the stages and the floor only with --breakdown
    page = (DOCS / "generation.md").read_text()
    assert [k for k in bench.JSON_KEYS if f"`{k}`" not in page] == []
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    epilog = capsys.readouterr().out
    assert [k for k in bench.JSON_KEYS if f"  {k}: " not in epilog] == []


def test_bench_states_memory_before_building_random_weights(monkeypatch, caplog):
    monkeypatch.setattr(bench, "memory_limit_bytes", lambda: 10**9)
    with caplog.at_level(logging.INFO, logger="mimo_ref"):
        with pytest.raises(ValueError, match=r"preset 7b needs about [\d.]+ GB of memory .* has 1.0 GB"):
            bench.run_bench(preset="7b", precision="float32")
    assert re.search(r"building random weights for preset 7b: [78]\.\d\d G parameters, [\d.]+ GB", caplog.text)


def test_help_describes_every_option_with_its_default(capsys):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"mimo-ref {name}: {'/'.join(action.option_strings) or action.dest} has no help"
        text = sub.format_help()
        flags = [a for a in sub._actions if a.option_strings and a.default is not False and not a.required]
        for action in flags:
            if action.help != "==SUPPRESS==" and action.dest != "help":
                assert "default" in sub._get_formatter()._get_help_string(action), (name, action.dest)
        assert "Example:" in text
    tts_help = " ".join(commands.choices["tts"].format_help().split())
    assert "an existing file is replaced (default: out.wav)" in tts_help
