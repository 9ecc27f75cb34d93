"""Precision (mimo_ref/precision.py): weight storage apart from the compute dtype.

A weight held narrower than the compute dtype is upcast at use; upcasting is exact, so every result must equal
the run whose params were upcast at load: bit for bit under float64 compute, within float32 rounding for
bf16-held weights under float32 compute (XLA may fuse a conversion into its consumer; see ``BF16_HELD_ATOL``), with
identical generated ids. Checked on the LM (forward + generation) and the audio
tokenizer (codes + waveform), for bf16 storage under float32 compute and float32 storage under float64 compute.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mimo_ref import audio, generate, layers, lm, random_weights, sampling
from mimo_ref.config import QwenStackConfig
from mimo_ref.precision import PRESETS, Precision, param_bytes, resolve_precision, upcast

ROOT = Path(__file__).parents[1] / "weights"
TINY_LM = ROOT / "mimo_audio_tiny"
TINY_AUDIO = ROOT / "mimo_audio_tokenizer_tiny"


def bf16_copy(src: Path, dst: Path) -> Path:
    """The checkpoint ``src`` with every float tensor stored as bfloat16 (as the real LM checkpoint is)."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(
        {k: v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v for k, v in tensors.items()},
        str(dst / "model.safetensors"),
    )
    return dst


def test_storage_rule():
    bf16, f32, f64 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)
    assert PRESETS["float32"].storage_dtype(bf16) == bf16  # kept, upcast at use
    assert PRESETS["float32"].storage_dtype(f32) == f32
    assert PRESETS["float32"].storage_dtype(f64) == f32  # wider than the compute dtype: narrowed at load
    assert PRESETS["float64"].storage_dtype(f32) == f32
    assert PRESETS["bfloat16"].storage_dtype(f32) == bf16
    assert PRESETS["official"].storage_dtype(f32) == bf16  # the official wrapper's rounding
    assert PRESETS["official"].storage_dtype(np.dtype(np.int64)) == np.dtype(np.int64)
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        resolve_precision("float16")
    with pytest.raises(ValueError, match="unknown weight storage"):
        Precision("float32", weights="int8")


FORWARD = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))


