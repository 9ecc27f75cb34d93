"""Where a decode step's time goes: the stages of a group step timed one by one, and the memory floor.

``mimo-ref bench --breakdown`` adds these keys to the benchmark (:data:`JSON_KEYS`; docs/performance.md). Each
stage of :func:`mimo_ref.generate.group_step` is jitted alone, on the shapes and params of the same run (the state
after the benchmark's own prefill), inside a ``fori_loop`` as the decode loop runs it, and timed per iteration
(:func:`timed_stage`: calls of ``1 + LOOP_ITERS`` and of 1 iterations, medians of ``repeats`` after a warm-up):

- ``embed``: :func:`mimo_ref.lm.input_embeds` of one speech group (speech embeddings, patch encoder, downcast);
- ``backbone``: :func:`mimo_ref.lm.backbone` on that one position with the run's KV cache (written at the next slot);
- ``heads_text``: :func:`mimo_ref.lm.heads` (lm_head and the patch-decoder input) + the text token
  (:func:`mimo_ref.generate.text_token` with the run's text sampler);
- ``patch_decoder``: :func:`mimo_ref.lm.patch_decoder`, all its steps, with the run's speech sampler;
- ``loop_overhead``: the benchmark's ``s_per_group`` (a step inside the jitted while_loop) minus the four stages.
  Negative when XLA overlaps or fuses stages inside the loop better than they run alone.

A stage alone can run faster than inside the step, where the others have evicted its weights from the caches. So
the patch decoder is also measured in place: ``s_per_text_group`` is the benchmark's own loop (same prompts, same
compiled program but for the <|empty|> id) with every group a text group, which skips the patch decoder, and
``patch_decoder_in_loop_s`` the difference to ``s_per_group``.

The floor is what no implementation on this machine can beat: reading the weights a group step needs, once.
``floor_lm_head_s`` times a jitted read of ``lm_head`` (the single largest read); ``floor_weights_s`` a jitted
product of a ``[1, k]`` vector with every per-group weight matrix viewed as rows of ``k`` values (:func:`read_view`,
up to 8192: the fastest form measured), and a sum of every vector weight. Weights held narrower than float32
(bfloat16) are read by a fused sum instead (:func:`read_once`).
Per-group weights are all LM weights except the two tables only gathered by id (``model.embed_tokens``, the
``speech_embeddings``); the patch decoder's weights are counted once although its 11 sequential steps each read
them. ``floor_step_reads_s`` counts them as the computation must read them: the other weights once, then the
local stack and the speech heads once per patch-decoder step, in a jitted loop whose reads depend on the previous
step (so XLA cannot hoist them): the floor of this computation, as opposed to ``floor_weights_s``, the floor of
reading the model once. This module is a tool: it reads the model, the model never imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from mimo_ref import generate, lm

JSON_KEYS = {
    "stage_embed_s": "breakdown (--breakdown): input embedding of one speech group, in its own loop, per iteration",
    "stage_backbone_s": "breakdown: the backbone on one group with the run's KV cache, in its own loop, per iteration",
    "stage_heads_text_s": "breakdown: lm_head, the patch-decoder input and the text token, in its own loop, per "
    "iteration",
    "stage_patch_decoder_s": "breakdown: the patch decoder, all its steps, in its own loop, per iteration",
    "stage_loop_overhead_s": "breakdown: s_per_group minus the four stages (sampling keys, the group write, the stop "
    "rule, the conds, copies); negative when the loop overlaps stages better than they run alone",
    "s_per_text_group": "breakdown: s_per_group of the same decode loop when every group is a text group (the "
    "run's <|empty|> id moved out of the vocabulary, so the patch decoder's lax.cond skips it)",
    "patch_decoder_in_loop_s": "breakdown: s_per_group - s_per_text_group: what the patch decoder adds to a step "
    "inside the decode loop, caches shared with the other stages (with --natural, s_per_group mixes text groups)",
    "per_group_weight_bytes": "breakdown: bytes of the weights one decode step reads (all but the gathered tables)",
    "floor_lm_head_s": "breakdown: measured floor of the text head: lm_head read once by a jitted matrix-vector "
    "product, the matrix viewed as rows of up to 8192 values (median)",
    "floor_weights_s": "breakdown: measured floor of a step: every per-group weight read once by a jitted "
    "matrix-vector product, each matrix viewed as rows of up to 8192 values (median)",
    "floor_bandwidth_gb_s": "breakdown: per_group_weight_bytes / floor_weights_s, GB/s",
    "s_per_group_over_floor": "breakdown: s_per_group / floor_weights_s (1.0 is the memory floor)",
    "step_read_bytes": "breakdown: bytes a decode step must read: per_group_weight_bytes plus the patch decoder's "
    "local stack and speech heads once more for each of its further sequential steps",
    "floor_step_reads_s": "breakdown: measured floor of those reads: the other weights once, then the local stack "
    "and heads once per patch-decoder step in a jitted loop (median)",
    "s_per_group_over_step_reads": "breakdown: s_per_group / floor_step_reads_s (1.0: a step that only reads what "
    "it must)",
}

GATHERED = ("model.embed_tokens.", "speech_embeddings.")  # tables a step reads a few rows of, not whole
PER_LOCAL_STEP = ("local_transformer.", "local_transformer_lm_heads.")  # read by every patch-decoder step


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (blocking on its result) after one warm-up call (which also compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_group_weights(params, *, skip: tuple[str, ...] = ()) -> list[jax.Array]:
    """The weights one decode step reads whole: every leaf except the gathered tables (shared leaves once) and
    those whose checkpoint name starts with one of ``skip``."""
    seen, out = set(), []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) + "."
        if name.startswith(GATHERED + skip) or id(leaf) in seen:
            continue
        seen.add(id(leaf))
        out.append(leaf)
    return out


def per_local_step_weights(params) -> list[jax.Array]:
    """The patch decoder's local stack and speech heads: what each of its sequential steps reads whole."""
    return [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if (".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) + ".").startswith(PER_LOCAL_STEP)
    ]


READ_ROW_WIDTHS = (8192, 4096, 2048, 1024)  # row lengths a matrix is viewed as for its floor read (measured)


def read_view(w: jax.Array) -> jax.Array:
    """``w`` (a matrix) viewed as long rows, ``[size / k, k]`` with the first ``k`` of :data:`READ_ROW_WIDTHS` that
    divides its size (``w`` itself if none does): the same bytes in the same order, a free reshape.

    Why: XLA's CPU product of one row with a matrix reads it faster when its rows are long (measured on a 2-core AMD
    EPYC VM: the small preset's 385.7 MB of per-group weights read by products in their own ``[O, I]`` shapes in
    13.5 ms (median 15.6) against 11.8-12.4 ms (12.8-13.5) viewed as rows of 1024-8192; a ``[1024, 256]`` matrix at
    13.4 GB/s against 21.5 for ``[256, 1024]``: docs/performance.md, "Weights held input-major"). A floor read in
    the weights' own shapes would be slower than the step once the step holds some weights input-major.
    """
    width = next((k for k in READ_ROW_WIDTHS if w.size % k == 0), None)
    return w if width is None else w.reshape(-1, width)  # [O, I] -> [O * I / k, k]


def read_once(w: jax.Array, start: jax.Array) -> jax.Array:
    """Read one weight once, as fast as this machine reads it. -> ``[]`` (float32).

    A float32 (or wider) matrix: a ``[1, k] @ V.T`` product with ``V`` its long-row view ``[R, k]``
    (:func:`read_view`; XLA's CPU matrix-vector product streams the matrix at memory speed). A narrower one
    (bfloat16): a sum of its values upcast to float32, which XLA fuses into one pass over the stored bytes; a
    bfloat16 product on XLA's CPU is not memory-bound (measured: 160-190 ms for the 151680 x 512 ``lm_head`` against
    14 ms for the sum), so it would not be a floor. Vectors: a sum. ``start`` ``[]`` enters every read, so inside a
    loop the reads depend on the carry and stay in the loop.
    """
    if w.ndim == 2 and jnp.dtype(w.dtype).itemsize >= 4:
        v = read_view(w)  # [R, k]
        x = jnp.full((1, v.shape[1]), 1.0, w.dtype) + start.astype(w.dtype)  # [1, k]
        return jnp.sum(jnp.einsum("BI,OI->BO", x, v).astype(jnp.float32))  # [1, k] -> [1, R] -> []
    return jnp.sum(w.astype(jnp.float32) * (1.0 + start))  # [...] -> []


@jax.jit
def read_lm_head(w: jax.Array) -> jax.Array:
    """The text head ``[V, D]`` read once (:func:`read_once`). -> ``[]``."""
    return read_once(w, jnp.zeros((), jnp.float32))


def read_all(weights: list[jax.Array], start: jax.Array) -> jax.Array:
    """Read every weight once (:func:`read_once`). ``start`` ``[]`` seeds the reads. -> ``[]``."""
    total = start
    for w in weights:
        total = total + read_once(w, start)
    return total


@jax.jit
def read_weights(weights: list[jax.Array]) -> jax.Array:
    """Every weight read once. -> ``[]``."""
    return read_all(weights, jnp.zeros((), jnp.float32))


@functools.partial(jax.jit, static_argnames=("steps",))
def read_step_weights(once: list[jax.Array], per_step: list[jax.Array], *, steps: int) -> jax.Array:
    """``once`` read once, then ``per_step`` read ``steps`` times in a loop (as the patch decoder does). -> ``[]``."""
    total = read_all(once, jnp.zeros((), jnp.float32))
    return jax.lax.fori_loop(0, steps, lambda _, acc: read_all(per_step, acc * 1e-30), total)


def speech_group(state: generate.DecodeState, st: generate.StepStatic) -> jax.Array:
    """A speech group of every row, as the loop feeds back: ``[B, C+1, G]`` (text <|empty|>, speech ids 0)."""
    b, g, c = state.logits.shape[0], st.cfg.group_size, st.cfg.audio_channels
    group = jnp.zeros((b, c + 1, g), jnp.int32)
    return group.at[:, 0].set(st.special.empty)


LOOP_ITERS = 8  # a stage is timed as (a call of 1 + LOOP_ITERS iterations - a call of 1) / LOOP_ITERS


def text_groups_only(st: generate.StepStatic) -> generate.StepStatic:
    """``st`` with the <|empty|> id moved to the vocabulary size, an id no text head returns: every generated group
    is then a text group (the patch decoder's ``lax.cond`` skips it, the speech ids are the channels' empty ids),
    the rest of the compiled step unchanged. Prompts keep the ids they were padded with."""
    return dataclasses.replace(st, special=dataclasses.replace(st.special, empty=st.cfg.vocab_size))


def nan_flag(tree) -> jax.Array:
    """``[]`` float32: 1.0 if any value of ``tree`` is NaN, else 0.0. Added to a stage's next input so that each
    iteration depends on the last (XLA may not hoist a stage out of its timing loop) without changing values."""
    total = sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree_util.tree_leaves(tree))
    return jnp.isnan(total).astype(jnp.float32)


