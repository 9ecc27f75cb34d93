"""Activation dumps and their comparison (``mimo-ref dump`` / ``mimo-ref compare``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
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
        "lm.patch_decoder.logits.c0",  # one unpadded [B, V_c] tensor per channel (official layout)
        "lm.patch_decoder.tokens",
    ):
        assert expected in names, expected
    assert names.index("audio.mel") < names.index("audio.wav") < names.index("lm.input_embeds")


def test_two_dumps_of_the_same_run_agree_exactly(reference_dump, short_wav, tmp_path):
    again = tmp_path / "again.safetensors"
    trace.dump_run(output=again, audio=str(short_wav), new_groups=1)
    report = trace.compare_dumps(reference_dump, again)
    assert report["passed"] and not report["absent"] and not report["extra"]
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


# ---------------------------------------------------------------------------------------------------------------
# Dumps from any stage's input, dump layout, float64
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_inputs(reference_dump, tmp_path_factory) -> dict[str, Path]:
    """Each stage's input, taken from the reference dump and saved as the .npy a port would pass."""
    tensors, _ = trace.read_dump(reference_dump)
    folder = tmp_path_factory.mktemp("stage_inputs")
    files = {}
    for option, name in (
        ("--mel", "audio.mel"),
        ("--codes", "audio.decoder.codes"),
        ("--input-ids", "input.ids"),
        ("--local-hidden", "lm.local_hidden"),
    ):
        files[option] = folder / f"{name}.npy"
        np.save(files[option], tensors[name])
    return files


def renumbered_last_run(names: list[str], prefix: str, steps: int) -> dict[str, str]:
    """Names ``prefix...#k`` of the last ``steps`` occurrences -> the same names numbered from 0 (a dump that runs
    the patch decoder once numbers its steps 0..steps-1)."""
    out = {}
    bases = {n.partition("#")[0] for n in names if n.startswith(prefix)}
    for base in bases:
        occurrences = [n for n in names if n.partition("#")[0] == base]
        for k, name in enumerate(occurrences[-steps:]):
            out[name] = base if k == 0 else f"{base}#{k}"
    return out


@pytest.mark.parametrize(
    ("option", "first_stage", "absent_before"),
    [
        ("--mel", "audio.mel", ["input.wave"]),
        ("--codes", "audio.decoder.codes", ["input.wave", "audio.mel", "audio.encoder.features", "audio.rvq.codes"]),
        ("--input-ids", "input.ids", ["audio.wav", "audio.decoder.codes", "audio.mel"]),
    ],
)
def test_dump_from_a_stage_input_holds_that_stage_and_every_tap_after_it(
    reference_dump, stage_inputs, tmp_path, option, first_stage, absent_before, capsys
):
    """Fed the reference's own intermediate, a dump from that stage reproduces every later tensor bit for bit, and
    holds none of the earlier ones; comparing it with the full dump passes (absent tensors do not fail)."""
    out = tmp_path / "stage.safetensors"
    argv = ["dump", option, str(stage_inputs[option]), "--new-groups", "1", "-o", str(out)]
    assert cli.main(argv) == 0
    names = [t["name"] for t in json.loads(out.with_suffix(".json").read_text())["tensors"]]
    assert names[0] == first_stage
    reference_names = [t["name"] for t in json.loads(reference_dump.with_suffix(".json").read_text())["tensors"]]
    later = reference_names[reference_names.index(first_stage) :]
    report = trace.compare_dumps(reference_dump, out, rtol=0.0)
    assert report["passed"], report["first_failure"]
    assert [r["name"] for r in report["rows"]] == later  # every later tap, in pipeline order
    assert all(r.get("max_abs", 0.0) == 0.0 and r.get("mismatches", 0) == 0 for r in report["rows"])
    for name in absent_before:
        assert name in report["absent"] and name not in names
    capsys.readouterr()
    assert cli.main(["compare", str(reference_dump), str(out)]) == 0
    assert f"{len(later)} tensors compared, {len(report['absent'])} absent" in capsys.readouterr().out


def test_dump_from_a_local_hidden_state_runs_the_patch_decoder_alone(reference_dump, stage_inputs, tmp_path):
    out = tmp_path / "local.safetensors"
    assert cli.main(["dump", "--local-hidden", str(stage_inputs["--local-hidden"]), "-o", str(out)]) == 0
    local, order = trace.read_dump(out)
    assert order[0] == "lm.local_hidden"
    assert all(n == "lm.local_hidden" or n.startswith("lm.patch_decoder.") for n in order)
    # the reference dump ends with the patch decoder on the same state: its last run, renumbered, is this dump
    ref, ref_order = trace.read_dump(reference_dump)
    cfg = lm.load_lm(Path(__file__).parents[1] / "weights" / "mimo_audio_tiny")[1]
    renamed = renumbered_last_run(ref_order, "lm.patch_decoder.", cfg.local_steps)
    assert sorted(renamed.values()) == sorted(n for n in order if n != "lm.local_hidden")
    for ref_name, name in renamed.items():
        np.testing.assert_array_equal(local[name], ref[ref_name], err_msg=name)