def assert_same_forward(params, at_load, ids, cfg, special, dtype, *, atol: float = 0.0) -> None:
    """lm.forward on weights as stored and on weights upcast at load: every output in ``dtype``, equal within
    ``atol`` (0: bit-identical)."""
    stored = FORWARD(params, ids, cfg=cfg, empty_id=special.empty)
    loaded = FORWARD(at_load, ids, cfg=cfg, empty_id=special.empty)
    for a, b in zip(stored, loaded, strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


# bf16-held weights under float32 compute: the upcast is exact, but XLA may fuse a weight's conversion into the
# kernel that consumes it and sum in another order. Measured: bit-identical on a Xeon (AVX-512); on an AMD EPYC
# (AVX2) the patch encoder's outputs, hence the embeddings and everything after, differ by up to 6e-7 (values of
# order 1). Bound: a few float32 ulps of order-1 values, a thousand times below the golden tolerances.
BF16_HELD_ATOL = 4e-6


@pytest.fixture(scope="module")
def bf16_lm(tmp_path_factory):
    return bf16_copy(TINY_LM, tmp_path_factory.mktemp("lm") / "ckpt")


def test_bf16_checkpoint_stays_bf16_and_equals_upcast_at_load(bf16_lm):
    params, cfg, special = lm.load_lm(bf16_lm, "float32")
    assert params["model"]["layers"][0]["mlp"]["up_proj"]["weight"].dtype == jnp.bfloat16
    assert cfg.compute_dtype == "float32"
    at_load = upcast(params, jnp.float32)  # what loading used to do: every weight float32 in memory
    assert param_bytes(params) * 2 == param_bytes(at_load)

    rng = np.random.default_rng(0)
    g, c = cfg.group_size, cfg.audio_channels
    ids = np.empty((1, c + 1, 6 * g), np.int32)
    ids[0, 0] = rng.integers(0, 100, 6 * g)
    ids[0, 0, 3 * g :] = special.empty  # half text groups, half speech groups
    for ch, empty in enumerate(cfg.speech_empty_ids):
        ids[0, ch + 1] = rng.integers(0, empty + 1, 6 * g)
    assert_same_forward(params, at_load, ids, cfg, special, jnp.float32, atol=BF16_HELD_ATOL)
    # one group: the backbone and heads see a single row, as in a decode step
    assert_same_forward(params, at_load, ids[..., :g], cfg, special, jnp.float32, atol=BF16_HELD_ATOL)
    run = dict(max_new_groups=4, stop_tokens=())
    np.testing.assert_array_equal(
        generate.generate(params, cfg, special, ids[0], **run).ids,
        generate.generate(at_load, cfg, special, ids[0], **run).ids,
    )


@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_one_row_product_of_a_bf16_weight_equals_the_einsum_of_its_upcast(lead, bias):
    """``layers.linear``'s one-row form (one float32 row, bfloat16 weight, CPU) against the einsum of the weight
    upcast to float32: equal within the float32 rounding of a sum over I (both sum exact products of the same
    values, in different orders), same shape; several rows and float32 weights keep the einsum."""
    rng = np.random.default_rng(1)
    o, i = 37, 300
    w = jnp.asarray(rng.standard_normal((o, i)), jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((*lead, i)), jnp.float32)
    params = {"weight": w} | ({"bias": jnp.asarray(rng.standard_normal(o), jnp.float32)} if bias else {})
    assert layers.narrow_weight_row(x, w) == (jax.default_backend() == "cpu")
    assert not layers.narrow_weight_row(jnp.concatenate([x[None], x[None]]), w)  # two rows
    assert not layers.narrow_weight_row(x, w.astype(jnp.float32))  # weight as wide as x

    got = jax.jit(layers.linear)(params, x)
    w32 = np.asarray(w.astype(jnp.float32), np.float64)
    exact = np.einsum("...I,OI->...O", np.asarray(x, np.float64), w32) + (np.asarray(params["bias"]) if bias else 0)
    assert got.shape == (*lead, o) and got.dtype == jnp.float32
    # |float32 sum - exact| <= I * eps * sum_i |w_oi x_i| (+ the bias addition's rounding)
    bound = i * np.finfo(np.float32).eps * (np.abs(np.asarray(x, np.float64)) @ np.abs(w32).T + np.abs(exact))
    assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= bound)
    einsum = jnp.einsum("...I,OI->...O", x, w.astype(jnp.float32)) + (params["bias"] if bias else 0)
    assert np.all(np.abs(np.asarray(got - einsum, np.float64)) <= 2 * bound)


@pytest.mark.parametrize("lead", [(1,), (2,), (8,), (2, 4), (32,), (33,)])
@pytest.mark.parametrize("held", [jnp.float32, jnp.bfloat16])
def test_text_head_equals_the_exact_product_for_any_row_count(lead, held):
    """``layers.text_head`` (the rows-inner form for 2-32 float32 rows on CPU, ``linear`` otherwise) against the
    float64 product of the same values: within the float32 rounding of a sum over D, same shape and dtype."""
    rng = np.random.default_rng(3)
    v, d = 1000, 96
    w = jnp.asarray(rng.standard_normal((v, d)), held)
    x = jnp.asarray(rng.standard_normal((*lead, d)), jnp.float32)
    got = jax.jit(layers.text_head)({"weight": w}, x)
    assert got.shape == (*lead, v) and got.dtype == jnp.float32
    w64, x64 = np.asarray(w.astype(jnp.float32), np.float64), np.asarray(x, np.float64)
    exact = np.einsum("...I,OI->...O", x64, w64)
    bound = d * np.finfo(np.float32).eps * np.einsum("...I,OI->...O", np.abs(x64), np.abs(w64))
    assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= bound)


