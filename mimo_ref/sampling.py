"""Logit processing and token sampling (official ``MiMoSampler``).

``process_logits`` reproduces ``MiMoSampler.process`` row by row:

1. ``temperature`` (if set) divides the logits;
2. top-k (if ``top_k > 0``) keeps entries ``>=`` the k-th largest value of the row (ties at the threshold kept);
3. top-p (if ``0 < top_p <= 1``) sorts the row ascending, removes entries whose cumulative softmax is
   ``<= 1 - top_p`` (the largest entry is always kept), i.e. keeps the smallest set of largest entries whose
   probability mass exceeds ``top_p``.

Removed entries become -inf. Tokens that a caller forbids (a channel's empty id, stop tokens before the minimum
length) are set to -inf **after** processing, as the official ``sample`` does, so they take part in the top-k and
top-p statistics. The official top-k threshold broadcasts correctly only for batch 1; here it is per row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings as data (official ``MiMoSampler``). ``None`` / ``0`` disable a stage."""

    do_sample: bool = False  # False: argmax of the processed logits
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


GREEDY = SamplerConfig(do_sample=False)

# Official per-task defaults (MimoAudio.task_sampler_configs; other tasks use DEFAULT_SAMPLERS): (global, local).
TASK_SAMPLERS: dict[str, tuple[SamplerConfig, SamplerConfig]] = {
    "asr": (SamplerConfig(False, 1.0, None, 1.0), SamplerConfig(True, 0.9, None, 0.95)),
    "tts": (SamplerConfig(True, 0.6, None, 1.0), SamplerConfig(True, 0.9, None, 0.95)),
    "spoken_dialogue": (SamplerConfig(True, 0.6, None, 0.95), SamplerConfig(True, 0.9, None, 0.95)),
    "audio_understanding": (SamplerConfig(True, 0.3, None, 0.95), SamplerConfig(True, 0.9, None, 0.95)),
    "text_chat": (SamplerConfig(True, 0.4, None, 0.95), SamplerConfig(True, 0.9, None, 0.95)),
    "in_context_learning_s2s": (SamplerConfig(False, 1.0, None, 1.0), SamplerConfig(True, 0.9, None, 0.95)),
}
DEFAULT_SAMPLERS = (SamplerConfig(True, 0.6, 50, 0.95), SamplerConfig(True, 0.9, 50, 0.95))


def task_samplers(task: str) -> tuple[SamplerConfig, SamplerConfig]:
    """Official (global, local) sampler defaults for an official task name; unknown names get the defaults."""
    return TASK_SAMPLERS.get(task, DEFAULT_SAMPLERS)


