"""Scale checkpoints (``mimo_ref/scale.py``, ``mimo-ref make-checkpoint``): the real layout, names and shapes.

The full-size plan is compared with ``tests/fixtures/real_shapes`` without writing data; checkpoints are written at
a reduced width (``--width-divisor 64``: the real vocabulary, layer counts and tensor names) and loaded by the
package's loaders, and a one-layer variant runs the pipeline end to end.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import soundfile as sf

from mimo_ref import cli, scale
from mimo_ref.audio import load_audio_tokenizer
from mimo_ref.audio.config import audio_config_from_dict
from mimo_ref.audio.config import param_shapes as audio_param_shapes
from mimo_ref.checkpoint import SafetensorsFile, open_checkpoint_tensors
from mimo_ref.config import lm_config_from_dict
from mimo_ref.lm import load_lm
from mimo_ref.lm import param_shapes as lm_param_shapes
from mimo_ref.text import load_text_tokenizer

HERE = Path(__file__).parent
REAL = HERE / "fixtures" / "real_shapes"
TINY_LM = HERE.parent / "weights" / "mimo_audio_tiny"
TINY_AUDIO = HERE.parent / "weights" / "mimo_audio_tokenizer_tiny"
WAV24 = HERE / "fixtures" / "golden" / "pipeline" / "speech_24k.wav"
DIVISOR = 64  # LM hidden 64, local 16; tokenizer d_model 20, vocoder 4: small, every real name kept

# Reported ids of the real tokenizer (docs/checkpoints.md): the generated one must match them.
REAL_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|sosp|>": 151665,
    "<|eosp|>": 151666,
    "<|empty|>": 151667,
    "<|sostm|>": 151670,
    "<|eostm|>": 151671,
    "<|eot|>": 151672,
}


def real_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((REAL / f"{name}.shapes.json").read_text()).items()}


def real_config(name: str) -> dict:
    return json.loads((REAL / f"{name}.config.json").read_text())


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> Path:
    """Both checkpoints at width / 64 with every real layer (written once for the module)."""
    out = tmp_path_factory.mktemp("scale") / "ckpt"
    scale.make_checkpoints(out, what="both", width_divisor=DIVISOR, seed=7, max_shard_bytes=10 * 10**6)
    return out


def header_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor in a checkpoint folder, from the files themselves."""
    out = {}
    for name, f in open_checkpoint_tensors(folder).items():
        out[name] = (f.shape(name), f.header[name]["dtype"])
    return out


def test_full_size_plan_is_the_real_checkpoints():
    lm = scale.lm_plan(real_config("mimo_audio_7b"))
    assert {s.name: s.shape for s in lm} == real_shapes("mimo_audio_7b")
    assert len(lm) == len({s.name for s in lm})
    audio = scale.audio_plan(real_config("mimo_audio_tokenizer"))
    assert {s.name: s.shape for s in audio} == real_shapes("mimo_audio_tokenizer")
    assert {s.dtype for s in lm} == {"BF16"} and {s.dtype for s in audio} == {"F32"}
    shards = scale.shard_plan(lm, scale.DEFAULT_SHARD_BYTES)
    assert [s for shard in shards for s in shard] == lm  # every tensor once, in order
    assert all(sum(s.nbytes for s in shard) <= scale.DEFAULT_SHARD_BYTES for shard in shards)
    assert sum(s.nbytes for s in lm) == 2 * sum(int(np.prod(v)) for v in real_shapes("mimo_audio_7b").values())