def test_one_row_through_a_large_bf16_layer_reads_it_in_place():
    """A transformer layer of bfloat16 weights of at least ``IN_PLACE_MIN_BYTES`` meeting one float32 row skips the
    per-layer upcast (``layers.reads_in_place``): its output equals the layer on weights upcast at load within
    float32 rounding. Several rows, or a smaller layer, are upcast first as before."""
    d, f, heads, kv = 512, 2816, 8, 2
    cfg = QwenStackConfig(
        hidden_size=d, num_layers=1, num_heads=heads, num_kv_heads=kv, head_dim=d // heads, intermediate_size=f,
        rope_theta=1e4, rms_norm_eps=1e-6,
    )  # fmt: skip
    rng = np.random.default_rng(2)

    def w(*shape, scale=0.05, offset=0.0):
        return jnp.asarray(offset + scale * rng.standard_normal(shape), jnp.bfloat16)

    hd = d // heads
    layer = {
        "input_layernorm": {"weight": w(d, offset=1.0)},
        "post_attention_layernorm": {"weight": w(d, offset=1.0)},
        "self_attn": {
            "q_proj": {"weight": w(heads * hd, d), "bias": w(heads * hd)},
            "k_proj": {"weight": w(kv * hd, d), "bias": w(kv * hd)},
            "v_proj": {"weight": w(kv * hd, d), "bias": w(kv * hd)},
            "o_proj": {"weight": w(d, heads * hd)},
        },
        "mlp": {"gate_proj": {"weight": w(f, d)}, "up_proj": {"weight": w(f, d)}, "down_proj": {"weight": w(d, f)}},
    }
    params = {"layers": [layer], "norm": {"weight": w(d, offset=1.0)}}
    x = jnp.asarray(rng.standard_normal((1, 1, d)), jnp.float32)
    on_cpu = jax.default_backend() == "cpu"
    assert param_bytes(layer) >= layers.IN_PLACE_MIN_BYTES
    assert layers.reads_in_place(layer, x) == on_cpu
    assert not layers.reads_in_place(layer, jnp.concatenate([x, x], axis=1))  # two rows: upcast first
    assert not layers.reads_in_place(upcast(layer, jnp.float32), x)  # nothing narrower to read
    small = jax.tree_util.tree_map(lambda a: a[..., :8] if a.ndim == 2 else a, layer)
    assert not layers.reads_in_place(small, x[..., :8])  # below IN_PLACE_MIN_BYTES: upcast first

    def run(p, x):
        return lm.qwen_stack(
            p, x, jnp.zeros((1, x.shape[1]), jnp.int32), jnp.ones((1, x.shape[1], x.shape[1]), bool), cfg=cfg
        )[0]

    stored = np.asarray(jax.jit(run)(params, x), np.float64)
    loaded = np.asarray(jax.jit(run)(upcast(params, jnp.float32), x), np.float64)
    assert stored.shape == (1, 1, d)
    # Same sums of exact products in another float32 order: relative error of order sqrt(F) * eps (5e-6 here),
    # far below bfloat16 rounding of any operand (4e-3), which a wrong form would show.
    assert np.linalg.norm(stored - loaded) <= 2e-5 * np.linalg.norm(loaded)


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 4)])
def test_input_major_products_equal_the_exact_products(lead):
    """``layers.input_major``: one Linear, or several of one input fused side by side, held ``[I, O]``; ``linear``
    on it equals the float64 product of the same values within the float32 rounding of a sum over I, outputs in
    the order given. Fusing Linears with and without a bias is refused."""
    rng = np.random.default_rng(5)
    i, outs = 16, (24, 8, 8)
    parts = [
        {"weight": jnp.asarray(rng.standard_normal((o, i)), jnp.float32),
         "bias": jnp.asarray(rng.standard_normal(o), jnp.float32)}
        for o in outs
    ]  # fmt: skip
    x = jnp.asarray(rng.standard_normal((*lead, i)), jnp.float32)
    x64 = np.asarray(x, np.float64)
    for linears in (parts[:1], parts):
        held = layers.input_major(*linears)
        assert held["weight_t"].shape == (i, sum(p["weight"].shape[0] for p in linears)) and "weight" not in held
        got = np.asarray(jax.jit(layers.linear)(held, x), np.float64)
        w64 = np.concatenate([np.asarray(p["weight"], np.float64) for p in linears])  # [sum O, I]
        exact = x64 @ w64.T + np.concatenate([np.asarray(p["bias"], np.float64) for p in linears])
        bound = i * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(w64).T + np.abs(exact))
        assert got.shape == (*lead, w64.shape[0]) and np.all(np.abs(got - exact) <= bound)
    assert layers.wide_output(*parts) and layers.wide_output(parts[0]) and not layers.wide_output(parts[1])
    with pytest.raises(ValueError, match="all have a bias or none"):
        layers.input_major(parts[0], {"weight": parts[1]["weight"]})


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_layout_computes_the_same_stack(rows):
    """``lm.decode_layout``: q/k/v fused and held input-major, then per product the rule (one row: input-major
    where the output is wider than the input; several rows: all). A one-position decode step through it (KV cache,
    two steps) equals the stack as stored within float32 rounding."""
    d, f, heads, kv, hd = 32, 96, 4, 2, 8
    cfg = QwenStackConfig(
        hidden_size=d, num_layers=2, num_heads=heads, num_kv_heads=kv, head_dim=hd, intermediate_size=f,
        rope_theta=1e4, rms_norm_eps=1e-6,
    )  # fmt: skip
    stack = random_weights.random_params(lm.qwen_stack_shapes("s", cfg, embed_vocab=None), 7, jnp.float32)["s"]
    rng = np.random.default_rng(8)
    stack = jax.tree_util.tree_map(lambda a: a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), stack)
    laid = lm.decode_layout(stack, rows=rows)
    for layer in laid["layers"]:
        attn, mlp = layer["self_attn"], layer["mlp"]
        assert set(attn) == {"qkv_proj", "o_proj"} and attn["qkv_proj"]["weight_t"].shape == (d, (heads + 2 * kv) * hd)
        assert set(mlp["gate_proj"]) == set(mlp["up_proj"]) == {"weight_t"}
        held_all = {"weight_t"} if rows > 1 else {"weight"}  # o_proj [D, N*H] and down_proj [D, F]: not wider
        assert set(attn["o_proj"]) == set(mlp["down_proj"]) == held_all

    def steps(p):
        cache = lm.init_cache(cfg, rows, 2, jnp.float32)
        outs = []
        for t in range(2):
            x = jnp.asarray(np.random.default_rng(9 + t).standard_normal((rows, 1, d)), jnp.float32)
            pos = jnp.full((rows, 1), t, jnp.int32)
            mask = jnp.broadcast_to(jnp.arange(2)[None, None, :] <= t, (rows, 1, 2))
            h, cache = lm.qwen_stack(p, x, pos, mask, cfg=cfg, cache=cache, write_pos=t)
            outs.append(h)
        return jnp.stack(outs)

    stored, got = (np.asarray(jax.jit(steps)(p), np.float64) for p in (stack, laid))
    assert got.shape == (2, rows, 1, d)
    assert np.linalg.norm(got - stored) <= 1e-5 * np.linalg.norm(stored)  # same sums, another float32 order


