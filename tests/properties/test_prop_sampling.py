"""Properties of logit processing and sampling (``mimo_ref/sampling.py``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref import sampling
from mimo_ref.testing import differential
from mimo_ref.testing import strategies as mst

ROWS, VOCAB = 4, 24
DRAWS = 6  # keys per example


@functools.partial(jax.jit, static_argnames=("sampler",))
def sample_many(logits: jax.Array, sampler: sampling.SamplerConfig, keys: jax.Array, removed: jax.Array):
    """``sampling.sample`` once per key: logits ``[R, V]``, keys ``[K]`` -> tokens ``[K, R]`` (one compile per
    sampler config; op-by-op, top-p's bisection loop would be re-traced at every call)."""
    return jax.vmap(lambda key: sampling.sample(logits, sampler, key, removed))(keys)


def official_allowed(logits: np.ndarray, sampler: sampling.SamplerConfig, removed: np.ndarray) -> np.ndarray:
    """Tokens that official ``MiMoSampler.sample`` may return, ``[R, V]`` bool, whatever the order of ties.

    top-k keeps values ``>=`` the k-th largest; top-p removes an entry when its cumulative softmax in ascending
    order is ``<= 1 - top_p`` (never the largest). Entries of equal value can sort either way, so an entry counts as
    removed by top-p only if it is removed in every order: ``mass(values <= v) <= 1 - top_p`` (with a 1e-5 margin
    for float32 sums). ``removed`` tokens are set to -inf after processing.
    """
    scores = logits.astype(np.float64)
    if sampler.temperature is not None:
        scores = scores / sampler.temperature
    keep = np.ones_like(scores, bool)
    if sampler.top_k is not None and sampler.top_k > 0:
        k = min(sampler.top_k, scores.shape[-1])
        kth = np.sort(scores, axis=-1)[:, -k][:, None]
        keep &= scores >= kth
    if sampler.top_p is not None and 0.0 < sampler.top_p <= 1.0:
        masked = np.where(keep, scores, -np.inf)
        probs = np.exp(masked - masked.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        mass_at_or_below = np.array([[probs[r][masked[r] <= v].sum() for v in masked[r]] for r in range(len(masked))])
        surely_removed = mass_at_or_below <= 1.0 - sampler.top_p - 1e-5
        largest = masked == masked.max(axis=-1, keepdims=True)
        keep &= ~surely_removed | largest
    return keep & ~removed


# The official task samplers plus stages in isolation and disabled (top_k 0, top_p outside (0, 1]); a fixed list, so
# each compiles once (``mst.sampler_configs()`` draws freely).
SAMPLERS = sorted(
    {s for pair in sampling.TASK_SAMPLERS.values() for s in pair}
    | set(sampling.DEFAULT_SAMPLERS)
    | {
        sampling.SamplerConfig(True, 2.0, 3, None),
        sampling.SamplerConfig(True, None, 1, 0.3),
        sampling.SamplerConfig(True, 0.3, 0, 1.5),
        sampling.SamplerConfig(False, None, 10, 0.3),
    },
    key=repr,
)


@given(
    sampler=st.sampled_from(SAMPLERS),
    ties=st.booleans(),
    seed=mst.seeds(),
    removed_fraction=st.sampled_from([0.0, 0.2, 0.6]),
)
def test_sampling_never_returns_a_masked_token(sampler, ties, seed, removed_fraction):
    """Whatever the sampler (greedy or sampled; temperature, top-k, top-p on or off) and however many ties, the
    token returned is never one that top-k, top-p or the caller's removal list masks (rows where every token is
    masked are skipped: the official code leaves them undefined)."""
    logits = mst.make_logits((ROWS, VOCAB), seed, ties=ties)
    removed = np.random.default_rng(seed + 1).random((ROWS, VOCAB)) < removed_fraction
    allowed = official_allowed(logits, sampler, removed)
    keys = jax.random.split(jax.random.key(seed % 2**31), DRAWS)
    tokens = np.asarray(sample_many(jnp.asarray(logits), sampler, keys, jnp.asarray(removed)))  # [K, R]
    for token in tokens:
        for row in range(ROWS):
            if allowed[row].any():
                assert allowed[row, token[row]], f"row {row}: token {token[row]} is masked ({sampler})"


@given(
    top_k=st.sampled_from([None, 3]),
    top_p=st.sampled_from([None, 0.9]),
    seed=mst.seeds(),
    removed_fraction=st.sampled_from([0.0, 0.3]),
)
def test_greedy_equals_sampling_at_temperature_towards_zero(top_k, top_p, seed, removed_fraction):
    """Sampling at a temperature far below the gap between the two best logits returns the greedy token (argmax
    of the logits after removal), when that token is not itself removed."""
    rng = np.random.default_rng(seed)
    logits = np.stack([rng.permutation(VOCAB) for _ in range(ROWS)]).astype(np.float32) * 0.5  # distinct, gap 0.5
    removed = rng.random((ROWS, VOCAB)) < removed_fraction
    removed[np.arange(ROWS), logits.argmax(axis=-1)] = False  # the greedy token stays allowed
    keys = jax.random.split(jax.random.key(seed % 2**31), DRAWS)
    greedy = np.asarray(sample_many(jnp.asarray(logits), sampling.GREEDY, keys[:1], jnp.asarray(removed)))[0]
    cold = sampling.SamplerConfig(do_sample=True, temperature=0.01, top_k=top_k, top_p=top_p)  # gap / T = 50
    sampled = np.asarray(sample_many(jnp.asarray(logits), cold, keys, jnp.asarray(removed)))  # [K, R]
    np.testing.assert_array_equal(sampled, np.broadcast_to(greedy, sampled.shape))
    np.testing.assert_array_equal(greedy, logits.argmax(axis=-1))


def official_top_p_removed(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Official top-p as written: sort ascending, cumulative softmax, remove ``cum <= 1 - top_p``, keep the last."""
    order = np.argsort(scores, axis=-1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=-1).astype(np.float64)
    probs = np.exp(sorted_scores - sorted_scores.max(axis=-1, keepdims=True))
    cum = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    remove_sorted = cum <= 1.0 - top_p
    remove_sorted[:, -1] = False
    removed = np.zeros_like(remove_sorted)
    np.put_along_axis(removed, order, remove_sorted, axis=-1)
    return removed


def clear_of_the_threshold(case) -> bool:
    """No cumulative mass (ascending order) lies within float32 rounding of ``1 - top_p``."""
    order = np.sort(case["scores"].astype(np.float64), axis=-1)
    probs = np.exp(order - order.max(axis=-1, keepdims=True))
    cum = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    return bool(np.min(np.abs(cum - (1.0 - case["top_p"]))) > 1e-5)


@st.composite
def top_p_cases(draw):
    """Logits ``[R, V]`` without ties (their top-p set does not depend on sort order) and a top_p."""
    rng = np.random.default_rng(draw(mst.seeds()))
    scores = (rng.standard_normal((ROWS, VOCAB)) * draw(st.sampled_from([0.5, 2.0, 5.0]))).astype(np.float32)
    return {"scores": scores, "top_p": draw(st.sampled_from([0.1, 0.5, 0.9, 0.99]))}


def test_top_p_equals_the_official_sorted_algorithm():
    """``top_p_removed`` (a bisection without sorting) removes exactly what the official sort + cumsum removes,
    for logits without ties whose cumulative masses are not within float32 rounding of ``1 - top_p``."""

    @functools.partial(jax.jit, static_argnames=("top_p",))
    def top_p_removed(scores, top_p):
        return sampling.top_p_removed(scores, top_p)

    def candidate(scores, top_p):
        return np.asarray(top_p_removed(jnp.asarray(scores), top_p=top_p))

    differential(official_top_p_removed, candidate, top_p_cases().filter(clear_of_the_threshold), rtol=0.0)