def test_dump_rejects_conflicting_or_malformed_stage_inputs(stage_inputs, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    both = ["--mel", str(stage_inputs["--mel"]), "--codes", str(stage_inputs["--codes"])]
    assert cli.main(["dump", *both, "-o", out]) == 2
    assert "at most one of --audio, --mel, --codes" in capsys.readouterr().err
    assert cli.main(["dump", "--local-hidden", str(stage_inputs["--local-hidden"]), "--text", "hi", "-o", out]) == 2
    assert "starts at the patch decoder" in capsys.readouterr().err
    np.save(tmp_path / "short_codes.npy", np.zeros((3, 5), np.int64))
    assert cli.main(["dump", "--codes", str(tmp_path / "short_codes.npy"), "-o", out]) == 2
    assert "levels >= C = 8" in capsys.readouterr().err
    np.save(tmp_path / "wide_mel.npy", np.zeros((10, 7), np.float32))
    assert cli.main(["dump", "--mel", str(tmp_path / "wide_mel.npy"), "-o", out]) == 2
    assert "--mel must be [T, M = 128]" in capsys.readouterr().err


def test_dump_holds_patch_decoder_logits_per_channel_unpadded(reference_dump):
    """``lm.patch_decoder.logits.c{c}`` is channel c's head ``[B, V_c]`` applied to the step's hidden state (what
    the official ``local_transformer_lm_heads[c]`` returns): no padding, no -inf. Tokens of channels inactive at the
    step are -1."""
    tensors, order = trace.read_dump(reference_dump)
    params, cfg, _ = lm.load_lm(Path(__file__).parents[1] / "weights" / "mimo_audio_tiny")
    assert not any(n.partition("#")[0] == "lm.patch_decoder.logits" for n in order)
    steps = cfg.local_steps
    hidden_names = [n for n in order if n.partition("#")[0] == "lm.patch_decoder.stack.norm"]
    assert len(hidden_names) % steps == 0 and hidden_names
    for k, hidden_name in enumerate(hidden_names):
        suffix = "" if k == 0 else f"#{k}"
        hidden = tensors[hidden_name][:, 0]  # [B, 1, Dl] -> [B, Dl]
        for c, vocab in enumerate(cfg.speech_vocab_sizes):
            logits = tensors[f"lm.patch_decoder.logits.c{c}{suffix}"]
            assert logits.shape == (1, vocab) and np.all(np.isfinite(logits))
            head = np.asarray(params["local_transformer_lm_heads"][c]["weight"], np.float64)  # [V_c, Dl]
            np.testing.assert_allclose(logits, hidden @ head.T, rtol=1e-4, atol=1e-5)
        t = k % steps
        tokens = tensors[f"lm.patch_decoder.tokens{suffix}"]
        for c, delay in enumerate(cfg.delay_pattern):
            active = delay <= t < delay + cfg.group_size
            assert (tokens[0, c] >= 0) == active, (hidden_name, c)


def test_float64_dump_runs_generation_and_agrees_with_float32(reference_dump, stage_inputs, tmp_path):
    """The docs' route to 1e-6 comparisons: a float64 dump (LM prefill, generation, patch decoder)."""
    out = tmp_path / "f64.safetensors"
    with jax.enable_x64(True):
        trace.dump_run(output=out, input_ids=str(stage_inputs["--input-ids"]), dtype="float64", new_groups=1)
    manifest = json.loads(out.with_suffix(".json").read_text())
    dtypes = {t["name"]: t["dtype"] for t in manifest["tensors"]}
    assert manifest["dtype"] == "float64"
    assert dtypes["lm.backbone.norm"] == "float64" and dtypes["lm.patch_decoder.logits.c0"] == "float64"
    assert dtypes["lm.speech_embeddings_sum"] == "float32"  # the bfloat16 buffer, widened (docs/quirks.md)
    report = trace.compare_dumps(reference_dump, out, rtol=1e-4, only=["lm.", "generate.", "input.ids"])
    assert report["passed"], report["first_failure"]
    assert not report["absent"]  # every LM tensor of the float32 dump is in the float64 one


# ---------------------------------------------------------------------------------------------------------------
# Comparing partial ports
# ---------------------------------------------------------------------------------------------------------------


def partial_port(reference_dump: Path, folder: Path, prefix: str, *, perturb: str | None = None) -> Path:
    """A port's dump: only the reference tensors under ``prefix`` (no manifest), ``perturb`` scaled by 1.01."""
    from safetensors.numpy import save_file

    tensors, _ = trace.read_dump(reference_dump)
    kept = {n: v for n, v in tensors.items() if n.startswith(prefix)}
    if perturb is not None:
        kept[perturb] = kept[perturb] * np.float32(1.01)
    path = folder / f"port_{prefix.strip('.')}_{perturb}.safetensors"
    save_file(kept, str(path))
    return path


def test_compare_of_a_partial_port_passes_and_lists_absent_tensors(reference_dump, tmp_path, capsys):
    port = partial_port(reference_dump, tmp_path, "lm.patch_decoder.")
    report = trace.compare_dumps(reference_dump, port)
    assert report["passed"] and report["first_failure"] is None
    assert "input.wave" in report["absent"] and "lm.backbone.layer0" in report["absent"]
    assert all(r["name"].startswith("lm.patch_decoder.") for r in report["rows"])
    assert cli.main(["compare", str(reference_dump), str(port)]) == 0
    printed = capsys.readouterr().out
    assert "absent from the candidate" in printed and "not compared" in printed and "<== first" not in printed
    # strictness on request: --require (everything) or --only PREFIX (everything under the prefix)
    assert cli.main(["compare", str(reference_dump), str(port), "--require"]) == 1
    assert "required: FAIL" in capsys.readouterr().out
    assert cli.main(["compare", str(reference_dump), str(port), "--only", "lm.patch_decoder."]) == 0
    assert cli.main(["compare", str(reference_dump), str(port), "--only", "lm.patch_decoder.", "--only", "audio."]) == 1
    capsys.readouterr()
    assert cli.main(["compare", str(reference_dump), str(port), "--only", "nothing.here"]) == 2
    assert "no tensor of the reference" in capsys.readouterr().err


def test_first_divergence_of_a_partial_port_is_the_first_tensor_it_holds_that_differs(reference_dump, tmp_path):
    port = partial_port(reference_dump, tmp_path, "lm.patch_decoder.", perturb="lm.patch_decoder.stack.norm#2")
    report = trace.compare_dumps(reference_dump, port)
    assert report["first_failure"] == "lm.patch_decoder.stack.norm#2" and not report["passed"]
    rows = [r["name"] for r in report["rows"]]
    assert all(r["passed"] for r in report["rows"][: rows.index("lm.patch_decoder.stack.norm#2")])


def test_compare_table_shows_both_shapes_an_integer_column_and_no_warnings(tmp_path, capsys):
    from safetensors.numpy import save_file

    logits = np.array([[0.5, -np.inf, 2.0]], np.float32)
    save_file(
        {"a": np.zeros((2, 3), np.float32), "ids": np.array([1, 2, 3]), "logits": logits, "b": np.ones(4, np.float32)},
        str(tmp_path / "r.safetensors"),
    )
    cand_logits = np.array([[0.5, 0.0, 2.0]], np.float32)  # a finite value where the reference has -inf
    save_file(
        {"a": np.zeros((3, 2), np.float64), "ids": np.array([1, 5, 3]), "logits": cand_logits},
        str(tmp_path / "c.safetensors"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning (inf - inf, 0 * inf) fails the test
        code = cli.main(["compare", str(tmp_path / "r.safetensors"), str(tmp_path / "c.safetensors")])
    assert code == 1
    out = capsys.readouterr()
    assert out.err == ""
    lines = {line.split()[0]: line for line in out.out.splitlines() if line.split()}
    assert "mismatches" in lines["tensor"]
    assert "reference 2x3 float32, candidate 3x2 float64" in lines["a"]
    assert "1 of 3 differ, first at [1]" in lines["ids"]
    header = lines["tensor"]
    assert lines["ids"][: header.index("mismatches") + len("mismatches")].split()[-1] == "1"  # its own column
    assert "inf/nan pattern differs" in lines["logits"]
    assert out.out.count("<== first divergence") == 1  # on the first failing row of the reference's file order
    assert "absent from the candidate (1, not compared): b" in out.out


def test_compare_of_a_file_that_is_not_a_dump_is_a_clear_error(reference_dump, tmp_path, capsys):
    bogus = tmp_path / "port_output.safetensors"
    bogus.write_text("not a safetensors file")
    with pytest.raises(ValueError, match="port_output.safetensors is not a dump"):
        trace.compare_dumps(reference_dump, bogus)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="array.npy is not a dump"):
        trace.compare_dumps(tmp_path / "array.npy", reference_dump)
    for argv in ([str(reference_dump), str(bogus)], [str(tmp_path / "array.npy"), str(reference_dump)]):
        assert cli.main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err and "Traceback" not in err  # one line naming the problem
    assert cli.main(["compare", str(reference_dump), str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dump_order_survives_without_the_manifest(reference_dump, tmp_path):
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(reference_dump.read_bytes())  # the manifest stays behind
    _, order = trace.read_dump(reference_dump)
    assert trace.read_dump(copy)[1] == order
