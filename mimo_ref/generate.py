"""Generation: one ``jax.jit`` call of ``lax.while_loop`` over groups, the patch decoder inside the loop.

Official: ``MiMoAudioForCausalLM.generate`` / ``slm_sample`` / ``MiMoStopper`` (batch 1 only there; batches here).

One loop iteration ("group step") for every sequence b of the batch:

1. sample the text token from the last position's logits; while the sequence's length in groups (prompt
   included, before this group) is ``< min_length`` the stop tokens are set to -inf after logit processing;
2. if the text token is ``<|empty|>`` the group's speech comes from the patch decoder, else every frame holds the
   channels' empty ids;
3. the group (text id repeated G times + ``[C, G]`` speech) is written to the output buffer;
4. the sequence stops when the new length reaches ``max_length`` or (the text token is a stop token and the new
   length is ``>= min_length``); stopped sequences keep running in the batch but their output is frozen;
5. unless every sequence has stopped, the backbone runs on the new group, writing its K/V at the next cache slot.

Batches. Prompts of different lengths are left-padded to a common bucket of P slots; padded slots are masked
out as keys, and positions are ``cumsum(mask) - 1`` (padding at position 1), as transformers'
``prepare_inputs_for_generation`` computes them. Every row then writes its next group at the same cache slot.

Cache layout: per backbone layer ``k``/``v`` of ``[B, P + max_new_groups, K, H]``; slot i of row b holds the
group at position ``i - pad_b``. The patch decoder has its own ``[B, G + max(delay), K, H]`` cache per group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref import lm, sampling
from mimo_ref.bucketing import PROMPT_BUCKET, bucket_length
from mimo_ref.config import LMConfig, SpecialTokens
from mimo_ref.sampling import SamplerConfig
from mimo_ref.tap import tap


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """Output of :func:`generate`.

    ids ``[B, C+1, T_total*G]``: each row's prompt exactly as given (official prompts hold -100 at text columns
    1..G-1) followed by its generated groups; columns past a row's length hold the text pad id
    (``<|endoftext|>``) and the channels' empty ids.
    lengths / prompt_lengths ``[B]``: groups per row (prompt + generated) / prompt groups.
    """

    ids: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    group_size: int

    def sequence(self, b: int) -> np.ndarray:
        """Row b without padding: ``[C+1, lengths[b]*G]``."""
        return self.ids[b, :, : int(self.lengths[b]) * self.group_size]

    def generated(self, b: int) -> np.ndarray:
        """Only the generated groups of row b: ``[C+1, (lengths[b] - prompt_lengths[b])*G]``."""
        return self.sequence(b)[:, int(self.prompt_lengths[b]) * self.group_size :]


@dataclasses.dataclass(frozen=True)
class StepStatic:
    """Everything a group step needs that shapes the compiled program (hashable, a static jit argument)."""

    cfg: LMConfig
    special: SpecialTokens
    text_sampler: SamplerConfig
    speech_sampler: SamplerConfig
    stop_tokens: tuple[int, ...]
    prompt_slots: int  # P: padded prompt length in groups
    max_new_groups: int


# ---------------------------------------------------------------------------------------------------------------
# Progress: every group step reports to the host, in the jitted loop and in its streaming twin alike, so a run
# shown on a terminal is the same compiled program as one that is not (only the listener differs).

_PROGRESS_LISTENERS: list[Callable[[int], None]] = []


def report_progress(groups) -> None:
    """Called from the traced group step (``jax.debug.callback``) with the number of groups generated so far."""
    for listener in _PROGRESS_LISTENERS:
        listener(int(groups))


@contextlib.contextmanager
def progress_listener(listener: Callable[[int], None]) -> Iterator[None]:
    """Within the block, ``listener(groups_done)`` is called after every group step of any generation."""
    _PROGRESS_LISTENERS.append(listener)
    try:
        yield
    finally:
        _PROGRESS_LISTENERS.remove(listener)


# ---------------------------------------------------------------------------------------------------------------
# Input checks (before tracing, in the user's terms)
# ---------------------------------------------------------------------------------------------------------------


def as_prompt_list(prompt_ids, cfg: LMConfig) -> list[np.ndarray]:
    """Accept ``[C+1, L]``, ``[B, C+1, L]`` or a list of ``[C+1, L_b]`` arrays; check ranks, rows and lengths."""
    if isinstance(prompt_ids, (list, tuple)):
        prompts = [np.asarray(p) for p in prompt_ids]
    else:
        arr = np.asarray(prompt_ids)
        if arr.ndim == 2:
            prompts = [arr]
        elif arr.ndim == 3:
            prompts = list(arr)
        else:
            raise ValueError(f"prompt ids must be [C+1, L] or [B, C+1, L], got an array of rank {arr.ndim}")
    if not prompts:
        raise ValueError("no prompt given")
    rows, g = cfg.audio_channels + 1, cfg.group_size
    for b, p in enumerate(prompts):
        if p.ndim != 2:
            raise ValueError(f"prompt {b} must be [C+1, L], got shape {p.shape}")
        if p.shape[0] != rows:
            raise ValueError(f"prompt {b} has {p.shape[0]} rows; this model needs audio_channels + 1 = {rows}")
        if p.shape[1] == 0 or p.shape[1] % g:
            raise ValueError(f"prompt {b} length {p.shape[1]} is not a positive multiple of group_size {g}")
        if not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"prompt {b} must hold integer ids, got {p.dtype}")
        text = p[0, ::g]  # only column 0 of a group's text row is read (official prompts hold -100 elsewhere)
        if text.min() < 0 or text.max() >= cfg.vocab_size:
            raise ValueError(f"prompt {b} has text ids outside the vocabulary 0..{cfg.vocab_size - 1}")
        for c, vocab in enumerate(cfg.speech_vocab_sizes):
            if p[c + 1].min() < 0 or p[c + 1].max() >= vocab:
                raise ValueError(f"prompt {b} channel {c} has speech ids outside 0..{vocab - 1}")
    return prompts


def left_pad(
    prompts: list[np.ndarray], slots: int, cfg: LMConfig, special: SpecialTokens
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to ``slots`` groups -> ids ``[B, C+1, slots*G]`` int32 and pad counts ``[B]`` (groups).

    Padding groups hold the text pad id (``<|endoftext|>``) and the channels' empty ids; they are masked anyway.
    """
    g = cfg.group_size
    out = np.empty((len(prompts), cfg.audio_channels + 1, slots * g), np.int32)
    out[:, 0] = special.endoftext
    out[:, 1:] = np.asarray(cfg.speech_empty_ids, np.int32)[None, :, None]
    pads = np.zeros(len(prompts), np.int32)
    for b, p in enumerate(prompts):
        pads[b] = slots - p.shape[1] // g
        out[b, :, pads[b] * g :] = p
    # Official prompts hold -100 at text positions 1..G-1 of a group; only column 0 is read, so make them valid ids.
    text = out[:, 0].reshape(len(prompts), slots, g)
    text[:] = text[:, :, :1]
    out[:, 0] = text.reshape(len(prompts), slots * g)
    return out, pads


