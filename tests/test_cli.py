"""The mimo-ref command line and the Python pipeline on the bundled tiny (random-weight) checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_ref import cli, lm, pipeline
from mimo_ref.config import load_lm_config
from mimo_ref.precision import param_bytes

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
WAV24 = GOLDEN / "pipeline" / "speech_24k.wav"
WAV16 = GOLDEN / "pipeline" / "speech_16k.wav"
FAST = ["--max-new-groups", "6", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tts_writes_a_24k_pcm16_wav(tmp_path, capsys):
    out_wav = tmp_path / "out.wav"
    code, _, err = run(capsys, "tts", "Hello", "-o", str(out_wav), *FAST)
    assert code == 0, err
    assert "RANDOM weights" in err  # the bundled checkpoints are announced as noise
    info = sf.info(out_wav)
    assert info.samplerate == 24000 and info.subtype == "PCM_16" and info.channels == 1 and info.frames > 0


def test_asr_prints_text(capsys):
    code, out, err = run(capsys, "asr", str(WAV16), *FAST)
    assert code == 0, err
    assert out.endswith("\n")  # the decoded text channel (noise for random weights), one line


@pytest.mark.parametrize(
    "argv",
    [
        ["understand", str(WAV24), "What is in the audio?", "--thinking"],
        ["s2t", str(WAV24)],
        ["chat", "Hi there", "--thinking"],
    ],
)
def test_text_tasks_run(argv, capsys):
    code, _, err = run(capsys, *argv, *FAST)
    assert code == 0, err


@pytest.mark.parametrize(
    "argv",
    [
        ["dialogue", str(WAV24), "--system-prompt", "Be brief."],
        ["s2s", "Convert the voice", str(WAV16), "--example", str(WAV24), "The transcript.", str(WAV16)],
    ],
)
def test_speech_tasks_write_wav(argv, tmp_path, capsys):
    out_wav = tmp_path / "answer.wav"
    code, _, err = run(capsys, *argv, "-o", str(out_wav), *FAST)
    assert code == 0, err
    assert sf.info(out_wav).samplerate == 24000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["asr", "no_such_file.wav"], "audio file no_such_file.wav does not exist"),
        (["tts", "   "], "the text to speak is empty"),
        (["chat", ""], "the message is empty"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys):
    code, _, err = run(capsys, *argv, *FAST)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_unreadable_audio_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    code, _, err = run(capsys, "asr", str(bad), *FAST)
    assert code == 2 and "bad.wav" in err


def test_unknown_task_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sing", "la la"])
    assert exc.value.code == 2
    assert "invalid choice: 'sing'" in capsys.readouterr().err


def test_prompt_longer_than_max_positions(capsys):
    positions = load_lm_config(pipeline.BUNDLED_LM).max_position_embeddings
    code, _, err = run(capsys, "chat", "word " * (positions * 2), *FAST)
    assert code == 2
    assert f"only {positions} positions" in err


def test_every_command_has_an_example_in_help(capsys):
    for command in cli.EXAMPLES:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "Example:" in capsys.readouterr().out


def test_bench_prints_json(capsys):
    """bench with bf16 weight storage (--weights) of the float32 tiny checkpoint: float32 compute, half the bytes."""
    argv = ["bench", "--prompt-groups", "4", "--new-groups", "3", "--repeats", "1", "--weights", "bfloat16"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    result = json.loads(out)
    assert result["new_groups"] == 3 and result["speech_groups"] == 3
    assert result["compile_s"] > 0 and result["prefill_s"] > 0 and result["generate_s"] > 0
    assert result["compute_dtype"] == "float32" and result["weight_storage"] == "bfloat16"
    params, _, _ = lm.load_lm(pipeline.BUNDLED_LM)  # float32 as stored
    assert 2 * result["param_bytes"] == param_bytes(params)


def test_speech_span_follows_official_rule():
    cfg = load_lm_config(pipeline.BUNDLED_LM)
    from mimo_ref.config import load_special_tokens

    special = load_special_tokens(pipeline.BUNDLED_LM)
    g, c = cfg.group_size, cfg.audio_channels
    text = [special.sostm, special.empty, special.empty, special.empty, special.eostm, 7]
    generated = np.zeros((c + 1, len(text) * g), np.int64)
    generated[0] = np.repeat(text, g)
    generated[1:] = np.arange(len(text) * g)[None, :] % 100 + 1
    generated[1, 2 * g : 2 * g + 2] = cfg.speech_empty_ids[0]  # two empty frames inside the span are dropped
    span = pipeline.speech_span(generated, special=special, cfg=cfg)
    assert span.shape == (c, 3 * g - 2)  # groups 1..3, minus the two empty frames
    np.testing.assert_array_equal(
        span[1], np.concatenate([np.arange(g + 1, 2 * g + 1), np.arange(2 * g + 3, 4 * g + 1)])
    )
