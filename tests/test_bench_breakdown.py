"""`mimo-ref bench --breakdown` (mimo_ref/bench_breakdown.py) end to end on the bundled tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mimo_ref import bench, bench_breakdown, cli, generate, lm, pipeline
from mimo_ref.config import load_lm_config
from mimo_ref.random_weights import speech_prompt

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_bench_breakdown_reports_stages_and_floor(capsys):
    # the shapes of tests/test_cli.py::test_bench_prints_json, so a whole-suite run reuses their compiles
    argv = ["bench", "--prompt-groups", "4", "--new-groups", "3", "--repeats", "1", "--breakdown"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "timing the stages of a group step" in err
    assert set(bench_breakdown.JSON_KEYS) <= set(result) <= set(bench.JSON_KEYS)
    for key in bench_breakdown.JSON_KEYS:
        assert f"`{key}`" in (DOCS / "performance.md").read_text(), f"{key} missing from docs/performance.md"
    stages = [result[f"stage_{name}_s"] for name in ("embed", "backbone", "heads_text", "patch_decoder")]
    assert all(np.isfinite(s) for s in stages) and sum(stages) > 0  # one stage may be below the timing noise
    assert abs(result["stage_loop_overhead_s"] - (result["s_per_group"] - sum(stages))) < 1e-5
    assert "timing the loop with text groups only" in err and np.isfinite(result["s_per_text_group"])
    assert abs(result["patch_decoder_in_loop_s"] - (result["s_per_group"] - result["s_per_text_group"])) < 1e-5
    assert result["floor_lm_head_s"] > 0 and result["floor_weights_s"] > 0
    ratio = result["s_per_group"] / result["floor_weights_s"]
    assert abs(result["s_per_group_over_floor"] - ratio) <= 1e-2 * max(1.0, abs(ratio))  # from values rounded to 0.1 us

    # the floor reads every weight but the two tables a step only gathers rows of
    cfg = load_lm_config(pipeline.BUNDLED_LM)
    shapes = lm.param_shapes(cfg)
    itemsize = result["param_bytes"] // sum(int(np.prod(s)) for s in shapes.values())
    gathered = sum(int(np.prod(s)) for name, s in shapes.items() if name.startswith(bench_breakdown.GATHERED))
    assert result["per_group_weight_bytes"] == result["param_bytes"] - itemsize * gathered
    bandwidth = result["per_group_weight_bytes"] / result["floor_weights_s"] / 1e9
    # computed from the unrounded floor and rounded to 0.01; the JSON floor is rounded to 0.1 us
    assert abs(result["floor_bandwidth_gb_s"] - bandwidth) <= 0.005 + bandwidth * 0.5e-7 / result["floor_weights_s"]

    # the computation's own floor reads the local stack and speech heads once per patch-decoder step
    local = sum(int(np.prod(s)) for name, s in shapes.items() if name.startswith(bench_breakdown.PER_LOCAL_STEP))
    assert result["step_read_bytes"] == result["per_group_weight_bytes"] + (cfg.local_steps - 1) * itemsize * local
    assert result["floor_step_reads_s"] > 0
    ratio = result["s_per_group"] / result["floor_step_reads_s"]
    assert abs(result["s_per_group_over_step_reads"] - ratio) <= 1e-2 * max(1.0, abs(ratio))


def test_floor_reads_every_stored_value_once():
    # read_once touches every element: its result is the sum of the weight (times 1 + start), float32 or bf16-held;
    # a bf16 weight is read as stored (a fused sum of its upcast), not through a bf16 matrix product
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((48, 16)).astype(np.float32)
    w16 = jnp.asarray(w32, jnp.bfloat16)
    for w, start in ((jnp.asarray(w32), 0.0), (w16, 0.0), (w16, 1.0), (jnp.asarray(w32[0]), 0.5)):
        expected = (1.0 + start) * np.asarray(w, np.float64).sum()
        got = float(bench_breakdown.read_once(w, jnp.float32(start)))
        assert abs(got - expected) < 1e-4 * np.abs(np.asarray(w, np.float64)).sum(), (w.dtype, w.shape, start)
    assert float(bench_breakdown.read_lm_head(w16)) == float(bench_breakdown.read_once(w16, jnp.float32(0.0)))


def test_stage_loop_runs_the_body_every_iteration_and_keeps_the_cache_carry():
    # timed_stage's loop: the body runs `iters` times (traced count), a carried second leaf (a KV cache) is
    # threaded through; the cond only skips the body if the activation (first leaf) is NaN, as documented
    def body(carry):
        x, cache = carry
        return x + 1.0, cache.at[0].add(x[0])

    for iters in (1, 9):
        x, cache = bench_breakdown.stage_loop(body, (jnp.zeros(2), jnp.zeros(3)), jnp.int32(iters))
        assert x.tolist() == [iters, iters] and cache.tolist() == [sum(range(iters)), 0.0, 0.0]
    x, _ = bench_breakdown.stage_loop(body, (jnp.full(2, jnp.nan), jnp.zeros(3)), jnp.int32(3))
    assert np.isnan(np.asarray(x)).all()
    assert float(bench_breakdown.nan_flag((jnp.ones(2), jnp.int32(3)))) == 0.0
    assert float(bench_breakdown.nan_flag((jnp.ones(2), jnp.asarray([jnp.nan])))) == 1.0


def test_text_groups_only_makes_every_generated_group_a_text_group():
    # the benchmark's s_per_text_group loop: the same prompts and step, only <|empty|> moved out of the vocabulary.
    # With a zeroed text head greedy picks id 0: declared <|empty|>, every group is a speech group (the patch
    # decoder never returns a channel's empty id); under text_groups_only every group is text, speech all empty ids
    params, cfg, special = lm.load_lm(pipeline.BUNDLED_LM)
    params = params | {"lm_head": {"weight": jnp.zeros_like(params["lm_head"]["weight"])}}
    special = dataclasses.replace(special, empty=0)
    prep = generate.prepare(cfg, special, [speech_prompt(cfg, special, 4, 0)], max_new_groups=3)

    def run(st):
        return np.asarray(generate.generate_jit(params, prep.ids, prep.pads, prep.min_length, prep.keys, st=st)[0])

    speech, text = run(prep.st), run(bench_breakdown.text_groups_only(prep.st))  # [1, N, C+1, G] each
    empty_frames = np.asarray(cfg.speech_empty_ids)[:, None]  # [C, 1]
    assert speech.shape[1] == text.shape[1] == 3
    assert (speech[0, :, 0] == 0).all() and (speech[0, :, 1:] != empty_frames).all()
    assert (text[0, :, 0] == 0).all() and (text[0, :, 1:] == empty_frames).all()
    assert bench_breakdown.text_groups_only(prep.st).special.empty == cfg.vocab_size