def test_patch_decoder_tables_hold_the_local_stack_in_decode_layout_only_when_it_is_held_in_the_compute_dtype():
    """On CPU the float32 tiny model's local stack is read in the decode layout and its heads input-major where
    they are wider than the local width (one row) or always (several rows); held in bfloat16 (upcast or read in
    place per step), the stack is used as stored. Greedy tokens of the patch decoder are the same either way (the
    golden cases check them against the official code)."""
    params, cfg = lm.load_lm(TINY_LM)[:2]
    tables = lm.patch_decoder_tables(params, cfg=cfg)
    on_cpu = jax.default_backend() == "cpu"
    assert ("qkv_proj" in tables.local["layers"][0]["self_attn"]) == on_cpu
    groups = lm.speech_vocab_groups(cfg)
    assert len(tables.group_heads) == len(groups)
    for (channels, vocab), heads in zip(groups, tables.group_heads, strict=True):
        rows = len(channels) * vocab  # the group's heads side by side
        assert ("weight_t" in heads) == (on_cpu and rows > cfg.local.hidden_size)
        stored_heads = heads["weight_t"].T if "weight_t" in heads else heads["weight"]
        np.testing.assert_array_equal(
            stored_heads, np.concatenate([params["local_transformer_lm_heads"][ch]["weight"] for ch in channels])
        )
    assert all("weight_t" in h for h in lm.patch_decoder_tables(params, cfg=cfg, rows=2).group_heads) == on_cpu
    as_bf16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    assert lm.patch_decoder_tables(as_bf16, cfg=cfg).local is as_bf16["local_transformer"]
    stored = tables._replace(
        local=params["local_transformer"],
        group_heads=tuple({"weight": h["weight_t"].T} if "weight_t" in h else h for h in tables.group_heads),
    )
    hidden = jnp.asarray(np.random.default_rng(4).standard_normal((2, cfg.local.hidden_size)), jnp.float32)
    choose = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
    keys = jax.random.split(jax.random.key(0), 2)
    run = jax.jit(lambda t: lm.patch_decoder(params, hidden, choose, keys, cfg=cfg, tables=t))
    np.testing.assert_array_equal(run(lm.patch_decoder_tables(params, cfg=cfg, rows=2)), run(stored))


