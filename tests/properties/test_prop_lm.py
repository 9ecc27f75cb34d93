"""Properties of the MiMo-Audio LM (``mimo_ref/lm.py``): shapes, input-embedding invariants, causality, KV cache,
float32 vs float64, jit vs eager.

Configs come from the fixed corner list ``LM_CORNERS`` (GQA 2:1, MQA with ``input_local_dim != local_dim`` and an
odd group size, the real 8-channel layout with a causal patch encoder) and shapes from small sets, so compiled
functions are reused; the shape property draws free configs because ``jax.eval_shape`` compiles nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from mimo_ref import lm, sampling
from mimo_ref.checkpoint import nest
from mimo_ref.testing import strategies as mst
from tests.properties import helpers

BATCH = 2
GROUPS = (3, 5)  # T of input_embeds cases
BACKBONE_T = 5  # T of the backbone cases (odd: one more position than a power of two)
SAMPLED = sampling.SamplerConfig(do_sample=True, temperature=0.9, top_k=5, top_p=0.95)


@st.composite
def lm_cases(draw, *, groups=GROUPS):
    """(cfg, special, input_ids [B, C+1, T*G], params seed) on a corner config."""
    cfg = draw(mst.lm_corner_configs())
    special = mst.special_tokens(cfg)
    t = draw(st.sampled_from(groups))
    ids = draw(mst.input_ids(cfg, special.empty, batch=BATCH, groups=t))
    return cfg, special, ids, draw(mst.seeds())


def group_columns(cfg, group: int) -> slice:
    return slice(group * cfg.group_size, (group + 1) * cfg.group_size)


# ---------------------------------------------------------------------------------------------------------------
# Shapes and dtypes
# ---------------------------------------------------------------------------------------------------------------


def param_structs(cfg, dtype) -> dict:
    """``jax.ShapeDtypeStruct`` params of ``param_shapes(cfg)`` (``lm_head`` tied as the loader does)."""
    params = nest({name: jax.ShapeDtypeStruct(shape, dtype) for name, shape in lm.param_shapes(cfg).items()})
    if cfg.tie_word_embeddings:
        params["lm_head"] = {"weight": params["model"]["embed_tokens"]["weight"]}
    return params


@given(
    cfg=mst.lm_configs(),
    b=st.sampled_from([1, 2]),
    t=st.sampled_from([1, 3]),
    dtype=st.sampled_from(["float32", "bfloat16", "float64"]),
)
def test_lm_shapes_and_dtypes_follow_the_docstrings(cfg, b, t, dtype):
    """For any valid config: ``forward`` maps ``[B, C+1, T*G]`` ids to embeds/hidden ``[B, T, D]``, logits
    ``[B, V]`` and the patch-decoder input ``[B, Dl]``, all in the params' dtype; ``patch_decoder`` gives int32
    tokens ``[B, G, C]``; ``init_cache`` gives per layer ``[B, S, K, H]``."""
    special = mst.special_tokens(cfg)
    with jax.enable_x64(dtype == "float64"):
        params = param_structs(cfg, jnp.dtype(dtype))
        ids = jax.ShapeDtypeStruct((b, cfg.audio_channels + 1, t * cfg.group_size), jnp.int32)
        embeds, hidden, logits, local = jax.eval_shape(
            functools.partial(lm.forward, cfg=cfg, empty_id=special.empty), params, ids
        )
        d = cfg.hidden_size
        assert (embeds.shape, hidden.shape, logits.shape, local.shape) == ((b, t, d), (b, t, d), (b, cfg.vocab_size),
                                                                           (b, cfg.local_dim))  # fmt: skip
        assert {embeds.dtype, hidden.dtype, logits.dtype, local.dtype} == {jnp.dtype(dtype)}
        choose = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
        keys = jax.random.split(jax.random.key(0), b)
        tokens = jax.eval_shape(functools.partial(lm.patch_decoder, choose=choose, cfg=cfg), params, local, keys=keys)
        assert tokens.shape == (b, cfg.group_size, cfg.audio_channels) and tokens.dtype == jnp.int32
        cache = lm.init_cache(cfg.backbone, b, 7, jnp.dtype(dtype))
        kv = (b, 7, cfg.backbone.num_kv_heads, cfg.backbone.head_dim)
        assert len(cache) == cfg.backbone.num_layers and all(c["k"].shape == c["v"].shape == kv for c in cache)


# ---------------------------------------------------------------------------------------------------------------
# Input embedding invariants
# ---------------------------------------------------------------------------------------------------------------


@given(case=lm_cases(), group=st.integers(0, 4), seed=mst.seeds())
def test_a_group_never_affects_another_groups_embedding(case, group, seed):
    """The patch encoder attends only inside each group: replacing every id of group j (text and speech) by a
    fresh speech group leaves the embeddings of all other groups bit-identical, and changes group j's."""
    cfg, special, ids, params_seed = case
    params = mst.lm_params(cfg, params_seed)
    t = ids.shape[-1] // cfg.group_size
    group %= t
    fresh = mst.make_input_ids(cfg, special.empty, [["speech"] * t] * BATCH, seed)
    changed = ids.copy()
    changed[:, :, group_columns(cfg, group)] = fresh[:, :, group_columns(cfg, group)]
    before = np.asarray(helpers.input_embeds(params, jnp.asarray(ids), cfg=cfg, empty_id=special.empty))
    after = np.asarray(helpers.input_embeds(params, jnp.asarray(changed), cfg=cfg, empty_id=special.empty))
    others = [g for g in range(t) if g != group]
    np.testing.assert_array_equal(before[:, others], after[:, others])
    assert not np.array_equal(before[:, group], after[:, group])


