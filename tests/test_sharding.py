"""Sharding (mimo_ref/sharding.py): the rules table, meshes, and every mesh against the single-device run.

The several-device checks run once, in a subprocess with 8 CPU devices (``tests/sharding_checks.py``), so the
rest of the suite keeps one device; each test below asserts one criterion on what it measured. The rules-table
tests need no devices: they plan the real 7B and tokenizer shapes (``tests/fixtures/real_shapes``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mimo_ref import lm, sharding
from mimo_ref.audio.config import audio_config_from_dict
from mimo_ref.audio.config import param_shapes as audio_param_shapes
from mimo_ref.config import lm_config_from_dict
from mimo_ref.pipeline import BUNDLED_LM

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).parent / "fixtures" / "real_shapes"
MESHES = ("data=1,model=8", "data=2,model=4", "data=8,model=1")
FLOAT32_RTOL = 1e-6  # relative L2 error |sharded - single| / |single|, float32 (as tests/golden_utils.py)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Run tests/sharding_checks.py on 8 CPU devices once and read its JSON."""
    out = tmp_path_factory.mktemp("sharding") / "report.json"
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"  # 8 host devices even where an accelerator exists
    # compile time is most of this test: LLVM optimisation level 0 cuts a quarter of it; every run in the
    # subprocess (single device and meshes alike) is compiled the same way
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("sharding_checks.py")), str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"sharding_checks.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    data = json.loads(out.read_text())
    assert data["devices"] == 8 and data["platform"] == "cpu"
    assert set(data["meshes"]) == set(MESHES)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Every mesh against one device (8 CPU devices, one subprocess)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh", MESHES)
def test_lm_forward_matches_single_device(report, mesh):
    errors = report["meshes"][mesh]["forward_rel_err"]
    assert set(errors) == {"embeds", "hidden", "logits", "local_hidden"}
    assert all(err["l2"] <= FLOAT32_RTOL for err in errors.values()), errors


@pytest.mark.parametrize("mesh", MESHES)
def test_greedy_generation_of_a_ragged_batch_is_identical(report, mesh):
    ref = report["reference_generation"]
    assert len(set(ref["lengths"])) > 1 and ref["speech_groups"] > 0  # ragged rows, patch decoder exercised
    result = report["meshes"][mesh]
    assert result["generation_ids_equal"] and result["generation_lengths_equal"]


@pytest.mark.parametrize("mesh", MESHES)
def test_audio_tokenizer_codes_identical_and_wav_close(report, mesh):
    result = report["meshes"][mesh]
    assert result["codes_equal"]
    assert result["wav_shapes"][0] == result["wav_shapes"][1]
    assert result["wav_rel_err"]["l2"] <= FLOAT32_RTOL, result["wav_rel_err"]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("part", ["lm", "audio"])
def test_params_are_really_split(report, mesh, part):
    """Every device holds exactly the plan's shard of every tensor, and the plan's number of bytes."""
    result = report["meshes"][mesh][part]
    model = int(mesh.split("model=")[1])
    assert result["wrong_shard_shapes"] == []
    assert result["devices"] == 8 and result["device_bytes"] == [result["plan_device_bytes"]]
    if model == 1:
        assert result["plan_device_bytes"] == result["total_bytes"]
    else:
        assert result["plan_device_bytes"] < result["total_bytes"]


def test_shard_shapes_of_the_lm(report):
    """8 query heads of 8 and 4 KV heads: model=8 splits the query heads and replicates K/V; model=4 splits both."""
    shapes = {mesh: report["meshes"][mesh]["lm"]["examples"] for mesh in MESHES}
    assert shapes["data=1,model=8"]["model.layers.0.self_attn.q_proj.weight"] == [[8, 64]]  # 1 head of 8 each
    assert shapes["data=1,model=8"]["model.layers.0.self_attn.k_proj.weight"] == [[32, 64]]  # 4 heads: whole
    assert shapes["data=2,model=4"]["model.layers.0.self_attn.k_proj.weight"] == [[8, 64]]  # 1 KV head each
    assert shapes["data=1,model=8"]["model.layers.0.mlp.down_proj.weight"] == [[64, 16]]  # F = 128 columns / 8
    assert shapes["data=1,model=8"]["model.embed_tokens.weight"] == [[52, 64]]  # V = 416 rows / 8
    assert shapes["data=8,model=1"]["model.embed_tokens.weight"] == [[416, 64]]


def test_cli_task_with_mesh_equals_single_device(report):
    cli = report["cli"]
    assert cli["tts_exit"] == 0, cli["tts_stderr"]
    assert cli["tts_text_equal"]
    assert cli["tts_rate"] == 24000 and cli["tts_samples"][0] == cli["tts_samples"][1] > 0
    assert cli["tts_max_pcm_diff"] <= 1  # 16-bit PCM of waves equal within 1e-6


def test_cli_bench_reports_per_device_bytes(report):
    cli = report["cli"]
    assert cli["bench_exit"] == 0, cli["bench_stderr"]
    bench = cli["bench"]
    assert bench["mesh"] == "data=2,model=4" and bench["batch"] == 2
    plan_2x4 = report["meshes"]["data=2,model=4"]["lm"]
    assert bench["param_bytes_per_device"] == plan_2x4["plan_device_bytes"]
    assert bench["param_bytes"] == plan_2x4["total_bytes"]
    assert "s_per_group" in bench and len(bench["devices"]) == 8


