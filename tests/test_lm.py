"""LM configs, weight spec and loader errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mimo_ref import lm
from mimo_ref.checkpoint import CheckpointError
from mimo_ref.config import ConfigError, lm_config_from_dict, load_lm_config

REAL = Path(__file__).parent / "fixtures" / "real_shapes"
TINY = Path(__file__).parents[1] / "weights" / "mimo_audio_tiny"


def test_param_shapes_match_real_7b_checkpoint():
    cfg = lm_config_from_dict(json.loads((REAL / "mimo_audio_7b.config.json").read_text()))
    expected = {k: tuple(v) for k, v in json.loads((REAL / "mimo_audio_7b.shapes.json").read_text()).items()}
    assert lm.param_shapes(cfg) == expected
    assert len(expected) == 719


def test_real_config_derivations():
    cfg = lm_config_from_dict(json.loads((REAL / "mimo_audio_7b.config.json").read_text()))
    assert cfg.local.head_dim == 16 and cfg.local.num_kv_heads == 64
    assert cfg.input_local.intermediate_size == 4096 and cfg.input_local.num_layers == 6
    assert cfg.local.rope_theta == cfg.backbone.rope_theta == 640000.0
    assert cfg.delay_pattern == tuple(range(8)) and cfg.local_steps == 11
    assert cfg.speech_empty_ids == (1024, 1024) + (128,) * 6


def test_input_local_dim_differs_adds_projection():
    data = json.loads((TINY / "config.json").read_text()) | {"input_local_dim": 16}
    cfg = lm_config_from_dict(data)
    shapes = lm.param_shapes(cfg)
    assert shapes["speech_embeddings_to_local.weight"] == (cfg.local_dim, 16)
    assert shapes["speech_group_downcast.weight"] == (cfg.hidden_size, 16 * cfg.group_size)


def copy_tiny(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(TINY, dst)
    return dst


def test_missing_tensor_is_named(tmp_path):
    ckpt = copy_tiny(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model.layers.1.mlp.up_proj.weight"):
        lm.load_lm(ckpt)


def test_unexpected_tensor_is_named(tmp_path):
    ckpt = copy_tiny(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected 1 tensor.*model.extra.weight"):
        lm.load_lm(ckpt)


def test_wrong_shape_is_named(tmp_path):
    ckpt = copy_tiny(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:-1]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lm_head.weight is \[415, 64\], expected \[416, 64\]"):
        lm.load_lm(ckpt)


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
    ckpt = copy_tiny(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(ckpt / shard))
    (ckpt / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: s for s, keys in halves.items() for k in keys}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    params, _, _ = lm.load_lm(ckpt)
    np.testing.assert_array_equal(np.asarray(params["lm_head"]["weight"]), tensors["lm_head.weight"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("hidden_size"), "has no `hidden_size`"),
        (lambda d: d.update(group_size="four"), "`group_size` must be int"),
        (lambda d: d.update(delay_pattern="0-1-2"), "`delay_pattern` has 3 entries but audio_channels is 8"),
        (lambda d: d.update(speech_zeroemb_idx="1025-1024-128-128-128-128-128-128"), "channel 0 empty id 1025"),
    ],
)
def test_broken_config_is_named(tmp_path, edit, message):
    ckpt = copy_tiny(tmp_path)
    data = json.loads((ckpt / "config.json").read_text())
    edit(data)
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        lm.load_lm(ckpt)


def test_unparseable_config_is_named(tmp_path):
    ckpt = copy_tiny(tmp_path)
    (ckpt / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        load_lm_config(ckpt)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        lm.load_lm(tmp_path / "nope")


def test_float64_needs_x64():
    with pytest.raises(ValueError, match="jax_enable_x64"):
        lm.load_lm(TINY, "float64")
