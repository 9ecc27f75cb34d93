"""Generation and sampler parity with the official implementation (`lm/` fixtures).

`generate_greedy_ids_nostop` / `generate_greedy_ids`: the official `generate()` with greedy global and local
samplers; ids and length must match exactly. `sampler.{i}.processed`: `MiMoSampler.process` per row; the -inf
pattern must match exactly and finite values to 1e-6 (relative L2).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mimo_ref import golden_cases, lm, sampling
from tests.golden_utils import assert_close, load_arrays


@pytest.fixture(scope="module")
def fixtures(golden_dir):
    inputs = load_arrays(golden_dir / "lm" / "inputs.safetensors")
    expected = load_arrays(golden_dir / "lm" / "expected.safetensors")
    params, cfg, special = lm.load_lm(golden_dir / "lm")
    return inputs, expected, params, cfg, special


def run_official_style(fixtures, with_stop: bool) -> np.ndarray:
    inputs, _, params, cfg, special = fixtures
    return golden_cases.fixture_generate(params, cfg, special, inputs, with_stop=with_stop)


def test_generate_greedy_ids_nostop(fixtures):
    want = fixtures[1]["generate_greedy_ids_nostop"]
    got = run_official_style(fixtures, with_stop=False)
    assert got.shape == want.shape, f"generated {got.shape[1]} columns, official {want.shape[1]}"
    np.testing.assert_array_equal(got, want)


def test_generate_greedy_ids_with_stop(fixtures):
    want = fixtures[1]["generate_greedy_ids"]
    got = run_official_style(fixtures, with_stop=True)
    assert got.shape == want.shape, f"generated {got.shape[1]} columns, official {want.shape[1]}"
    np.testing.assert_array_equal(got, want)


def sampler_from_params(values) -> sampling.SamplerConfig:
    temperature, top_k, top_p = (float(v) for v in values)
    return sampling.SamplerConfig(
        do_sample=True,
        temperature=None if temperature == -1 else temperature,
        top_k=None if top_k == -1 else int(top_k),
        top_p=None if top_p == -1 else top_p,
    )


def sampler_cases(golden_dir):
    return sorted(
        {k.split(".")[1] for k in load_arrays(golden_dir / "lm" / "inputs.safetensors") if k.startswith("sampler.")}
    )


def pytest_generate_tests(metafunc):
    if "sampler_case" in metafunc.fixturenames:
        from pathlib import Path

        metafunc.parametrize("sampler_case", sampler_cases(Path(metafunc.config.getoption("--golden-dir"))))


def test_sampler_processed(sampler_case, fixtures):
    inputs, expected, *_ = fixtures
    sampler = sampler_from_params(inputs[f"sampler.{sampler_case}.params"])
    got = np.asarray(sampling.process_logits(jnp.asarray(inputs["sampler_scores"]), sampler))
    want = expected[f"sampler.{sampler_case}.processed"]
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"sampler.{sampler_case}: -inf pattern")
    finite = ~np.isneginf(want)
    assert_close(got[finite], want[finite], 1e-6, f"sampler.{sampler_case}.processed")