def test_reduced_checkpoints_have_the_real_names_and_load(reduced):
    lm_files = header_shapes(reduced / "lm")
    assert set(lm_files) == set(real_shapes("mimo_audio_7b"))  # exactly the real names
    lm_cfg = lm_config_from_dict(json.loads((reduced / "lm" / "config.json").read_text()))
    assert {n: s for n, (s, _) in lm_files.items()} == lm_param_shapes(lm_cfg)
    assert {d for _, d in lm_files.values()} == {"BF16"}
    assert lm_cfg.vocab_size == 151680 and lm_cfg.hidden_size == 4096 // DIVISOR and lm_cfg.backbone.num_layers == 36

    audio_files = header_shapes(reduced / "audio_tokenizer")
    assert set(audio_files) == set(real_shapes("mimo_audio_tokenizer"))  # RVQ training buffers included
    audio_cfg = audio_config_from_dict(json.loads((reduced / "audio_tokenizer" / "config.json").read_text()))
    spec = audio_param_shapes(audio_cfg)
    assert {n: s for n, (s, _) in audio_files.items() if n in spec} == spec
    assert {d for _, d in audio_files.values()} == {"F32"}

    params, cfg, special = load_lm(reduced / "lm")
    assert cfg == dataclasses.replace(lm_cfg, compute_dtype="float32")
    assert special.empty == 151667 and special.eot == 151672
    assert params["model"]["embed_tokens"]["weight"].shape == (151680, 4096 // DIVISOR)
    audio_params, audio_cfg_loaded = load_audio_tokenizer(reduced / "audio_tokenizer")
    assert audio_cfg_loaded.d_model == 1280 // DIVISOR and audio_cfg_loaded.encoder_layers == 32


def test_shards_and_index_follow_the_hf_layout(reduced):
    folder = reduced / "lm"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    n = len(shards)
    assert n >= 2 and shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(shards)
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    total = 0
    for shard in shards:
        raw = (folder / shard).read_bytes()
        tensors = safetensors.deserialize(raw)  # the safetensors package's own parser accepts the file
        assert {name for name, _ in tensors} == {k for k, v in index["weight_map"].items() if v == shard}
        data = sum(len(t["data"]) for _, t in tensors)
        assert data <= 10 * 10**6 or len(tensors) == 1  # the 10 MB limit, or one larger tensor alone
        total += data
        with safetensors.safe_open(folder / shard, framework="numpy") as f:
            assert f.metadata()["format"] == "pt"
    assert index["metadata"]["total_size"] == total
    assert {p.name for p in folder.iterdir()} == set(shards) | {
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert not list(reduced.glob(".*"))  # no temporary folders left behind


def test_values(reduced):
    lm = open_checkpoint_tensors(reduced / "lm")

    def lm_value(name):
        return np.asarray(lm[name].read(name), np.float32)

    assert np.all(lm_value("model.norm.weight") == 1)
    assert np.all(lm_value("model.layers.35.input_layernorm.weight") == 1)
    w = lm_value("model.embed_tokens.weight")
    assert abs(w.std() - 0.02) < 1e-3 and abs(w.mean()) < 1e-4
    assert 0.01 < lm_value("model.layers.0.self_attn.q_proj.bias").std() < 0.03  # small, non-zero biases
    up0, up1 = (lm_value(f"model.layers.{i}.mlp.up_proj.weight") for i in (0, 1))
    assert not np.array_equal(up0, up1)  # every tensor has its own generator

    audio = SafetensorsFile(reduced / "audio_tokenizer" / "model.safetensors")
    tiny = SafetensorsFile(TINY_AUDIO / "model.safetensors")
    window = "decoder.vocoder.head.istft.window"
    # the tiny checkpoint's window is torch.hann_window(960) (same nfft): equal up to torch's float32 cosine
    np.testing.assert_allclose(audio.read(window), tiny.read(window), rtol=0, atol=1e-7)
    book = "encoder.quantizer.vq.layers.3._codebook."
    assert np.array_equal(audio.read(book + "embed"), audio.read(book + "embed_avg"))
    assert np.all(audio.read(book + "cluster_size") == 1) and np.all(audio.read(book + "inited") == 1)
    assert 0.9 < audio.read(book + "embed").std() < 1.1
    assert np.all(audio.read("decoder.dconv1.norm.weight") == 1)


def test_values_do_not_depend_on_chunking():
    spec = scale.TensorSpec("x.weight", (5, 7), "BF16", "normal", 0.02, "x.weight")
    whole = np.concatenate(list(scale.tensor_chunks(spec, seed=3)))
    pieces = np.concatenate(list(scale.tensor_chunks(spec, seed=3, chunk=4)))
    assert whole.dtype == ml_dtypes.bfloat16 and np.array_equal(whole, pieces)
    assert not np.array_equal(whole, np.concatenate(list(scale.tensor_chunks(spec, seed=4))))


def test_text_tokenizer(reduced):
    tok = load_text_tokenizer(reduced / "lm")
    for text, token_id in REAL_SPECIAL_IDS.items():
        assert tok.backend.token_to_id(text) == token_id
        assert tok.encode(text) == [token_id]
    assert tok.backend.token_to_id("<|Human|>") == 151668 and tok.backend.token_to_id("<|SpeechLM|>") == 151669
    assert tok.backend.get_vocab_size() == 151673  # regular ids 0..151642, added tokens up to <|eot|>
    assert tok.eos_id == 151645 and tok.clean_up_tokenization_spaces is False
    for text in ("Hello world, this is MiMo-Audio.", "今天天气如何？", "a\n\n  b\tc  ", "<|sostm|>hi<|eostm|>"):
        ids = tok.encode(text)
        assert all(0 <= i < 151680 for i in ids) and tok.decode(ids) == text
    text = "the weather is nice today"
    assert len(tok.encode(text)) <= len(text) / 2  # pair and triple merges cover common English
    regular = tok.encode("".join(chr(c) for c in range(32, 1200)))
    assert max(regular) < 151643  # ordinary text never produces a special id
    # the same pipeline (normalizer, pre-tokenizer, decoder) as Qwen2's and the bundled tiny tokenizer
    ours = json.loads((reduced / "lm" / "tokenizer.json").read_text())
    tiny = json.loads((TINY_LM / "tokenizer.json").read_text())
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        assert ours[key] == tiny[key], key
    assert list(ours["model"]["vocab"].values()) == list(range(151643))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_checkpoints_the_pipeline_runs(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code, stdout, err = run(
        capsys,
        *("make-checkpoint", "--what", "both", "-o", str(out), "--width-divisor", str(DIVISOR)),
        *("--layers", "1", "--seed", "5", "--shard-size", "15MB"),
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert [Path(c["folder"]).name for c in summary["checkpoints"]] == ["lm", "audio_tokenizer"]
    assert 0 < summary["peak_rss_mib"] < 4096
    lm_cfg = json.loads((out / "lm" / "config.json").read_text())
    shards = scale.shard_plan(scale.lm_plan(lm_cfg), 15 * 10**6)  # --shard-size 15MB
    assert len(shards) > 1 and summary["checkpoints"][0]["files"] == [
        f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)
    ]
    for shard in shards:  # the 19 MB embedding and lm_head each fill a shard of their own
        assert sum(s.nbytes for s in shard) <= 15 * 10**6 or len(shard) == 1
    assert lm_cfg["num_hidden_layers"] == 1 and lm_cfg["local_layers"] == 1 and lm_cfg["hidden_size"] == 64
    audio_cfg = json.loads((out / "audio_tokenizer" / "config.json").read_text())
    assert audio_cfg["encoder_layers"] == 1 and audio_cfg["encoder_skip_layer_id"] == 1

    # the folders are ordinary --model / --audio-tokenizer inputs (pipeline.load): a voice-prompted TTS runs the
    # encoder, the LM with its patch encoder and decoder, and the audio decoder with the vocoder
    wav = tmp_path / "o.wav"
    code, _, err = run(
        capsys,
        *("tts", "Hello there.", "--instruct", "Speak slowly.", "--voice", str(WAV24), "-o", str(wav)),
        *("--model", str(out / "lm"), "--audio-tokenizer", str(out / "audio_tokenizer")),
        *("--max-new-groups", "2", "--no-progress"),
    )
    assert code == 0, err
    assert sf.info(wav).samplerate == 24000 and np.all(np.isfinite(sf.read(wav)[0]))


def test_cli_refuses_a_non_empty_folder_unless_forced_and_is_deterministic(tmp_path, capsys):
    base = ("make-checkpoint", "--what", "audio-tokenizer", "--width-divisor", str(DIVISOR), "--layers", "1")
    code, _, err = run(capsys, *base, "-o", str(tmp_path / "a"), "--seed", "1")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["audio_tokenizer"]  # --what: only that folder
    first = (tmp_path / "a" / "audio_tokenizer" / "model.safetensors").read_bytes()

    code, _, err = run(capsys, *base, "-o", str(tmp_path / "a"), "--seed", "2")
    assert code == 2 and "not empty" in err and "--force" in err
    assert (tmp_path / "a" / "audio_tokenizer" / "model.safetensors").read_bytes() == first  # untouched

    code, _, err = run(capsys, *base, "-o", str(tmp_path / "a"), "--seed", "2", "--force")
    assert code == 0, err
    second = (tmp_path / "a" / "audio_tokenizer" / "model.safetensors").read_bytes()
    assert second != first and len(second) == len(first)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["audio_tokenizer"]  # nothing left aside

    code, _, err = run(capsys, *base, "-o", str(tmp_path / "b"), "--seed", "1")
    assert code == 0, err
    assert (tmp_path / "b" / "audio_tokenizer" / "model.safetensors").read_bytes() == first  # same seed, same bytes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--width-divisor", "3"], "--width-divisor 3 does not divide `d_model` (1280)"),
        (["--width-divisor", "256"], "the reduced audio tokenizer config is not valid"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--shard-size", "lots"], "size 'lots' is not a number"),
    ],
)
def test_cli_rejects_bad_reductions_before_writing(tmp_path, capsys, extra, message):
    code, _, err = run(capsys, "make-checkpoint", "--what", "audio-tokenizer", "-o", str(tmp_path / "x"), *extra)
    assert code == 2 and message in err, err
    assert not (tmp_path / "x").exists()


def test_cli_rejects_a_file_as_target(tmp_path, capsys):
    (tmp_path / "lm").write_text("not a folder")
    code, _, err = run(capsys, "make-checkpoint", "--what", "lm", "-o", str(tmp_path))
    assert code == 2 and re.search(r"lm is a file", err), err


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["make-checkpoint", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--what", "--output", "--width-divisor", "--layers", "--seed", "--shard-size", "--force"):
        assert option in text
    assert "(default: 5GB)" in text and "(default: both)" in text


def test_scale_run_scripts_on_the_bundled_checkpoints(capsys):
    """``python -m mimo_ref.scale_run`` (the real-shape figures of docs/scale.md) end to end, on the tiny models."""
    import json

    from mimo_ref import scale_run

    weights = Path(__file__).parents[1] / "weights"
    scale_run.main(["tokenizer", str(weights / "mimo_audio_tokenizer_tiny"), "--seconds", "1"])
    tok = json.loads(capsys.readouterr().out)
    assert tok["samples"] == tok["code_frames"] * 960 and tok["peak_rss_gb"] > 0
    scale_run.main(
        ["tasks", str(weights / "mimo_audio_tiny"), str(weights / "mimo_audio_tokenizer_tiny")]
        + ["--new-groups", "2", "--seconds", "1", "--audio-weights", "bfloat16"]
    )
    tasks = json.loads(capsys.readouterr().out)
    assert tasks["audio_weights"] == "bfloat16" and tasks["tts_samples"] > 0 and tasks["asr_generated_groups"] >= 1
