"""Generation benchmark: compile time, prefill time and steady-state seconds per generated group.

``run_bench`` measures the default decode path (:func:`mimo_ref.generate.generate_jit`, one jitted while_loop):

- compile: ahead-of-time ``lower().compile()`` of the whole generate call (and of the prefill alone);
- prefill: the compiled prefill on the prompt, median of ``repeats`` runs;
- per group: ``(generate(N groups) - generate(1 group)) / (N - 1)``, each the median of ``repeats`` runs of
  an ahead-of-time compiled generate, so neither compile time nor prefill enters the steady-state number;
- peak memory: the process's maximum resident set size (``ru_maxrss``).

``force_speech`` makes every group a speech group, the expensive case: the text head is zeroed so greedy picks id 0,
and id 0 is declared ``<|empty|>`` for the run. That changes what is computed, not how long it takes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref import bench_breakdown, generate, lm, sampling
from mimo_ref.bucketing import PROMPT_BUCKET
from mimo_ref.config import lm_config_from_dict
from mimo_ref.precision import Precision, param_bytes, resolve_precision
from mimo_ref.random_weights import random_params, random_weight_bytes, speech_prompt, synthetic_special

log = logging.getLogger(__name__)  # stage messages; the CLI prints them on stderr

# Every key of run_bench's result, explained: the CLI's `bench --help` epilog and docs/generation.md show this.
JSON_KEYS = {
    "source": "the checkpoint folder, or the preset with random weights",
    "compute_dtype": "dtype of activations and math",
    "weight_storage": "how weights are held: as the checkpoint stores them, or rounded to bfloat16",
    "param_bytes": "bytes of the LM weights as held in memory",
    "batch": "rows generated together, one prompt each",
    "prompt_groups": "prompt length of each row, in groups",
    "prompt_slots": "prompt length after left-padding to the compile bucket, in groups",
    "new_groups": "groups generated per row",
    "speech_groups": "generated groups (all rows) that were speech groups (patch decoder run)",
    "compile_s": "seconds to compile the whole generate call (ahead of time)",
    "prefill_compile_s": "seconds to compile the prefill alone",
    "prefill_s": "seconds of one prefill of the prompt (median of --repeats)",
    "generate_s": "seconds of one whole generate call: prefill + new_groups steps (median)",
    "generate_1_group_s": "seconds of a generate call of 1 group (median): prefill and loop overhead",
    "text_head_layout": "how the decode loop holds lm_head: input-major (one row on CPU, float32-held: "
    "mimo_ref/lm.py::text_head_decode_layout) or as stored",
    "text_head_layout_s": "seconds to make that layout, once per loaded model before its first generation (not in "
    "generate_s: a loaded model keeps it)",
    "s_per_group": "steady-state seconds per decode step, (generate_s - generate_1_group_s) / (new_groups - 1): "
    "each step adds one group to every row, so this is also the per-row latency between groups",
    "groups_per_s": "groups generated per second over all rows: batch / s_per_group",
    "groups_per_s_per_row": "groups per second for one row: 1 / s_per_group",
    "mesh": "device mesh (--mesh): rows over `data`, weights split over `model` (docs/sharding.md); none: one device",
    "param_bytes_per_device": "bytes of LM weights the fullest device holds (param_bytes / model axis, plus the "
    "replicated tensors)",
    "peak_rss_mb": "the process's peak resident host memory (ru_maxrss), MiB",
    "repeats": "timed runs per measurement",
    "backend": "JAX backend (cpu, gpu, tpu)",
    "devices": "JAX devices",
    "host_huge_pages": "the host's transparent huge page mode (always, madvise, never; unknown off Linux) and "
    "glibc.malloc.hugetlb from GLIBC_TUNABLES: with madvise, =1 puts XLA's CPU buffers on 2 MB pages "
    '(docs/performance.md, section "Huge pages")',
} | bench_breakdown.JSON_KEYS


def throughput(s_per_group: float, batch: int) -> dict:
    """The rate keys of the result from the seconds per decode step: a step adds one group to each of ``batch``
    rows, so all rows together gain ``batch / s_per_group`` groups per second and one row ``1 / s_per_group``.
    Rates are None when timing noise made the step time non-positive."""
    positive = s_per_group > 0
    return {
        "s_per_group": round(s_per_group, 6),
        "groups_per_s": round(batch / s_per_group, 2) if positive else None,
        "groups_per_s_per_row": round(1.0 / s_per_group, 2) if positive else None,
    }


def json_keys_help() -> str:
    """The JSON keys as an indented list for ``mimo-ref bench --help``."""
    return "JSON keys:\n" + "\n".join(f"  {key}: {text}" for key, text in JSON_KEYS.items())


THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # e.g. "always [madvise] never"


def host_huge_pages(mode_file: Path = THP_MODE_FILE, environ=os.environ) -> str:
    """Whether this process's large buffers can sit on 2 MB pages, as the ``host_huge_pages`` key states it: the
    kernel's transparent huge page mode (the bracketed word of ``mode_file``; ``unknown`` where it is absent) and
    ``glibc.malloc.hugetlb`` as ``GLIBC_TUNABLES`` sets it (glibc reads it at process start; ``unset`` if not)."""
    try:
        text = mode_file.read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = "unknown"
    tunables = dict(item.partition("=")[::2] for item in environ.get("GLIBC_TUNABLES", "").split(":") if item)
    hugetlb = tunables.get("glibc.malloc.hugetlb")
    return f"{mode}, glibc.malloc.hugetlb" + (f"={hugetlb}" if hugetlb is not None else " unset")


def available_host_bytes() -> int | None:
    """Memory the OS could give this process now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024  # reported in kB
    except (OSError, KeyError, ValueError):
        return None