@given(case=lm_cases(), seed=mst.seeds())
def test_empty_speech_ids_never_affect_the_embedding(case, seed):
    """Speech ids equal to their channel's empty id contribute zero: rewriting the empty-id row of every speech
    embedding table changes no embedding."""
    cfg, special, ids, params_seed = case
    params = mst.lm_params(cfg, params_seed)
    text = ids[:, 0, :: cfg.group_size]  # [B, T]
    speech = ids[:, 1:].reshape(BATCH, cfg.audio_channels, -1, cfg.group_size)  # [B, C, T, G]
    empty_in_speech = (speech == np.asarray(cfg.speech_empty_ids)[None, :, None, None]) & (text == special.empty)[
        :, None, :, None
    ]
    helpers.event(f"empty ids in speech groups: {bool(empty_in_speech.any())}")
    rng = np.random.default_rng(seed)
    edited = dict(params)
    edited["speech_embeddings"] = [
        {"weight": table["weight"].at[empty].set(jnp.asarray(rng.standard_normal(table["weight"].shape[1]) * 10.0))}
        for table, empty in zip(params["speech_embeddings"], cfg.speech_empty_ids, strict=True)
    ]
    before = helpers.input_embeds(params, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
    after = helpers.input_embeds(edited, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


@given(case=lm_cases(), seed=mst.seeds())
def test_text_ids_after_a_groups_first_column_never_matter(case, seed):
    """Only column 0 of a group's text row is read: any ids (or -100) at columns 1..G-1 give the same embeds."""
    cfg, special, ids, params_seed = case
    params = mst.lm_params(cfg, params_seed)
    rng = np.random.default_rng(seed)
    changed = ids.copy()
    cols = np.arange(ids.shape[-1]) % cfg.group_size != 0
    changed[:, 0, cols] = rng.integers(-100, cfg.vocab_size, size=(BATCH, int(cols.sum())))
    before = helpers.input_embeds(params, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
    after = helpers.input_embeds(params, jnp.asarray(changed), cfg=cfg, empty_id=special.empty)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


@given(case=lm_cases(), seed=mst.seeds())
def test_non_speech_groups_ignore_their_speech_ids(case, seed):
    """A group whose text id is not ``<|empty|>`` is a text group: its speech ids never matter."""
    cfg, special, ids, params_seed = case
    params = mst.lm_params(cfg, params_seed)
    rng = np.random.default_rng(seed)
    changed = ids.copy()
    text_group = np.repeat(ids[:, 0, :: cfg.group_size] != special.empty, cfg.group_size, axis=1)  # [B, T*G]
    for ch, size in enumerate(cfg.speech_vocab_sizes):
        fresh = rng.integers(0, size, size=text_group.shape)
        changed[:, ch + 1] = np.where(text_group, fresh, ids[:, ch + 1])
    before = helpers.input_embeds(params, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
    after = helpers.input_embeds(params, jnp.asarray(changed), cfg=cfg, empty_id=special.empty)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


# ---------------------------------------------------------------------------------------------------------------
# Causality and the KV cache
# ---------------------------------------------------------------------------------------------------------------


def random_embeds(cfg, t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((BATCH, t, cfg.hidden_size)).astype(np.float32)


@given(cfg=mst.lm_corner_configs(), position=st.integers(1, BACKBONE_T - 1), seed=mst.seeds())
def test_backbone_is_causal(cfg, position, seed):
    """Changing the embeddings at positions >= j never changes the backbone's hidden states before j (they are
    bit-identical), and does change position j."""
    params = mst.lm_params(cfg, seed)
    embeds = random_embeds(cfg, BACKBONE_T, seed)
    changed = embeds.copy()
    changed[:, position:] = random_embeds(cfg, BACKBONE_T, seed + 1)[:, position:]
    before = np.asarray(helpers.backbone_full(params, jnp.asarray(embeds), cfg=cfg))
    after = np.asarray(helpers.backbone_full(params, jnp.asarray(changed), cfg=cfg))
    np.testing.assert_array_equal(before[:, :position], after[:, :position])
    assert not np.allclose(before[:, position], after[:, position])


@given(cfg=mst.lm_corner_configs(), prefill=st.sampled_from([1, 3]), seed=mst.seeds())
def test_backbone_kv_cache_equals_full_forward(cfg, prefill, seed):
    """A prefill of the first P positions into a preallocated cache, then one position per call, gives the hidden
    states of one full causal forward (float32 precision)."""
    params = mst.lm_params(cfg, seed)
    embeds = jnp.asarray(random_embeds(cfg, BACKBONE_T, seed))
    full = helpers.backbone_full(params, embeds, cfg=cfg)
    cache = lm.init_cache(cfg.backbone, BATCH, BACKBONE_T, jnp.float32)
    parts = []
    hidden, cache = helpers.backbone_chunk(params, embeds[:, :prefill], cache, jnp.int32(0), cfg=cfg)
    parts.append(hidden)
    for pos in range(prefill, BACKBONE_T):
        hidden, cache = helpers.backbone_chunk(params, embeds[:, pos : pos + 1], cache, jnp.int32(pos), cfg=cfg)
        parts.append(hidden)
    helpers.assert_close(jnp.concatenate(parts, axis=1), full, 1e-5, "cached vs full hidden states")


RECORDED_LOGITS: dict[tuple[int, int], np.ndarray] = {}  # (step, channel) -> [B, V_c]


def record_logits(step, channels, logits) -> None:
    for i, ch in enumerate(np.asarray(channels)):
        RECORDED_LOGITS[int(step), int(ch)] = np.asarray(logits)[:, i]


@functools.cache
def recording_sampler(cfg) -> lm.ChannelSampler:
    """``channel_sampler(SAMPLED)`` that also records, at each step, the logits ``[B, V_c]`` of every channel it is
    asked to sample (host callback)."""
    sample = lm.channel_sampler(SAMPLED, cfg=cfg)

    def choose(logits, channels, step, keys):
        jax.debug.callback(record_logits, step, np.asarray(channels), logits)
        return sample(logits, channels, step, keys)

    return choose


patch_decoder = jax.jit(lm.patch_decoder, static_argnames=("choose", "cfg"))


def patch_decoder_inputs(params, cfg, local_hidden: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The local stack's input at every step, rebuilt from the emitted tokens ``[B, G, C]`` (official
    ``local_forward``): step 0 is ``local_hidden``; step t + 1 is the sum, in channel order, of the speech embeddings
    (projected to the local width when ``input_local_dim != local_dim``) of the tokens the channels active at step t
    emitted. -> ``[B, S, Dl]``."""
    steps = cfg.local_steps
    x = np.zeros((local_hidden.shape[0], steps, cfg.local_dim), np.float32)
    x[:, 0] = local_hidden
    for step in range(steps - 1):
        for ch, delay in enumerate(cfg.delay_pattern):
            frame = step - delay
            if 0 <= frame < cfg.group_size:
                table = np.asarray(params["speech_embeddings"][ch]["weight"])  # [Vc, Di]
                emb = table[tokens[:, frame, ch]]  # [B, Di]
                if "speech_embeddings_to_local" in params:
                    emb = emb @ np.asarray(params["speech_embeddings_to_local"]["weight"]).T  # [B, Di] -> [B, Dl]
                x[:, step + 1] += emb
    return x


@given(cfg=mst.lm_corner_configs(), seed=mst.seeds(), key=st.integers(0, 2**16))
def test_patch_decoder_kv_cache_equals_full_forward(cfg, seed, key):
    """The patch decoder's per-step logits (one position per step, KV cache) equal the local heads applied to one
    full causal forward of the local stack over the same step inputs (float32 precision)."""
    params = mst.lm_params(cfg, seed)
    local_hidden = np.random.default_rng(seed).standard_normal((BATCH, cfg.local_dim)).astype(np.float32)
    keys = jax.random.split(jax.random.key(key), BATCH)
    RECORDED_LOGITS.clear()
    tokens = np.asarray(patch_decoder(params, jnp.asarray(local_hidden), choose=recording_sampler(cfg), keys=keys,
                                      cfg=cfg))  # fmt: skip
    jax.effects_barrier()  # every host callback has run
    emits = {(t, c) for c, d in enumerate(cfg.delay_pattern) for t in range(d, d + cfg.group_size)}
    sampled = {(t, c) for t in range(cfg.local_steps) for group, _ in lm.speech_vocab_groups(cfg) for c in group
               if any((t, other) in emits for other in group)}  # fmt: skip
    assert set(RECORDED_LOGITS) == sampled  # each vocabulary group is sampled at the steps one of its channels emits
    x = patch_decoder_inputs(params, cfg, local_hidden, tokens)
    full = np.asarray(helpers.local_stack_full(params, jnp.asarray(x), cfg=cfg), np.float64)  # [B, S, Dl]
    for ch, delay in enumerate(cfg.delay_pattern):
        head = np.asarray(params["local_transformer_lm_heads"][ch]["weight"], np.float64)  # [Vc, Dl]
        steps = range(delay, delay + cfg.group_size)
        expected = full[:, delay : delay + cfg.group_size] @ head.T  # [B, G, Vc] at the steps channel ch emits
        cached = np.stack([RECORDED_LOGITS[s, ch] for s in steps], axis=1)
        helpers.assert_close(cached, expected, 1e-5, f"channel {ch} logits, cached vs full")


@given(cfg=mst.lm_corner_configs(), seed=mst.seeds(), key=st.integers(0, 2**16))
def test_patch_decoder_emits_valid_non_empty_tokens(cfg, seed, key):
    """Every speech token the patch decoder emits lies in its channel's vocabulary and is never the channel's
    empty id (official: removed after logit processing)."""
    params = mst.lm_params(cfg, seed)
    local_hidden = np.random.default_rng(seed).standard_normal((BATCH, cfg.local_dim)).astype(np.float32)
    keys = jax.random.split(jax.random.key(key), BATCH)
    tokens = np.asarray(patch_decoder(params, jnp.asarray(local_hidden), choose=recording_sampler(cfg), keys=keys,
                                      cfg=cfg))  # fmt: skip
    for ch, (size, empty) in enumerate(zip(cfg.speech_vocab_sizes, cfg.speech_empty_ids, strict=True)):
        assert ((tokens[:, :, ch] >= 0) & (tokens[:, :, ch] < size)).all(), f"channel {ch} token outside 0..{size - 1}"
        assert (tokens[:, :, ch] != empty).all(), f"channel {ch} emitted its empty id {empty}"


@given(cfg=mst.lm_corner_configs(), position=st.integers(1, 10), seed=mst.seeds())
def test_patch_decoder_local_stack_is_causal(cfg, position, seed):
    """The local stack run over the S = G + max(delay) steps: changing the inputs of steps >= j never changes the
    outputs before j (bit-identical), and does change step j."""
    params = mst.lm_params(cfg, seed)
    steps = cfg.local_steps
    position = 1 + (position - 1) % (steps - 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, steps, cfg.local_dim)).astype(np.float32)
    changed = x.copy()
    changed[:, position:] = rng.standard_normal(changed[:, position:].shape)
    before = np.asarray(helpers.local_stack_full(params, jnp.asarray(x), cfg=cfg))
    after = np.asarray(helpers.local_stack_full(params, jnp.asarray(changed), cfg=cfg))
    np.testing.assert_array_equal(before[:, :position], after[:, :position])
    assert not np.allclose(before[:, position], after[:, position])


# ---------------------------------------------------------------------------------------------------------------
# Numerics: float32 vs float64, jit vs eager
# ---------------------------------------------------------------------------------------------------------------


speech_sum = jax.jit(lm.speech_embeddings_sum, static_argnames=("cfg",))


@given(case=lm_cases(groups=(BACKBONE_T,)))
def test_float32_and_float64_runs_agree(case):
    """The same params in float32 and in float64 give the same input embeddings and backbone hidden states to
    float32 precision (relative 1e-5 of each output's scale).

    Exception, by design (docs/quirks.md: the speech embeddings are summed in a bfloat16 buffer in every dtype): when
    the float32 sum ``buf + emb`` rounds onto a bfloat16 rounding boundary, the float32 run may round to the other
    bfloat16 neighbour than the float64 run (double rounding). Such examples are checked to differ by at most one
    bfloat16 ulp in the sum and are then skipped.
    """
    cfg, special, ids, seed = case
    params = mst.lm_params(cfg, seed)
    speech = lm.split_groups(jnp.asarray(ids), cfg=cfg)[1]
    sum32 = np.asarray(speech_sum(params, speech, cfg=cfg).astype(jnp.float32))
    embeds32 = helpers.input_embeds(params, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
    hidden32 = helpers.backbone_full(params, embeds32, cfg=cfg)
    with jax.enable_x64(True):
        params64 = mst.cast_params(params, jnp.float64)
        sum64 = np.asarray(speech_sum(params64, speech, cfg=cfg).astype(jnp.float32))
        embeds64 = helpers.input_embeds(params64, jnp.asarray(ids), cfg=cfg, empty_id=special.empty)
        hidden64 = helpers.backbone_full(params64, embeds64, cfg=cfg)
        assert embeds64.dtype == hidden64.dtype == jnp.float64
        embeds64, hidden64 = np.asarray(embeds64), np.asarray(hidden64)
    differ = sum32 != sum64
    if differ.any():
        ulp = np.abs(sum64[differ]) * 2.0**-7  # bfloat16 keeps 8 significant bits: one ulp is 2^-8 .. 2^-7 relative
        assert (np.abs(sum32[differ] - sum64[differ]) <= ulp).all(), "bf16 speech sums differ by more than one ulp"
    assume(not differ.any())
    assert embeds32.dtype == hidden32.dtype == jnp.float32
    helpers.assert_close(embeds32, embeds64, 1e-5, "input embeds float32 vs float64")
    helpers.assert_close(hidden32, hidden64, 1e-5, "hidden states float32 vs float64")


JIT_CFG = mst.LM_CORNERS["gqa"]


@given(kinds=mst.group_kinds(batch=BATCH, groups=3), seed=mst.seeds())
def test_jit_and_eager_input_embeds_agree(kinds, seed):
    """``jax.jit(input_embeds)`` and op-by-op ``input_embeds`` agree to float32 precision. The embedding path is
    where the bfloat16 rounding of the official code lives, which a compiler allowed excess precision could skip;
    fusion may still reorder float32 roundings, so not bitwise. One corner config bounds the eager compile cost."""
    special = mst.special_tokens(JIT_CFG)
    params = mst.lm_params(JIT_CFG, seed)
    ids = jnp.asarray(mst.make_input_ids(JIT_CFG, special.empty, kinds, seed))
    jitted = helpers.input_embeds(params, ids, cfg=JIT_CFG, empty_id=special.empty)
    eager = lm.input_embeds(params, ids, cfg=JIT_CFG, empty_id=special.empty)
    helpers.assert_close(jitted, eager, 1e-5, "input embeds jit vs eager")