def stage_loop(body, carry, iters: jax.Array):
    """``body`` run ``iters`` times in a ``fori_loop``, as the decode loop runs a stage: inside a ``lax.cond`` (the
    decode loop's step is one), so XLA hoists nothing of it out of the loop (outside a conditional it would hoist
    the float32 copy of a bfloat16 weight, which the decode loop makes at every step), and with a carried KV cache
    updated in place. The carry's first leaf is the stage's activation input; ``iters`` ``[]`` int32 is traced (one
    compilation for every count). -> the last carry."""
    go = lambda c: nan_flag(jax.tree_util.tree_leaves(c)[0]) == 0  # noqa: E731  true (the activation is finite)
    return jax.lax.fori_loop(0, iters, lambda _, c: jax.lax.cond(go(c), body, lambda c: c, c), carry)


def timed_stage(stage, repeats: int) -> float:
    """Seconds of one iteration of ``stage(iters=...)`` inside its loop: the difference of the median calls of
    ``1 + LOOP_ITERS`` and of 1 iterations, over ``LOOP_ITERS``, so what a call costs once (dispatch, and
    allocating its outputs and temporaries afresh) cancels, as it does in the benchmark's ``s_per_group``. On a CPU
    that allocation costs a page fault per 4 KB touched (measured: 44k faults, 84-101 ms, for one 180 MB float32
    output); a stage with a large temporary (a bfloat16 weight's float32 copy, a KV cache) timed call by call would
    count it at every call, the decode loop once. A stage cheaper than the timing noise can come out slightly
    negative."""
    many = timed(lambda: stage(iters=jnp.int32(1 + LOOP_ITERS)), repeats)
    return (many - timed(lambda: stage(iters=jnp.int32(1)), repeats)) / LOOP_ITERS