def test_cli_mesh_of_the_wrong_size_is_one_clear_line(report):
    cli = report["cli"]
    assert cli["bad_mesh_exit"] == 2
    assert "mesh data=3,model=2 needs 6 devices; JAX sees 8" in cli["bad_mesh_stderr"]
    assert "Traceback" not in cli["bad_mesh_stderr"]


# ---------------------------------------------------------------------------------------------------------------
# Meshes and the rules table (no devices needed)
# ---------------------------------------------------------------------------------------------------------------


def real_configs():
    lm_cfg = lm_config_from_dict(json.loads((REAL / "mimo_audio_7b.config.json").read_text()), REAL)
    audio_cfg = audio_config_from_dict(json.loads((REAL / "mimo_audio_tokenizer.config.json").read_text()))
    return lm_cfg, audio_cfg


@pytest.mark.parametrize(
    "text, sizes",
    [
        ("data=2,model=4", {"data": 2, "model": 4}),
        ("model=8", {"data": 0, "model": 8}),
        (" data=8 ", {"data": 8, "model": 0}),
    ],
)
def test_parse_mesh(text, sizes):
    assert sharding.parse_mesh(text) == sizes


@pytest.mark.parametrize("text", ["data=2;model=4", "batch=2", "data=0", "data=2,data=2", "model=x", ""])
def test_parse_mesh_rejects(text):
    with pytest.raises(sharding.ShardingError, match="cannot read mesh"):
        sharding.parse_mesh(text)


def test_cli_rejects_a_malformed_mesh_before_loading(capsys):
    from mimo_ref import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "Hi", "--mesh", "data=2x"])
    assert exit_info.value.code == 2
    assert "argument --mesh: cannot read mesh 'data=2x'" in capsys.readouterr().err


def test_make_mesh_on_one_device():
    mesh = sharding.make_mesh("model=1", devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "model": 1} and sharding.describe(mesh) == "data=1,model=1"
    with pytest.raises(sharding.ShardingError, match="needs 2 devices; JAX sees 1"):
        sharding.make_mesh("data=2,model=1", devices=jax.devices()[:1])
    with pytest.raises(sharding.ShardingError, match="'model=2' needs a multiple of 2 devices; JAX sees 1"):
        sharding.make_mesh("model=2", devices=jax.devices()[:1])
    with pytest.raises(sharding.ShardingError, match="axes must be among"):
        sharding.make_mesh({"batch": 1}, devices=jax.devices()[:1])


def test_rules_cover_every_tensor_of_every_checkpoint():
    """No tensor falls through the tables (an unmatched name is an error, never a silent default)."""
    lm_cfg, audio_cfg = real_configs()
    tiny_cfg = lm.load_lm(BUNDLED_LM)[1]
    for cfg in (lm_cfg, tiny_cfg):
        sharding.plan(lm.param_shapes(cfg), sharding.lm_rules(cfg), {"model": 1})
    sharding.plan(audio_param_shapes(audio_cfg), sharding.audio_rules(audio_cfg), {"model": 1})
    with pytest.raises(sharding.ShardingError, match="no sharding rule matches tensor extra.weight"):
        sharding.plan({"extra.weight": (4, 4)}, sharding.lm_rules(tiny_cfg), {"model": 2})


def test_7b_per_device_bytes_on_paper():
    """The real 7B (bf16) on a model axis of 8: 2.05 GB per device, within 3% of total / 8; the replicated
    tensors are the speech tables, the small projections and the norms."""
    lm_cfg, _ = real_configs()
    shapes = lm.param_shapes(lm_cfg)
    plan = sharding.plan(shapes, sharding.lm_rules(lm_cfg), {"data": 1, "model": 8})
    total, device = plan.total_bytes(2), plan.device_bytes(2)
    assert round(total / 1e9, 2) == 16.04 and device <= 1.03 * total / 8
    assert plan.shard_shape("model.layers.0.self_attn.k_proj.weight") == (128, 4096)  # 8 KV heads: 1 per device
    assert plan.shard_shape("lm_head.weight") == (151680 // 8, 4096)
    assert not any("layers" in name and "norm" not in name for name in plan.replicated())


def test_kv_heads_that_do_not_divide_are_replicated():
    """model=16 on the real 7B: 32 query heads split, its 8 KV heads replicated (an explicit rule)."""
    lm_cfg, _ = real_configs()
    plan = sharding.plan(lm.param_shapes(lm_cfg), sharding.lm_rules(lm_cfg), {"model": 16})
    assert plan.shard_shape("model.layers.0.self_attn.q_proj.weight") == (256, 4096)  # 2 query heads each
    assert plan.shard_shape("model.layers.0.self_attn.k_proj.weight") == (1024, 4096)
    assert plan.shard_shape("model.layers.0.self_attn.o_proj.weight") == (4096, 256)


def test_a_width_that_does_not_divide_is_a_clear_error():
    lm_cfg, _ = real_configs()
    with pytest.raises(
        sharding.ShardingError,
        match=r"cannot split tensor model.layers.0.mlp.gate_proj.weight \[11008, 4096\] over the model axis of size "
        r"3: 3 does not divide dim 0 \(FFN width \(rows F\)\) of size 11008",
    ):
        sharding.plan(lm.param_shapes(lm_cfg), sharding.lm_rules(lm_cfg), {"model": 3})