def memory_limit_bytes() -> int | None:
    """What the weights must fit in: the accelerator's memory (its allocator's limit) on a GPU/TPU backend, the
    machine's physical memory on the CPU backend; None where neither is known."""
    if jax.default_backend() != "cpu":
        return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


PRESETS = {
    # The real MiMo-Audio-7B shapes (about 16 GB of bf16 weights; 32 GB in float32).
    "7b": {
        "vocab_size": 151680, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 8192,
        "rope_theta": 640000.0, "rms_norm_eps": 1e-6, "local_dim": 1024, "local_layers": 16,
        "local_attn_heads": 64, "local_ffn_dim": 4096, "input_local_layers": 6, "input_local_dim": 1024,
    },
    # The benchmark shape of the generation issue: real vocab, speech settings, small widths.
    "small": {
        "vocab_size": 151680, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 8192,
        "rope_theta": 640000.0, "rms_norm_eps": 1e-6, "local_dim": 256, "local_layers": 4,
        "local_attn_heads": 16, "local_ffn_dim": 1024, "input_local_layers": 2, "input_local_dim": None,
    },
}  # fmt: skip
SPEECH_FIELDS = {
    "speech_vocab_size": "1025-1025-129-129-129-129-129-129",
    "speech_zeroemb_idx": "1024-1024-128-128-128-128-128-128",
    "delay_pattern": "0-1-2-3-4-5-6-7",
    "group_size": 4,
    "audio_channels": 8,
    "input_full_attention": True,
    "tie_word_embeddings": False,
}


# The dtype a preset's random weights are "stored" in, as a checkpoint would hold them (the real 7B is bf16).
PRESET_CHECKPOINT_DTYPE = {"7b": jnp.bfloat16, "small": jnp.float32}