def test_text_head_decode_layout_is_made_once_per_head_for_one_row_and_gives_the_same_greedy_groups():
    """``lm.text_head_decode_layout``: on CPU, for one row, the float32-held ``lm_head`` becomes ``{"weight_t"}`` (the
    same matrix transposed), made once per weight array and dropped with it; for several rows, or held in bfloat16,
    the params are returned as they are. ``generate`` through it gives the greedy groups of the stored head."""
    import gc

    params, cfg, special = lm.load_lm(TINY_LM)
    laid = lm.text_head_decode_layout(params, cfg=cfg, rows=1)
    if jax.default_backend() != "cpu":
        assert laid is params
        return
    np.testing.assert_array_equal(np.asarray(laid["lm_head"]["weight_t"]), np.asarray(params["lm_head"]["weight"]).T)
    assert set(laid["lm_head"]) == {"weight_t"} and laid["model"] is params["model"]
    assert lm.text_head_decode_layout(params, cfg=cfg, rows=1)["lm_head"] is laid["lm_head"]  # made once
    assert lm.text_head_decode_layout(params, cfg=cfg, rows=2) is params
    as_bf16 = params | {"lm_head": {"weight": params["lm_head"]["weight"].astype(jnp.bfloat16)}}
    assert lm.text_head_decode_layout(as_bf16, cfg=cfg, rows=1) is as_bf16

    prompt = np.asarray(random_weights.speech_prompt(cfg, special, 3, 0))
    options = dict(max_new_groups=4, min_new_groups=4)
    got = generate.generate(params, cfg, special, prompt, **options).ids  # through the layout (one row, CPU)
    st, ids, pads, min_length, keys, prompts = generate.prepare(cfg, special, prompt, **options)
    groups, n = generate.generate_jit(params, ids, pads, min_length, keys, st=st)  # the head as stored
    np.testing.assert_array_equal(got, generate.assemble(prompts, np.asarray(groups), np.asarray(n), st).ids)

    head = {"weight": jnp.asarray(params["lm_head"]["weight"]) + 0}  # a new array: its own entry
    lm.text_head_decode_layout(params | {"lm_head": head}, cfg=cfg, rows=1)
    entries = len(lm._TEXT_HEAD_LAYOUTS)
    del head
    gc.collect()
    assert len(lm._TEXT_HEAD_LAYOUTS) == entries - 1  # the layout does not outlive its weight