def process_logits(logits: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """``MiMoSampler.process`` per row. logits ``[..., V]`` -> ``[..., V]`` with removed entries at -inf."""
    scores = logits
    if sampler.temperature is not None:
        scores = scores / jnp.asarray(sampler.temperature, scores.dtype)
    if sampler.top_k is not None and sampler.top_k > 0:
        k = min(sampler.top_k, scores.shape[-1])
        kth = jax.lax.top_k(scores, k)[0][..., -1:]  # [..., V] -> [..., 1]: k-th largest of each row
        scores = jnp.where(scores < kth, -jnp.inf, scores)
    if sampler.top_p is not None and 0.0 < sampler.top_p <= 1.0:
        scores = jnp.where(top_p_removed(scores, sampler.top_p), -jnp.inf, scores)
    return scores


def sortable_bits(x: jax.Array) -> jax.Array:
    """Map float32 values to uint32 keys with the same order (-inf lowest): flip all bits of negatives, set the
    sign bit of non-negatives."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def top_p_removed(scores: jax.Array, top_p: float) -> jax.Array:
    """Entries that official top-p removes, ``[..., V]`` bool, without sorting the vocabulary.

    Official: sort ascending, remove entry i when the cumulative softmax up to and including i is ``<= 1 - top_p``,
    never remove the last (largest). The cumulative mass is non-decreasing along the sorted order, so the removed
    entries are exactly those whose value is ``<=`` a threshold: the largest value t with
    ``mass(scores <= t) <= 1 - top_p``. It is found by a search over the order-preserving uint32 keys of the values
    (:func:`sortable_bits`), each round evaluating the mass below ``A - 1`` candidate thresholds with masked sums
    over the vocabulary; a full sort is 30x slower on CPU for 151680 entries. ``A = 2`` (bisection, 32 rounds):
    measured inside a jitted step on CPU, wider rounds (A = 4, 8, 16) are as fast or slower for every shape used,
    from the patch decoder's 2 x 1025 and 6 x 129 logits to batches of 151680 (docs/performance.md). The result does
    not depend on A. Deviation: when equal values straddle the threshold, the official result depends on torch's
    unstable sort order; here ties are removed or kept together.
    """
    vocab = scores.shape[-1]
    arity = 2
    rounds = 32  # enough to shrink a 2^32 key range to one key
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)[..., None, :]  # [..., 1, V]
    keys = sortable_bits(scores)[..., None, :]  # [..., 1, V]
    limit = jnp.float32(1.0 - top_p)
    lo = jnp.zeros(scores.shape[:-1] + (1,), jnp.uint32)  # invariant: mass(keys <= lo) <= limit (key 0 is below -inf)
    hi = jnp.max(keys[..., 0, :], axis=-1, keepdims=True)  # invariant: the threshold is <= hi
    steps = jnp.arange(1, arity, dtype=jnp.uint32)

    def narrow(_, bounds):
        lo, hi = bounds  # [..., 1]
        stride = (hi - lo) // arity + 1
        mids = jnp.minimum(lo + stride * steps, hi)  # [..., A-1] candidate thresholds, ascending
        mass = jnp.sum(jnp.where(keys <= mids[..., None], probs, 0.0), axis=-1)  # [..., A-1, V] -> [..., A-1]
        ok = mass <= limit
        new_lo = jnp.max(jnp.where(ok, mids, lo), axis=-1, keepdims=True)  # largest candidate still allowed
        new_hi = jnp.min(jnp.where(ok, hi, mids - 1), axis=-1, keepdims=True)  # below the smallest rejected one
        return new_lo, jnp.maximum(new_hi, new_lo)

    lo, _ = jax.lax.fori_loop(0, rounds, narrow, (lo, hi))
    removed = keys[..., 0, :] <= lo  # [..., V]
    largest = jnp.arange(vocab) == jnp.argmax(scores, axis=-1, keepdims=True)
    return removed & ~largest  # the largest entry always stays


def remove_tokens(scores: jax.Array, removed: jax.Array) -> jax.Array:
    """Set forbidden entries to -inf. scores ``[..., V]``, removed ``[..., V]`` bool (broadcastable)."""
    return jnp.where(removed, -jnp.inf, scores)


def choose(scores: jax.Array, sampler: SamplerConfig, key: jax.Array) -> jax.Array:
    """Pick a token per row from processed scores ``[..., V]`` -> ``[...]`` int32.

    Greedy: first index of the maximum (``torch.argmax``). Sampling: a draw from ``softmax(scores)`` by inverting
    its cumulative distribution with one uniform number per row (the first index whose cumulative probability
    exceeds ``u * total``; zero-probability entries can never be that index). torch's ``multinomial`` stream
    cannot be reproduced; a ``jax.random`` key makes runs reproducible here. One uniform per row instead of a
    Gumbel number per vocabulary entry is 4x cheaper on CPU.
    """
    return choose_with(scores, sampler, draw(key, sampler, scores.shape[:-1]))


def draw(key: jax.Array, sampler: SamplerConfig, shape: tuple[int, ...]) -> jax.Array | None:
    """The uniform numbers :func:`choose` uses for rows of ``shape``: ``[...]`` float32 in [0, 1), or None (greedy)."""
    if not sampler.do_sample:
        return None
    return jax.random.uniform(key, tuple(shape) + (1,), jnp.float32)[..., 0]  # [..., 1] -> [...]


def choose_with(scores: jax.Array, sampler: SamplerConfig, u: jax.Array | None) -> jax.Array:
    """:func:`choose` given its uniform numbers ``u`` ``[...]`` (:func:`draw`): scores ``[..., V]`` -> ``[...]``."""
    if not sampler.do_sample:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)  # [..., V], removed entries exactly 0
    cdf = jnp.cumsum(probs, axis=-1)  # [..., V]
    threshold = u[..., None] * cdf[..., -1:]  # [...] -> [..., 1]
    index = jnp.argmax(cdf > threshold, axis=-1)  # first entry past u
    return index.astype(jnp.int32)


def sample(logits: jax.Array, sampler: SamplerConfig, key: jax.Array, removed: jax.Array | None = None) -> jax.Array:
    """Official ``MiMoSampler.sample``: process, remove forbidden tokens, then choose. ``[..., V]`` -> ``[...]``."""
    scores = process_logits(logits, sampler)
    if removed is not None:
        scores = remove_tokens(scores, removed)
    return choose(scores, sampler, key)
