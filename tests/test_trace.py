"""Activation dumps and their comparison (``mimo-ref dump`` / ``mimo-ref compare``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_ref import cli, lm, trace
from mimo_ref.tap import collecting, tap

GOLDEN_WAV = Path(__file__).parent / "fixtures" / "golden" / "pipeline" / "speech_24k.wav"


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> Path:
    wave, sr = sf.read(GOLDEN_WAV, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "short.wav"
    sf.write(path, wave[: sr * 2 // 5], sr)  # 0.4 s keeps the eager dump quick
    return path


@pytest.fixture(scope="module")
def reference_dump(tmp_path_factory, short_wav) -> Path:
    out = tmp_path_factory.mktemp("dumps") / "ref.safetensors"
    trace.dump_run(output=out, audio=str(short_wav), new_groups=1)
    return out


def test_tap_is_identity_and_silent_outside_collecting():
    x = np.arange(3.0)
    assert tap("anything", x) is x
    with collecting() as store:
        tap("a", x)
        tap("a", x + 1)
    assert list(store) == ["a", "a#1"]
    np.testing.assert_array_equal(store["a#1"], x + 1)


def test_dump_names_cover_every_stage(reference_dump):
    names = [t["name"] for t in json.loads(reference_dump.with_suffix(".json").read_text())["tensors"]]
    for expected in (
        "input.wave",
        "audio.mel",
        "audio.encoder.conv_stem",
        "audio.encoder.layer0",
        "audio.encoder.final_norm",
        "audio.encoder.features",
        "audio.rvq.residual",
        "audio.rvq.codes",
        "audio.decoder.vq",
        "audio.decoder.layer0",
        "audio.decoder.coarse_mel",
        "audio.vocoder.layer0",
        "audio.istft.spectrum_real",
        "audio.wav",
        "input.ids",
        "lm.speech_embeddings_sum",
        "lm.patch_encoder.layer0",
        "lm.input_embeds",
        "lm.backbone.layer0",
        "lm.text_logits",
        "lm.local_hidden",
        "generate.text_token",
        "lm.patch_decoder.stack.layer0",
        "lm.patch_decoder.logits",
        "lm.patch_decoder.tokens",
    ):
        assert expected in names, expected
    assert names.index("audio.mel") < names.index("audio.wav") < names.index("lm.input_embeds")


def test_two_dumps_of_the_same_run_agree_exactly(reference_dump, short_wav, tmp_path):
    again = tmp_path / "again.safetensors"
    trace.dump_run(output=again, audio=str(short_wav), new_groups=1)
    report = trace.compare_dumps(reference_dump, again)
    assert report["passed"] and not report["missing"] and not report["extra"]
    for row in report["rows"]:
        assert row.get("max_abs", 0.0) == 0.0 and row.get("mismatches", 0) == 0, row["name"]
    assert cli.main(["compare", str(reference_dump), str(again)]) == 0


def test_perturbed_layer_is_reported_as_first_divergence(reference_dump, short_wav, tmp_path, monkeypatch, capsys):
    """A port whose second backbone layer has the wrong sign is caught at exactly that tensor."""
    original = lm.qwen_layer
    target = {}

    def broken(params, x, *args, **kwargs):
        out, cache = original(params, x, *args, **kwargs)
        if params is target.get("layer"):
            out = -out
        return out, cache

    real_load = lm.load_lm

    def load_and_mark(*args, **kwargs):
        params, cfg, special = real_load(*args, **kwargs)
        target["layer"] = params["model"]["layers"][1]
        return params, cfg, special

    monkeypatch.setattr(lm, "qwen_layer", broken)
    monkeypatch.setattr(lm, "load_lm", load_and_mark)
    bad = tmp_path / "bad.safetensors"
    trace.dump_run(output=bad, audio=str(short_wav), new_groups=1)
    report = trace.compare_dumps(reference_dump, bad)
    assert report["first_failure"] == "lm.backbone.layer1"
    first_bad = [r["name"] for r in report["rows"]].index("lm.backbone.layer1")
    assert all(r["passed"] for r in report["rows"][:first_bad])
    assert cli.main(["compare", str(reference_dump), str(bad), "--format", "json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["first_failure"] == "lm.backbone.layer1"


def test_compare_reports_shape_and_integer_divergence(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((2, 3), np.float32), "ids": np.array([1, 2, 3])}, str(tmp_path / "r.safetensors"))
    save_file({"a": np.zeros((3, 2), np.float32), "ids": np.array([1, 5, 3])}, str(tmp_path / "c.safetensors"))
    report = trace.compare_dumps(tmp_path / "r.safetensors", tmp_path / "c.safetensors")
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["a"]["status"] == "shape mismatch" and not rows["a"]["passed"]
    assert rows["ids"]["first_divergence"] == [1] and rows["ids"]["mismatches"] == 1


def test_dump_needs_an_input(tmp_path):
    with pytest.raises(ValueError, match="dump needs an input"):
        trace.dump_run(output=tmp_path / "x.safetensors")