def test_float64_compute_keeps_float32_weights_and_equals_upcast_at_load():
    with jax.enable_x64(True):
        params, cfg, special = lm.load_lm(TINY_LM, "float64")
        assert params["lm_head"]["weight"].dtype == jnp.float32
        at_load = upcast(params, jnp.float64)
        g, c = cfg.group_size, cfg.audio_channels
        ids = np.zeros((1, c + 1, 2 * g), np.int64)
        ids[0, 0] = special.empty
        assert_same_forward(params, at_load, ids, cfg, special, jnp.float64)


def test_audio_tokenizer_bf16_storage_equals_rounded_upcast_at_load():
    """The official preset (bf16-rounded weights and RoPE buffers, float32 math) vs the same values held in
    float32: identical codes, waveform within float32 rounding."""
    params, cfg = audio.load_audio_tokenizer(TINY_AUDIO, "official")
    assert params["decoder"]["layer_norm"]["weight"].dtype == jnp.bfloat16
    assert cfg.compute_dtype == "float32" and cfg.bf16_buffers
    at_load = upcast(params, jnp.float32)
    wave = np.sin(np.arange(24000 // 2) * 0.05).astype(np.float32) * 0.3
    codes_stored = audio.wav_to_codes(params, cfg, wave, 8)
    codes_loaded = audio.wav_to_codes(at_load, cfg, wave, 8)
    np.testing.assert_array_equal(codes_stored, codes_loaded)
    wav_stored = audio.codes_to_wav(params, cfg, codes_stored)
    wav_loaded = audio.codes_to_wav(at_load, cfg, codes_loaded)
    # XLA may fuse a weight's conversion into the norm that consumes it and round differently (precision.at_use)
    np.testing.assert_allclose(wav_stored, wav_loaded, rtol=0, atol=1e-6)
    # the buffers' rounding is real: without it the waveform differs
    plain = dataclasses.replace(cfg, bf16_buffers=False)
    assert not np.array_equal(
        audio.codes_to_wav(params, plain, codes_stored), audio.codes_to_wav(params, cfg, codes_stored)
    )


# ---------------------------------------------------------------------------------------------------------------
# Every precision end to end from the command line. float64 switches JAX's x64 mode on for the whole process, so
# those runs go in a subprocess (the rest of the suite keeps float32 defaults).

GOLDEN_WAV16 = Path(__file__).parent / "fixtures" / "golden" / "pipeline" / "speech_16k.wav"


def run_cli_subprocess(tmp_path: Path, *commands: list[str]) -> None:
    import subprocess
    import sys

    script = "import sys\nfrom mimo_ref import cli\n" + "".join(
        f"code = cli.main({cmd!r})\nif code: sys.exit(code)\n" for cmd in commands
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_float64_tts_asr_and_bench_end_to_end(tmp_path):
    fast = ["--max-new-groups", "4", "--no-progress", "--precision", "float64"]
    proc = run_cli_subprocess(
        tmp_path,
        ["tts", "Hello world", "-o", str(tmp_path / "f64.wav"), *fast],
        ["asr", str(GOLDEN_WAV16), *fast],
        ["bench", "--prompt-groups", "2", "--new-groups", "2", "--repeats", "1", "--precision", "float64"],
    )
    import soundfile as sf

    info = sf.info(tmp_path / "f64.wav")
    assert info.samplerate == 24000 and info.frames > 0
    assert '"compute_dtype": "float64"' in proc.stdout  # bench ran in float64


@pytest.mark.parametrize("precision", ["official", "bfloat16"])
def test_other_precisions_end_to_end(precision, tmp_path, capsys):
    from mimo_ref import cli

    out = tmp_path / f"{precision}.wav"
    assert (
        cli.main(["tts", "Hello", "-o", str(out), "--max-new-groups", "4", "--no-progress", "--precision", precision])
        == 0
    )
    assert out.is_file()
