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
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref import generate, lm, sampling
from mimo_ref.checkpoint import resolve_dtype
from mimo_ref.config import SpecialTokens, lm_config_from_dict

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


def preset_config(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return lm_config_from_dict(PRESETS[name] | SPEECH_FIELDS, Path(f"<preset {name}>"))


def random_params(shapes: dict[str, tuple[int, ...]], seed: int, dtype) -> dict:
    """Random weights for a weight spec: N(0, 0.02) matrices, ones for norm weights, zeros for biases."""
    from mimo_ref.checkpoint import nest

    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            value = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * 0.02
        flat[name] = jnp.asarray(value, dtype)
        del value
    return nest(flat)


def synthetic_special(vocab_size: int) -> SpecialTokens:
    """Special ids at the top of the vocabulary, for random-weight runs without a tokenizer."""
    names = [f.name for f in dataclasses.fields(SpecialTokens)]
    return SpecialTokens(**{n: vocab_size - 1 - i for i, n in enumerate(names)})


def speech_prompt(cfg, special: SpecialTokens, groups: int, seed: int) -> np.ndarray:
    """A prompt of ``groups`` speech groups with random codes: ``[C+1, groups*G]``."""
    rng = np.random.default_rng(seed)
    g = cfg.group_size
    ids = np.empty((cfg.audio_channels + 1, groups * g), np.int64)
    ids[0] = special.empty
    for c, empty in enumerate(cfg.speech_empty_ids):
        ids[c + 1] = rng.integers(0, empty, size=groups * g)
    return ids


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
    dtype: str = "float32",
    repeats: int = 3,
    force_speech: bool = True,
    seed: int = 0,
) -> dict:
    """Benchmark generation on a checkpoint (``model``) or a preset shape with random weights. -> JSON-able dict."""
    jdtype = resolve_dtype(dtype)
    if (model is None) == (preset is None):
        raise ValueError("pass exactly one of a checkpoint (--model) or a preset with random weights (--preset)")
    if model is not None:
        params, cfg, special = lm.load_lm(model, dtype)
        source = str(model)
    else:
        cfg = preset_config(preset)
        params = random_params(lm.param_shapes(cfg), seed, jdtype)
        special = synthetic_special(cfg.vocab_size)
        source = f"preset {preset}, random weights"
    if force_speech:
        params = params | {"lm_head": {"weight": jnp.zeros_like(params["lm_head"]["weight"])}}
        special = dataclasses.replace(special, empty=0)
    prompts = [speech_prompt(cfg, special, prompt_groups, seed + b) for b in range(batch)]
    local_sampler = sampling.task_samplers("tts")[1]

    def compiled(groups: int):
        st, ids, pads, min_length, keys, _ = generate.prepare(
            cfg, special, prompts, max_new_groups=groups, min_new_groups=0, stop_tokens=(),
            text_sampler=sampling.GREEDY, speech_sampler=local_sampler, key=jax.random.key(seed),
            prompt_bucket=generate.PROMPT_BUCKET,
        )  # fmt: skip
        t0 = time.perf_counter()
        fn = generate.generate_jit.lower(params, ids, pads, min_length, keys, st=st).compile()
        args = (params, ids, pads, min_length, keys)
        return fn, args, time.perf_counter() - t0, st

    if new_groups < 2:
        raise ValueError("--new-groups must be >= 2 (the per-group time is a difference of two run lengths)")
    gen_full, args_full, compile_s, st = compiled(new_groups)
    gen_one, args_one, _, _ = compiled(1)
    t0 = time.perf_counter()
    prefill_compiled = generate.prefill_jit.lower(params, args_full[1], args_full[2], st=st).compile()
    prefill_compile_s = time.perf_counter() - t0

    prefill_s = timed(lambda: jax.block_until_ready(prefill_compiled(params, args_full[1], args_full[2])), repeats)
    new, n_new = jax.block_until_ready(gen_full(*args_full))
    generated = int(np.asarray(n_new).min())
    total_s = timed(lambda: jax.block_until_ready(gen_full(*args_full)), repeats)
    one_s = timed(lambda: jax.block_until_ready(gen_one(*args_one)), repeats)
    # steady state: what the extra groups cost beyond the 1-group run (same prefill, same compile-free path)
    per_group = (total_s - one_s) / max(generated - 1, 1)
    speech_groups = int(np.sum(np.asarray(new)[:, :generated, 0, 0] == special.empty))
    return {
        "source": source,
        "dtype": dtype,
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
        "s_per_group": round(per_group, 6),
        "groups_per_s": round(1.0 / per_group, 2) if per_group > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeats": repeats,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def main_json(**kwargs) -> str:
    return json.dumps(run_bench(**kwargs), indent=2)
