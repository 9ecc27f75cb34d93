"""LM parity with the official implementation on the golden fixtures (`lm/`).

Tolerances (relative L2): float32 <= 1e-5 vs ``f32.*``, float64 <= 1e-6 vs ``f64.*``, bfloat16 <= 3e-2 vs
``bf16.*``; greedy patch-decoder tokens exact. Shapes, ids and counts are read from the fixture files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_ref import lm, sampling
from tests.golden_utils import assert_close, load_arrays

DTYPES = {"f32": ("float32", 1e-5), "f64": ("float64", 1e-6), "bf16": ("bfloat16", 3e-2)}


def x64(prefix: str):
    return jax.enable_x64(True) if prefix == "f64" else contextlib.nullcontext()


@pytest.fixture(scope="module")
def lm_fixtures(golden_dir):
    return load_arrays(golden_dir / "lm" / "inputs.safetensors"), load_arrays(
        golden_dir / "lm" / "expected.safetensors"
    )


@pytest.fixture(scope="module")
def lm_runs(golden_dir, lm_fixtures):
    """One official-style forward + greedy patch decoder per dtype, computed once for all assertions."""
    inputs, _ = lm_fixtures
    runs = {}
    for prefix, (dtype, _) in DTYPES.items():
        with x64(prefix):
            params, cfg, special = lm.load_lm(golden_dir / "lm", dtype)
            ids = jnp.asarray(inputs["embeds_input_ids"])
            embeds, hidden, logits, local_hidden = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))(
                params, ids, cfg=cfg, empty_id=special.empty
            )
            greedy = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
            keys = jax.random.split(jax.random.key(0), ids.shape[0])
            tokens = lm.patch_decoder(params, local_hidden, greedy, keys, cfg=cfg)
            runs[prefix] = {
                "input_embeds": np.asarray(embeds.astype(jnp.float32 if prefix == "bf16" else embeds.dtype)),
                "hidden_states": np.asarray(hidden.astype(jnp.float32 if prefix == "bf16" else hidden.dtype)),
                "text_logits": np.asarray(logits[:, None].astype(jnp.float32 if prefix == "bf16" else logits.dtype)),
                "local_hidden_states": np.asarray(
                    local_hidden[:, None].astype(jnp.float32 if prefix == "bf16" else local_hidden.dtype)
                ),
                "local_tokens_greedy": np.asarray(tokens),
            }
    return runs


def float_cases(golden_dir):
    expected = load_arrays(golden_dir / "lm" / "expected.safetensors")
    names = ("input_embeds", "hidden_states", "text_logits", "local_hidden_states")
    return sorted(k for k in expected if k.split(".")[0] in DTYPES and k.split(".", 1)[1] in names)


def pytest_generate_tests(metafunc):
    if "float_case" in metafunc.fixturenames:
        golden = Path(metafunc.config.getoption("--golden-dir"))
        metafunc.parametrize("float_case", float_cases(golden))


def test_lm_float_outputs(float_case, lm_fixtures, lm_runs):
    prefix, name = float_case.split(".", 1)
    _, expected = lm_fixtures
    assert_close(lm_runs[prefix][name], expected[float_case], DTYPES[prefix][1], float_case)


@pytest.mark.parametrize("prefix", ["f32", "f64"])
def test_lm_greedy_local_tokens(prefix, lm_fixtures, lm_runs):
    _, expected = lm_fixtures
    want = expected[f"{prefix}.local_tokens_greedy"]
    got = lm_runs[prefix]["local_tokens_greedy"]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_all_lm_expected_keys_are_checked(lm_fixtures):
    """Every `lm/` expected key is covered by a test here or in test_generate.py (no silently skipped case)."""
    _, expected = lm_fixtures
    covered = {"input_embeds", "hidden_states", "text_logits", "local_hidden_states", "local_tokens_greedy"}
    for key in expected:
        head = key.split(".")[0]
        if head in DTYPES:
            assert key.split(".", 1)[1] in covered, key
        else:
            assert head in {"sampler", "generate_greedy_ids", "generate_greedy_ids_nostop"}, key
