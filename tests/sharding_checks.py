"""The several-device checks of ``tests/test_sharding.py``, run as one subprocess with 8 CPU devices.

``python tests/sharding_checks.py OUT.json`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``: runs
the single-device reference once, then every mesh of :data:`MESHES` against it, and writes what it measured
(errors, equalities, shard shapes, bytes, CLI outputs) as JSON. It asserts nothing itself: the test functions
assert on the JSON, one criterion each, so a failure names what differs.

The LM is a small random checkpoint written here (8 query heads, 4 KV heads, widths that divide 8), so that
every kind of rule is exercised: on ``model=8`` the query heads are split and the KV heads replicated (4 do not
divide 8), on ``model=4`` both are split. The audio tokenizer is the bundled tiny one.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from mimo_ref import audio as audio_tok  # noqa: E402
from mimo_ref import cli, generate, lm, pipeline, sampling, sharding  # noqa: E402
from mimo_ref.audio.config import param_shapes as audio_param_shapes  # noqa: E402
from mimo_ref.checkpoint import flatten  # noqa: E402

MESHES = ("data=1,model=8", "data=2,model=4", "data=8,model=1")
CLI_MESH = "data=2,model=4"

LM_CONFIG = {
    "vocab_size": 416,  # the bundled tiny text tokenizer's vocabulary
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,  # depth only adds float32 rounding (and compile time); the split is per layer
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "speech_vocab_size": "1025-1025-129-129-129-129-129-129",
    "speech_zeroemb_idx": "1024-1024-128-128-128-128-128-128",
    "delay_pattern": "0-1-2-3-4-5-6-7",
    "group_size": 4,
    "audio_channels": 8,
    "local_dim": 32,
    "local_layers": 1,
    "local_attn_heads": 8,
    "local_ffn_dim": 64,
    "input_local_layers": 1,
    "input_local_dim": None,
    "input_full_attention": True,
    "model_type": "qwen2",
}


def write_checkpoint(folder: Path) -> Path:
    """A random-weight LM checkpoint of :data:`LM_CONFIG` (real layout), with the bundled tiny text tokenizer."""
    from mimo_ref.config import lm_config_from_dict

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LM_CONFIG))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens.json"):
        shutil.copy(pipeline.BUNDLED_LM / name, folder / name)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in lm.param_shapes(lm_config_from_dict(LM_CONFIG, folder / "config.json")).items():
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.1 * rng.standard_normal(shape)
        else:  # unit-scale activations, so relative errors are measured on O(1) values
            value = rng.standard_normal(shape) / np.sqrt(shape[-1])
        tensors[name] = value.astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def rel_err(a, b) -> dict[str, float]:
    """Relative L2 error ``|a - b| / |b|`` (the project's measure, ``tests/golden_utils.py``) and, for the
    record, the relative max error ``max |a - b| / max |b|``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return {
        "l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
        "max": float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)),
    }


def forward_ids(cfg, special, rows: int, groups: int) -> np.ndarray:
    """``[rows, C+1, groups*G]``: random speech groups, every third group a text group."""
    rng = np.random.default_rng(1)
    g = cfg.group_size
    ids = np.empty((rows, cfg.audio_channels + 1, groups * g), np.int32)
    text = np.where(np.arange(groups) % 3 == 1, rng.integers(0, 400, (rows, groups)), special.empty)
    ids[:, 0] = np.repeat(text, g, axis=1)
    for c, vocab in enumerate(cfg.speech_vocab_sizes):
        ids[:, c + 1] = rng.integers(0, vocab - 1, (rows, groups * g))
    return ids


def ragged_prompts(cfg, special) -> list[np.ndarray]:
    """4 prompts of 3, 5, 2 and 7 groups (speech and text groups), as official prompts hold them."""
    prompts = []
    for b, groups in enumerate((3, 5, 2, 7)):
        ids = forward_ids(cfg, special, b + 1, groups)[b].astype(np.int64)
        ids[0, np.arange(ids.shape[1]) % cfg.group_size != 0] = -100  # official filler at text columns 1..G-1
        prompts.append(ids)
    return prompts