def embed(params, group, st: generate.StepStatic) -> jax.Array:
    return lm.input_embeds(params, group, cfg=st.cfg, empty_id=st.special.empty)  # [B, C+1, G] -> [B, 1, D]


def backbone(params, embeds, positions, cache, key_valid, st: generate.StepStatic):
    return lm.backbone(
        params, embeds, positions, cfg=st.cfg, cache=cache, write_pos=st.prompt_slots, key_valid=key_valid
    )  # [B, 1, D] -> [B, 1, D], the cache written at the next slot


def heads_text(params, hidden, cur_len, min_length, keys, st: generate.StepStatic):
    logits, local_hidden = lm.heads(params, hidden[:, -1])  # [B, D] -> [B, V], [B, Dl]
    return generate.text_token(logits, cur_len, min_length, keys, st=st), local_hidden  # -> [B], [B, Dl]


@functools.partial(jax.jit, static_argnames=("st",))
def stage_inputs(params, group, positions, cache, key_valid, *, st: generate.StepStatic):
    """The embedded group and the backbone's output on it: the inputs of the later stages. -> [B, 1, D] x 2."""
    embeds = embed(params, group, st)
    return embeds, backbone(params, embeds, positions, cache, key_valid, st)[0]


@functools.partial(jax.jit, static_argnames=("st",))
def embed_stage(params, group, *, iters: jax.Array, st: generate.StepStatic):
    return stage_loop(lambda group: group + nan_flag(embed(params, group, st)).astype(group.dtype), group, iters)


