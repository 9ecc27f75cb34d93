"""Streaming spoken answers end to end on the bundled tiny checkpoints: ``MimoAudio.tts(stream=...)`` against the
pure streaming decode, and the command line's ``--stream`` (a growing .wav, raw PCM on stdout with ``-o -``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_ref import cli, pipeline, stream_io
from mimo_ref.audio.streaming import StreamingConfig, init_state, stream_frames_bound, streaming_decode
from mimo_ref.audio_io import write_wav

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
WAV24 = GOLDEN / "pipeline" / "speech_24k.wav"
WAV16 = GOLDEN / "pipeline" / "speech_16k.wav"
TEXT = "Hello world"
GROUPS = 24  # enough groups for a speech span of several chunks with the small overlaps below (seed 0)
OVERLAPS = StreamingConfig(left_overlap=8, right_overlap=2)
STREAM_ARGS = ["--stream", "--left-overlap", "8", "--right-overlap", "2", "--max-new-groups", str(GROUPS)]


@functools.cache
def mimo():
    return pipeline.load()


@functools.cache
def streamed_tts() -> tuple[tuple[np.ndarray, ...], pipeline.Output]:
    """The chunks of ``mimo().tts(TEXT, stream=OVERLAPS)`` and the final Output (seed 0)."""
    results: list[pipeline.Output] = []
    chunks = tuple(mimo().tts(TEXT, max_new_groups=GROUPS, stream=OVERLAPS, on_result=results.append))
    return chunks, results[0]


def test_tts_stream_is_the_pure_streaming_decode_of_the_answer():
    """The generator's chunks are exactly what ``streaming_decode`` returns for the answer's speech span fed one
    group (G frames) at a time; the Output's wav is their concatenation. (The ids are the one-shot run's:
    ``generate_stream`` is ``generate``'s twin, tests/test_generate.py.)"""
    chunks, out = streamed_tts()
    m = mimo()
    assert len(chunks) > 1  # a real stream: several chunks
    codes = pipeline.speech_span(out.generated_ids, special=m.special, cfg=m.lm_cfg)  # [C, T]
    g, t = m.lm_cfg.group_size, codes.shape[1]
    lengths = [g] * (t // g) + [t % g]
    pad_to = stream_frames_bound(OVERLAPS, g)  # the pipeline's one decoder shape, so results agree bit for bit
    state, pure, start = init_state(1, m.audio_cfg), [], 0
    for k, n in enumerate(lengths):
        wavs, state = streaming_decode(
            m.audio_params, codes[:, start : start + n], [n], state,
            cfg=m.audio_cfg, config=OVERLAPS, last_chunk=k == len(lengths) - 1, pad_to=pad_to,
        )  # fmt: skip
        start += n
        if wavs[0] is not None and wavs[0].shape[0] > 0:
            pure.append(wavs[0])
    assert len(chunks) == len(pure)
    for a, b in zip(chunks, pure, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out.wav, np.concatenate(chunks))
    assert out.wav.shape == (t * m.audio_cfg.samples_per_code,)  # one stream: frames x 960 samples


def test_cli_stream_writes_the_chunks_to_a_wav(tmp_path, capsys):
    chunks, out = streamed_tts()
    path = tmp_path / "answer.wav"
    assert cli.main(["tts", TEXT, "-o", str(path), *STREAM_ARGS, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out == out.text + "\n"
    assert "first audio" in captured.err
    expected = tmp_path / "expected.wav"
    write_wav(expected, np.concatenate(chunks), 24000)
    assert path.read_bytes() == expected.read_bytes()  # byte-identical to the one-shot writer's file


def test_cli_stream_to_stdout_is_raw_pcm(tmp_path, capsysbinary):
    chunks, out = streamed_tts()
    assert cli.main(["tts", TEXT, "-o", "-", *STREAM_ARGS, "--no-progress"]) == 0
    captured = capsysbinary.readouterr()
    expected = tmp_path / "expected.wav"
    write_wav(expected, np.concatenate(chunks), 24000)
    assert captured.out == expected.read_bytes()[stream_io.HEADER_BYTES :]  # the wav's samples, no header
    assert out.text.encode() in captured.err  # the text goes to stderr, stdout carries only audio


@pytest.mark.parametrize(
    "argv",
    [
        ["dialogue", str(WAV24), "--system-prompt", "Be brief."],
        ["s2s", "Convert the voice", str(WAV16), "--example", str(WAV24), "The transcript.", str(WAV16)],
    ],
)
def test_cli_stream_for_every_spoken_task(argv, tmp_path, capsys):
    path = tmp_path / "answer.wav"
    assert cli.main([*argv, "-o", str(path), "--stream", "--max-new-groups", "6", "--no-progress"]) == 0
    info = sf.info(path)
    assert info.samplerate == 24000 and info.subtype == "PCM_16" and info.frames > 0
    assert "streamed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tts", TEXT, "-o", "-"], "-o - (raw 16-bit PCM on stdout) needs --stream"),
        (["tts", TEXT, "--stream", "-o", "x.mp3"], "writes .wav files only"),
    ],
)
def test_stream_output_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--left-overlap", "0"], ["--right-overlap", "-1"], ["--left-overlap", "x"]])
def test_bad_overlaps_are_rejected_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["tts", TEXT, "--stream", *argv])
    assert exc.value.code == 2
    assert "overlap" in capsys.readouterr().err


def test_growing_wav_is_valid_after_every_chunk(tmp_path):
    """While chunks arrive, the file on disk is always a complete WAV of what was written so far."""
    path = tmp_path / "grow.wav"
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1.2, 1.2, n).astype(np.float32) for n in (960, 0, 2880, 480)]
    seen = []

    def produce():
        for chunk in chunks:
            yield chunk
            if path.exists():
                seen.append(sf.info(path).frames)  # read between chunks: the file written so far

    assert stream_io.write_growing_wav(path, produce(), 24000) == sum(c.shape[0] for c in chunks)
    assert seen == [960, 960, 3840, 4320]
    write_wav(tmp_path / "one_shot.wav", np.concatenate(chunks), 24000)
    assert path.read_bytes() == (tmp_path / "one_shot.wav").read_bytes()