def shard_report(params, shapes: dict, rules, mesh) -> dict:
    """Per-device shard shapes against the plan, and per-device bytes against the plan's prediction."""
    the_plan = sharding.plan(shapes, rules, dict(mesh.shape))
    flat = flatten(params)
    wrong = []
    for name in shapes:
        got = {tuple(s.data.shape) for s in flat[name].addressable_shards}
        if got != {the_plan.shard_shape(name)} or len(flat[name].addressable_shards) != 8:
            wrong.append(f"{name}: {sorted(got)} != {the_plan.shard_shape(name)}")
    per_device = sharding.device_param_bytes(params)
    return {
        "wrong_shard_shapes": wrong,
        "device_bytes": sorted(set(per_device.values())),
        "devices": len(per_device),
        "plan_device_bytes": the_plan.device_bytes(4),
        "total_bytes": the_plan.total_bytes(4),
        "replicated": len(the_plan.replicated()),
        "examples": {
            name: [list(s.data.shape) for s in flat[name].addressable_shards[:1]]
            for name in shapes
            if name.endswith(("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"))
            or name in ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight")
        },
    }


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def main(out_path: str) -> None:
    start = time.perf_counter()
    report: dict = {"devices": len(jax.devices()), "platform": jax.devices()[0].platform, "meshes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mimo_sharding_"))
    folder = write_checkpoint(tmp / "lm")
    audio_folder = pipeline.BUNDLED_AUDIO_TOKENIZER

    # -- the single-device reference ------------------------------------------------------------------------------
    ref = pipeline.load(folder, audio_folder)
    cfg, special = ref.lm_cfg, ref.special
    forward = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))
    ids = forward_ids(cfg, special, rows=8, groups=6)
    ref_forward = [np.asarray(x) for x in forward(ref.lm_params, ids, cfg=cfg, empty_id=special.empty)]
    prompts = ragged_prompts(cfg, special)
    options = dict(max_new_groups=6, text_sampler=sampling.GREEDY, speech_sampler=sampling.GREEDY)
    ref_gen = generate.generate(ref.lm_params, cfg, special, prompts, **options)
    report["reference_generation"] = {
        "lengths": ref_gen.lengths.tolist(),
        "speech_groups": int(np.sum(ref_gen.ids[:, 0, :: cfg.group_size] == special.empty)),
    }
    rng = np.random.default_rng(2)
    wave = (0.3 * np.sin(np.arange(12000) * 2 * np.pi * 220 / 24000) + 0.05 * rng.standard_normal(12000)).astype(
        np.float32
    )  # 0.5 s at 24 kHz
    ref_codes = ref.encode_audio((wave, 24000)).codes
    ref_wav = audio_tok.codes_to_wav(ref.audio_params, ref.audio_cfg, ref_codes)
    lm_shapes = lm.param_shapes(cfg)
    audio_shapes = audio_param_shapes(ref.audio_cfg)
    report["reference_s"] = round(time.perf_counter() - start, 1)

    # -- every mesh against it ------------------------------------------------------------------------------------
    for spec in MESHES:
        t0 = time.perf_counter()
        mesh = sharding.make_mesh(spec)
        pipe = pipeline.load(folder, audio_folder, mesh=mesh)
        rows = sharding.batch_sharding(mesh)
        out = [
            np.asarray(x) for x in forward(pipe.lm_params, jax.device_put(ids, rows), cfg=cfg, empty_id=special.empty)
        ]
        gen = sharding.generate(pipe.lm_params, cfg, special, prompts, mesh=mesh, **options)
        codes = pipe.encode_audio((wave, 24000)).codes
        wav = audio_tok.codes_to_wav(pipe.audio_params, pipe.audio_cfg, ref_codes)
        report["meshes"][spec] = {
            "forward_rel_err": {
                key: rel_err(a, b)
                for key, a, b in zip(("embeds", "hidden", "logits", "local_hidden"), out, ref_forward, strict=True)
            },
            "generation_ids_equal": bool(np.array_equal(gen.ids, ref_gen.ids)),
            "generation_lengths_equal": bool(np.array_equal(gen.lengths, ref_gen.lengths)),
            "codes_equal": bool(np.array_equal(codes, ref_codes)),
            "wav_rel_err": rel_err(wav, ref_wav),
            "wav_shapes": [list(wav.shape), list(ref_wav.shape)],
            "lm": shard_report(pipe.lm_params, lm_shapes, sharding.lm_rules(cfg), mesh),
            "audio": shard_report(pipe.audio_params, audio_shapes, sharding.audio_rules(pipe.audio_cfg), mesh),
            "seconds": round(time.perf_counter() - t0, 1),
        }

    # -- the command line -----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    wav_path = tmp / "mesh.wav"
    common = ["--model", str(folder), "--audio-tokenizer", str(audio_folder), "--max-new-groups", "4", "--no-progress"]
    code, stdout, stderr = run_cli("tts", "Hello", "-o", str(wav_path), *common, "--mesh", CLI_MESH)
    single = ref.tts("Hello", max_new_groups=4)
    cli_report = {"tts_exit": code, "tts_stderr": stderr[-2000:], "tts_text_equal": stdout == single.text + "\n"}
    if code == 0:
        written, rate = sf.read(wav_path, dtype="int16")
        single_path = tmp / "single.wav"
        from mimo_ref.audio_io import write_wav

        write_wav(single_path, single.wav, 24000)
        expected, _ = sf.read(single_path, dtype="int16")
        cli_report["tts_rate"] = rate
        cli_report["tts_samples"] = [int(written.shape[0]), int(expected.shape[0])]
        same = written.shape == expected.shape
        cli_report["tts_max_pcm_diff"] = int(np.max(np.abs(written.astype(int) - expected))) if same else None
    code, stdout, stderr = run_cli(
        "bench", "--model", str(folder), "--mesh", CLI_MESH, "--batch", "2", "--prompt-groups", "2",
        "--new-groups", "2", "--repeats", "1",
    )  # fmt: skip
    cli_report["bench_exit"] = code
    cli_report["bench_stderr"] = stderr[-2000:]
    cli_report["bench"] = json.loads(stdout) if code == 0 else None
    code, _, stderr = run_cli("chat", "Hi", *common, "--mesh", "data=3,model=2")
    cli_report["bad_mesh_exit"] = code
    cli_report["bad_mesh_stderr"] = stderr[-2000:]
    cli_report["seconds"] = round(time.perf_counter() - t0, 1)
    report["cli"] = cli_report
    report["total_s"] = round(time.perf_counter() - start, 1)
    Path(out_path).write_text(json.dumps(report, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