@functools.partial(jax.jit, static_argnames=("st",))
def backbone_stage(params, embeds, positions, cache, key_valid, *, iters: jax.Array, st: generate.StepStatic):
    def body(carry):
        embeds, cache = carry
        hidden, cache = backbone(params, embeds, positions, cache, key_valid, st)
        return embeds + nan_flag(hidden).astype(embeds.dtype), cache

    return stage_loop(body, (embeds, cache), iters)


@functools.partial(jax.jit, static_argnames=("st",))
def heads_text_stage(params, hidden, cur_len, min_length, keys, *, iters: jax.Array, st: generate.StepStatic):
    def body(hidden):
        out = heads_text(params, hidden, cur_len, min_length, keys, st)
        return hidden + nan_flag(out).astype(hidden.dtype)

    return stage_loop(body, hidden, iters)


@functools.partial(jax.jit, static_argnames=("st",))
def patch_decoder_stage(params, tables, local_hidden, keys, *, iters: jax.Array, st: generate.StepStatic):
    choose = lm.channel_sampler(st.speech_sampler, cfg=st.cfg)

    def body(local_hidden):
        tokens = lm.patch_decoder(params, local_hidden, choose, keys, cfg=st.cfg, tables=tables)  # -> [B, G, C]
        return local_hidden + nan_flag(tokens).astype(local_hidden.dtype)

    return stage_loop(body, local_hidden, iters)


def breakdown(
    params,
    state,
    pads,
    min_length,
    keys,
    *,
    st: generate.StepStatic,
    s_per_group: float,
    s_per_text_group: float,
    repeats: int,
):
    """The stage times and the floor for one benchmark run. ``state``: the :class:`~mimo_ref.generate.DecodeState`
    after the run's prefill; ``s_per_group``: the run's steady-state step time; ``s_per_text_group``: the same loop's
    when every group is a text group. -> the :data:`JSON_KEYS` dict."""
    tables = generate.tables_jit(params, cfg=st.cfg, rows=state.local_hidden.shape[0])
    group = speech_group(state, st)
    cur_len = (st.prompt_slots - pads).astype(jnp.int32)  # [B] groups before the first new one
    positions = cur_len[:, None]  # [B, 1]
    text_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)  # [B]
    embeds, hidden = stage_inputs(params, group, positions, state.cache, state.key_valid, st=st)
    stages = {
        "embed": timed_stage(functools.partial(embed_stage, params, group, st=st), repeats),
        "backbone": timed_stage(
            functools.partial(backbone_stage, params, embeds, positions, state.cache, state.key_valid, st=st), repeats
        ),
        "heads_text": timed_stage(
            functools.partial(heads_text_stage, params, hidden, cur_len, min_length, text_keys, st=st), repeats
        ),
        "patch_decoder": timed_stage(
            functools.partial(patch_decoder_stage, params, tables, state.local_hidden, text_keys, st=st), repeats
        ),
    }
    weights = per_group_weights(params)
    weight_bytes = sum(int(w.nbytes) for w in weights)
    head = params["lm_head"]  # as stored, or input-major (mimo_ref/lm.py::text_head_decode_layout): the same bytes
    floor_head = timed(lambda: read_lm_head(head["weight"] if "weight" in head else head["weight_t"]), repeats)
    floor = timed(lambda: read_weights(weights), repeats)
    once, per_step = per_group_weights(params, skip=PER_LOCAL_STEP), per_local_step_weights(params)
    step_bytes = sum(int(w.nbytes) for w in once) + st.cfg.local_steps * sum(int(w.nbytes) for w in per_step)
    floor_steps = timed(lambda: read_step_weights(once, per_step, steps=st.cfg.local_steps), repeats)
    out = {f"stage_{name}_s": round(seconds, 7) for name, seconds in stages.items()}
    return out | {
        "stage_loop_overhead_s": round(s_per_group - sum(stages.values()), 7),
        "s_per_text_group": round(s_per_text_group, 7),
        "patch_decoder_in_loop_s": round(s_per_group - s_per_text_group, 7),
        "per_group_weight_bytes": weight_bytes,
        "floor_lm_head_s": round(floor_head, 7),
        "floor_weights_s": round(floor, 7),
        "floor_bandwidth_gb_s": round(weight_bytes / floor / 1e9, 2),
        "s_per_group_over_floor": round(s_per_group / floor, 3),
        "step_read_bytes": step_bytes,
        "floor_step_reads_s": round(floor_steps, 7),
        "s_per_group_over_step_reads": round(s_per_group / floor_steps, 3),
    }