# ---------------------------------------------------------------------------------------------------------------
# The group step, shared by the while_loop and the streaming twin
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The ``lax.while_loop`` carry: everything one group step reads and writes (a registered pytree).

    S = P + N cache slots (P prompt slots, N = ``max_new_groups``).
    """

    cache: lm.KVCache  # per backbone layer {"k", "v": [B, S, K, H]}
    key_valid: jax.Array  # [B, S] bool: False at left-padding slots
    logits: jax.Array  # [B, V] text logits at the last fed position
    local_hidden: jax.Array  # [B, Dl] patch-decoder input at the last fed position
    groups: jax.Array  # [B, N, C+1, G] int32: generated groups (frozen once a row is done)
    step: jax.Array  # [] int32: groups generated so far (the loop counter)
    done: jax.Array  # [B] bool: the row has stopped
    n_generated: jax.Array  # [B] int32: groups the row generated until it stopped


jax.tree_util.register_dataclass(
    DecodeState,
    data_fields=["cache", "key_valid", "logits", "local_hidden", "groups", "step", "done", "n_generated"],
    meta_fields=[],
)


def prefill(params, ids: jax.Array, pads: jax.Array, *, st: StepStatic) -> DecodeState:
    """Run :func:`mimo_ref.lm.step` over the padded prompts into a fresh cache and build the loop state.

    ids ``[B, C+1, P*G]``, pads ``[B]`` (left-padding groups per row) -> :class:`DecodeState`.
    """
    cfg = st.cfg
    b = ids.shape[0]
    p = st.prompt_slots
    slot = jnp.arange(p, dtype=jnp.int32)[None, :]  # [1, P]
    valid = slot >= pads[:, None]  # [B, P]
    positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 1).astype(jnp.int32)  # [B, P], pads at 1
    cache = lm.init_cache(cfg.backbone, b, p + st.max_new_groups, lm.compute_dtype(params, cfg))
    key_valid = jnp.concatenate([valid, jnp.ones((b, st.max_new_groups), bool)], axis=1)  # [B, S]
    out = lm.step(params, ids, positions, cfg=cfg, empty_id=st.special.empty, cache=cache, key_valid=key_valid)
    g, c = cfg.group_size, cfg.audio_channels
    return DecodeState(
        cache=out.cache,
        key_valid=key_valid,
        logits=out.logits,
        local_hidden=out.local_hidden,
        groups=jnp.zeros((b, st.max_new_groups, c + 1, g), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        done=jnp.zeros((b,), bool),
        n_generated=jnp.zeros((b,), jnp.int32),
    )


def text_token(logits: jax.Array, cur_len: jax.Array, min_length: jax.Array, keys: jax.Array, *, st: StepStatic):
    """Step 1 of a group: every row's text token. logits ``[B, V]``, cur_len / min_length / keys ``[B]`` -> ``[B]``.

    Official ``MiMoSampler.sample`` with the stop tokens set to -inf (after processing) while the row is shorter
    than ``min_length`` groups.
    """
    stops = jnp.asarray(st.stop_tokens, jnp.int32)  # [n_stop] (may be empty)
    is_stop = jnp.isin(jnp.arange(logits.shape[-1]), stops)  # [V]
    removed = is_stop[None, :] & (cur_len < min_length)[:, None]  # [B, V]
    sample_text = functools.partial(sampling.sample, sampler=st.text_sampler)
    return jax.vmap(sample_text)(logits, key=keys, removed=removed)  # [B, V] -> [B]


def group_step(
    params, tables, state: DecodeState, pads: jax.Array, min_length: jax.Array, keys: jax.Array, *, st: StepStatic
) -> DecodeState:
    """One group for every row (see the module docstring). ``keys`` ``[B]``: one key per sequence.

    ``tables``: the patch decoder's weights as its steps read them (:func:`mimo_ref.lm.patch_decoder_tables`), built
    once per generate call rather than once per group.
    """
    cfg, special = st.cfg, st.special
    g, c = cfg.group_size, cfg.audio_channels
    b = state.logits.shape[0]
    step = state.step
    prompt_groups = st.prompt_slots - pads  # [B]
    cur_len = prompt_groups + step  # [B] groups before this one
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, step)))(keys)  # [B, 2]: text, speech

    # 1. text token; stop tokens removed below the minimum length (after processing, as official)
    stops = jnp.asarray(st.stop_tokens, jnp.int32)  # [n_stop] (may be empty)
    text = tap("generate.text_token", text_token(state.logits, cur_len, min_length, step_keys[:, 0], st=st))  # [B]

    # 2. speech: patch decoder for <|empty|> groups, channel empty ids otherwise
    is_speech = (text == special.empty) & ~state.done  # [B]
    empty_frames = jnp.broadcast_to(jnp.asarray(cfg.speech_empty_ids, jnp.int32), (b, g, c))  # [B, G, C]
    choose = lm.channel_sampler(st.speech_sampler, cfg=cfg)

    def decode(_):
        return lm.patch_decoder(params, state.local_hidden, choose, step_keys[:, 1], cfg=cfg, tables=tables)

    speech = jax.lax.cond(jnp.any(is_speech), decode, lambda _: empty_frames, None)  # [B, G, C]
    speech = jnp.where((text == special.empty)[:, None, None], speech, empty_frames)

    # 3. append the group: [B, C+1, G] = text repeated G times over speech transposed to [B, C, G]
    text_row = jnp.broadcast_to(text[:, None, None], (b, 1, g))  # [B] -> [B, 1, G]
    group = jnp.concatenate([text_row, speech.transpose(0, 2, 1)], axis=1)  # -> [B, C+1, G]
    zero = jnp.zeros((), jnp.int32)  # all indices int32 (a Python 0 would become int64 in x64 mode)
    groups = jax.lax.dynamic_update_slice(state.groups, tap("generate.group", group)[:, None], (zero, step, zero, zero))

    # 4. stop rule (official MiMoStopper): length cap, or a stop token once the minimum length is reached
    new_len = cur_len + 1
    stop = (new_len >= prompt_groups + st.max_new_groups) | (jnp.isin(text, stops) & (new_len >= min_length))
    n_generated = jnp.where(state.done, state.n_generated, step + 1)
    done = state.done | stop
    jax.debug.callback(report_progress, step + 1)  # host-side progress (a no-op unless a listener is set)

    # 5. feed the group back through the one LM step, unless every row is done
    def feed(_):
        out = lm.step(
            params,
            group,  # [B, C+1, G]: one group
            cur_len[:, None],  # [B, 1]: its position
            cfg=cfg,
            empty_id=special.empty,
            cache=state.cache,
            write_pos=st.prompt_slots + step,
            key_valid=state.key_valid,
        )
        return out.cache, out.logits, out.local_hidden

    def keep(_):
        return state.cache, state.logits, state.local_hidden

    cache, logits, local_hidden = jax.lax.cond(jnp.all(done), keep, feed, None)
    return dataclasses.replace(
        state,
        cache=cache,
        logits=logits,
        local_hidden=local_hidden,
        groups=groups,
        step=step + 1,
        done=done,
        n_generated=n_generated,
    )


@functools.partial(jax.jit, static_argnames=("st",))
def generate_jit(params, ids, pads, min_length, keys, *, st: StepStatic) -> tuple[jax.Array, jax.Array]:
    """Prefill + ``lax.while_loop`` of :func:`group_step` until every row is done.

    -> (groups ``[B, N, C+1, G]``, n_generated ``[B]``): the :class:`DecodeState` fields the host needs.
    """
    state = prefill(params, ids, pads, st=st)
    tables = lm.patch_decoder_tables(params, cfg=st.cfg, rows=ids.shape[0])

    def cond(state: DecodeState):
        return (state.step < st.max_new_groups) & ~jnp.all(state.done)

    def body(state: DecodeState):
        return group_step(params, tables, state, pads, min_length, keys, st=st)

    state = jax.lax.while_loop(cond, body, state)
    return state.groups, state.n_generated


prefill_jit = jax.jit(prefill, static_argnames=("st",))
group_step_jit = jax.jit(group_step, static_argnames=("st",))
tables_jit = jax.jit(lm.patch_decoder_tables, static_argnames=("cfg", "rows"))


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


class Prepared(NamedTuple):
    """What :func:`prepare` returns: the static step description and the padded inputs of the loop."""

    st: StepStatic
    ids: jax.Array  # [B, C+1, P*G] int32 left-padded prompts
    pads: jax.Array  # [B] int32 padding groups per row
    min_length: jax.Array  # [B] int32 official min_length (prompt groups + min_new_groups)
    keys: jax.Array  # [B] typed random keys, one per row
    prompts: list[np.ndarray]  # the prompts as given ([C+1, L_b] each)


def prepare(
    cfg: LMConfig,
    special: SpecialTokens,
    prompt_ids,
    *,
    max_new_groups: int,
    min_new_groups: int = 0,
    stop_tokens: Sequence[int] = (),
    text_sampler: SamplerConfig = sampling.GREEDY,
    speech_sampler: SamplerConfig = sampling.GREEDY,
    key: jax.Array | None = None,
    prompt_bucket: int = PROMPT_BUCKET,
) -> Prepared:
    """Validate the options of :func:`generate` (same names and defaults) and build the padded inputs and the
    static step description."""
    prompts = as_prompt_list(prompt_ids, cfg)
    if int(max_new_groups) < 1:
        raise ValueError(f"max_new_groups must be >= 1, got {max_new_groups}")
    if int(min_new_groups) < 0:
        raise ValueError(f"min_new_groups must be >= 0, got {min_new_groups}")
    stops = tuple(sorted({int(t) for t in stop_tokens}))
    for t in stops:
        if not 0 <= t < cfg.vocab_size:
            raise ValueError(f"stop token {t} is outside the text vocabulary (0..{cfg.vocab_size - 1})")
    lengths = np.array([p.shape[1] // cfg.group_size for p in prompts], np.int32)
    longest = int(lengths.max())
    if longest + max_new_groups > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt of {longest} groups + max_new_groups {max_new_groups} exceeds the model's "
            f"max_position_embeddings ({cfg.max_position_embeddings}); shorten the prompt or generate fewer groups"
        )
    bucketed = bucket_length(longest, minimum=prompt_bucket, step=prompt_bucket)  # a multiple of prompt_bucket
    slots = min(bucketed, cfg.max_position_embeddings - max_new_groups)
    ids, pads = left_pad(prompts, slots, cfg, special)
    keys = jax.random.key(0) if key is None else key
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError("key must be a typed jax.random key (jax.random.key(seed)), or one per prompt")
    if keys.ndim == 0:
        keys = jax.vmap(lambda i: jax.random.fold_in(keys, i))(jnp.arange(len(prompts)))  # row b: fold_in(key, b)
    if keys.shape != (len(prompts),):
        raise ValueError(f"got {keys.shape[0]} keys for {len(prompts)} prompts; pass one key or one per prompt")
    st = StepStatic(cfg, special, text_sampler, speech_sampler, stops, slots, int(max_new_groups))
    min_length = jnp.asarray(lengths + int(min_new_groups), jnp.int32)
    return Prepared(st, jnp.asarray(ids), jnp.asarray(pads), min_length, keys, prompts)


def assemble(
    prompts: list[np.ndarray], groups: np.ndarray, n_generated: np.ndarray, st: StepStatic
) -> GenerationResult:
    """Host side: join each row's prompt (as given, -100 fillers included) and its generated groups."""
    cfg = st.cfg
    g = cfg.group_size
    b = len(prompts)
    prompt_lengths = np.array([p.shape[1] // g for p in prompts], np.int64)
    lengths = prompt_lengths + n_generated
    total = int(lengths.max())
    out = np.empty((b, cfg.audio_channels + 1, total * g), np.int64)
    out[:, 0] = st.special.endoftext
    out[:, 1:] = np.asarray(cfg.speech_empty_ids)[None, :, None]
    for r in range(b):
        gen = (
            groups[r, : int(n_generated[r])].transpose(1, 0, 2).reshape(cfg.audio_channels + 1, -1)
        )  # [n, C+1, G] -> [C+1, n*G]
        row = np.concatenate([prompts[r], gen], axis=1)
        out[r, :, : row.shape[1]] = row
    return GenerationResult(out, lengths, prompt_lengths, g)


def generate(
    params,
    cfg: LMConfig,
    special: SpecialTokens,
    prompt_ids,
    *,
    max_new_groups: int,
    min_new_groups: int = 0,
    stop_tokens: Sequence[int] = (),
    text_sampler: SamplerConfig = sampling.GREEDY,
    speech_sampler: SamplerConfig = sampling.GREEDY,
    key: jax.Array | None = None,
    prompt_bucket: int = PROMPT_BUCKET,
) -> GenerationResult:
    """Generate up to ``max_new_groups`` groups after each prompt, in one jitted ``lax.while_loop``.

    prompt_ids: ``[C+1, L]``, ``[B, C+1, L]`` or a list of ``[C+1, L_b]`` (L a multiple of G). ``min_new_groups``:
    stop tokens are suppressed until that many groups were generated (official ``min_length`` = prompt groups +
    ``min_new_groups``). ``key``: one ``jax.random`` key (row b uses ``fold_in(key, b)``) or ``[B]`` keys.
    Prompt text ids at group columns 1..G-1 (official prompts hold -100 there) are ignored.
    """
    st, ids, pads, min_length, keys, prompts = prepare(
        cfg,
        special,
        prompt_ids,
        max_new_groups=max_new_groups,
        min_new_groups=min_new_groups,
        stop_tokens=stop_tokens,
        text_sampler=text_sampler,
        speech_sampler=speech_sampler,
        key=key,
        prompt_bucket=prompt_bucket,
    )
    params = lm.text_head_decode_layout(params, cfg=cfg, rows=ids.shape[0])  # once per loaded head, outside the loop
    groups, n_generated = generate_jit(params, ids, pads, min_length, keys, st=st)
    return assemble(prompts, np.asarray(groups), np.asarray(n_generated), st)


def generate_stream(
    params,
    cfg: LMConfig,
    special: SpecialTokens,
    prompt_ids,
    *,
    on_result: Callable[[GenerationResult], None] | None = None,
    **options,
) -> Iterator[np.ndarray]:
    """Streaming / debugging twin of :func:`generate`: the same :func:`group_step`, driven from Python.

    ``options``: the keyword arguments of :func:`generate` (``max_new_groups``, ``min_new_groups``,
    ``stop_tokens``, ``text_sampler``, ``speech_sampler``, ``key``, ``prompt_bucket``), same defaults.
    Yields each new group as ``[B, C+1, G]`` (rows that already stopped repeat their frozen output and are
    flagged by the final result). ``on_result`` receives the same :class:`GenerationResult` that :func:`generate`
    returns once the loop ends.
    """
    st, ids, pads, min_length, keys, prompts = prepare(cfg, special, prompt_ids, **options)
    params = lm.text_head_decode_layout(params, cfg=cfg, rows=ids.shape[0])
    state = prefill_jit(params, ids, pads, st=st)
    tables = tables_jit(params, cfg=cfg, rows=ids.shape[0])
    while int(state.step) < st.max_new_groups and not bool(jnp.all(state.done)):
        step = int(state.step)
        state = group_step_jit(params, tables, state, pads, min_length, keys, st=st)
        yield np.asarray(state.groups[:, step])
    if on_result is not None:
        on_result(assemble(prompts, np.asarray(state.groups), np.asarray(state.n_generated), st))