def preset_config(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return lm_config_from_dict(PRESETS[name] | SPEECH_FIELDS, Path(f"<preset {name}>"))


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(
    *,
    model: str | None = None,
    preset: str | None = None,
    prompt_groups: int = 32,
    new_groups: int = 32,
    batch: int = 1,
    precision: str | Precision = "float32",
    weights: str | None = None,
    repeats: int = 3,
    force_speech: bool = True,
    seed: int = 0,
    mesh=None,
    breakdown: bool = False,
) -> dict:
    """Benchmark generation on a checkpoint (``model``) or a preset shape with random weights. -> JSON-able dict.

    ``precision``: a preset of :mod:`mimo_ref.precision`; ``weights`` ("checkpoint" / "bfloat16") overrides its
    weight storage. A preset's random weights stand for a checkpoint stored in ``PRESET_CHECKPOINT_DTYPE`` (bf16
    for ``7b``, as the real checkpoint) and are held by the same storage rule as a loaded checkpoint.
    ``mesh`` (``"data=2,model=4"``, see :func:`mimo_ref.sharding.make_mesh`): weights placed shard by shard over
    the devices, the batch split over ``data`` (``batch`` must be a multiple of it).
    ``breakdown``: add the stage times and the measured floor (:mod:`mimo_ref.bench_breakdown`).
    """
    from mimo_ref import sharding

    mesh = None if mesh is None else sharding.make_mesh(mesh)
    if mesh is not None and batch % mesh.shape[sharding.DATA]:
        raise ValueError(f"--batch {batch} must be a multiple of the mesh's data axis ({mesh.shape[sharding.DATA]})")
    precision = resolve_precision(precision)
    if weights is not None:
        precision = dataclasses.replace(precision, weights=weights)
    if (model is None) == (preset is None):
        raise ValueError("pass exactly one of a checkpoint (--model) or a preset with random weights (--preset)")
    if model is not None:
        place = None if mesh is None else sharding.lm_placer(model, mesh)
        log.info("loading the LM from %s ...", model)
        params, cfg, special = lm.load_lm(model, precision, place=place)
        source = str(model)
    else:
        cfg = dataclasses.replace(preset_config(preset), compute_dtype=precision.compute)
        storage = precision.storage_dtype(PRESET_CHECKPOINT_DTYPE[preset])
        shapes = lm.param_shapes(cfg)
        held, peak = random_weight_bytes(shapes, storage)
        count = sum(int(np.prod(s)) for s in shapes.values())
        log.info(
            "building random weights for preset %s: %.2f G parameters, %.1f GB in %s (peak %.1f GB while building)",
            preset, count / 1e9, held / 1e9, jnp.dtype(storage).name, peak / 1e9,
        )  # fmt: skip
        limit = memory_limit_bytes()
        if limit is not None and peak > limit:
            raise ValueError(
                f"preset {preset} needs about {peak / 1e9:.1f} GB of memory for its weights but this "
                f"{jax.default_backend()} backend has {limit / 1e9:.1f} GB; use --precision bfloat16 or --preset small"
            )
        free = available_host_bytes() if jax.default_backend() == "cpu" else None
        if free is not None and peak > free:
            log.warning("only %.1f GB of memory is free now: building may swap or be killed", free / 1e9)
        place = None if mesh is None else sharding.placer(sharding.lm_rules(cfg), mesh)
        params = random_params(shapes, seed, storage, place=place)
        special = synthetic_special(cfg.vocab_size)
        source = f"preset {preset}, random weights"
    resident = param_bytes(params)
    if force_speech:
        params = params | {"lm_head": {"weight": jnp.zeros_like(params["lm_head"]["weight"])}}
        special = dataclasses.replace(special, empty=0)
    t0 = time.perf_counter()
    if mesh is None:  # the text head as generate holds it (one row on CPU: input-major, made once per loaded head)
        params = jax.block_until_ready(lm.text_head_decode_layout(params, cfg=cfg, rows=batch))
    layout_s = time.perf_counter() - t0
    prompts = [speech_prompt(cfg, special, prompt_groups, seed + b) for b in range(batch)]
    local_sampler = sampling.task_samplers("tts")[1]

    def compiled(groups: int, *, text_only: bool = False):
        st, ids, pads, min_length, keys, _ = generate.prepare(
            cfg, special, prompts, max_new_groups=groups, min_new_groups=0, stop_tokens=(),
            text_sampler=sampling.GREEDY, speech_sampler=local_sampler, key=jax.random.key(seed),
            prompt_bucket=PROMPT_BUCKET,
        )  # fmt: skip
        if text_only:
            st = bench_breakdown.text_groups_only(st)
        t0 = time.perf_counter()
        if mesh is not None:  # rows over the data axis; the params carry their own shardings
            rows = sharding.batch_sharding(mesh)
            ids, pads, min_length, keys = (jax.device_put(x, rows) for x in (ids, pads, min_length, keys))
        fn = generate.generate_jit.lower(params, ids, pads, min_length, keys, st=st).compile()
        args = (params, ids, pads, min_length, keys)
        return fn, args, time.perf_counter() - t0, st

    if new_groups < 2:
        raise ValueError("--new-groups must be >= 2 (the per-group time is a difference of two run lengths)")
    log.info("compiling generate for %d groups x %d rows ...", new_groups, batch)
    gen_full, args_full, compile_s, st = compiled(new_groups)
    log.info("compiled in %.1f s; compiling the 1-group run and the prefill ...", compile_s)
    gen_one, args_one, _, _ = compiled(1)
    t0 = time.perf_counter()
    prefill_compiled = generate.prefill_jit.lower(params, args_full[1], args_full[2], st=st).compile()
    prefill_compile_s = time.perf_counter() - t0

    log.info("timing: prefill, then generate of %d and of 1 groups, %d runs each ...", new_groups, repeats)
    prefill_s = timed(lambda: jax.block_until_ready(prefill_compiled(params, args_full[1], args_full[2])), repeats)
    new, generated, total_s, one_s, per_group = step_seconds(gen_full, args_full, gen_one, args_one, repeats)
    speech_groups = int(np.sum(np.asarray(new)[:, :generated, 0, 0] == special.empty))
    return {
        "source": source,
        "compute_dtype": precision.compute,
        "weight_storage": precision.weights,
        "param_bytes": resident,
        "batch": batch,
        "prompt_groups": prompt_groups,
        "prompt_slots": st.prompt_slots,
        "new_groups": generated,
        "speech_groups": speech_groups,
        "compile_s": round(compile_s, 3),
        "prefill_compile_s": round(prefill_compile_s, 3),
        "prefill_s": round(prefill_s, 5),
        "generate_s": round(total_s, 5),
        "generate_1_group_s": round(one_s, 5),
        "text_head_layout": "input-major" if "weight_t" in params["lm_head"] else "as stored",
        "text_head_layout_s": round(layout_s, 4),
        **throughput(per_group, batch),
        "mesh": sharding.describe(mesh),
        "param_bytes_per_device": max(sharding.device_param_bytes(params).values()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeats": repeats,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host_huge_pages": host_huge_pages(),
    } | (breakdown_keys(params, prefill_compiled, args_full, st, per_group, repeats, compiled) if breakdown else {})


def step_seconds(gen_full, args_full, gen_one, args_one, repeats: int):
    """Time compiled generate calls of N groups and of 1 group. -> (the N-group call's groups, groups generated,
    its seconds, the 1-group call's seconds, steady-state seconds per group)."""
    new, n_new = jax.block_until_ready(gen_full(*args_full))
    generated = int(np.asarray(n_new).min())
    total_s = timed(lambda: jax.block_until_ready(gen_full(*args_full)), repeats)
    one_s = timed(lambda: jax.block_until_ready(gen_one(*args_one)), repeats)
    # steady state: what the extra groups cost beyond the 1-group run (same prefill, same compile-free path)
    return new, generated, total_s, one_s, (total_s - one_s) / max(generated - 1, 1)


def breakdown_keys(params, prefill_compiled, args, st, per_group: float, repeats: int, compiled) -> dict:
    """The ``--breakdown`` keys: the same loop with every group a text group (``compiled(groups, text_only=True)``),
    each stage of a group step timed in its own loop on this run's prefill state, and the floor."""
    log.info("timing the loop with text groups only (the patch decoder skipped) ...")
    text_full, text_args_full, _, _ = compiled(st.max_new_groups, text_only=True)
    text_one, text_args_one, _, _ = compiled(1, text_only=True)
    *_, per_text_group = step_seconds(text_full, text_args_full, text_one, text_args_one, repeats)
    log.info("timing the stages of a group step and the weight-read floor ...")
    _, ids, pads, min_length, keys = args
    state = prefill_compiled(params, ids, pads)
    return bench_breakdown.breakdown(
        params, state, pads, min_length, keys, st=st, s_per_group=per_group, repeats=max(5 * repeats, 10),
        s_per_text_group=per_text_group,
    )  # fmt: skip


def main_json(**kwargs) -> str:
    return json.dumps(run_bench(**kwargs), indent=2)
