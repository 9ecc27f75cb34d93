"""Properties of generation (``mimo_ref/generate.py``): batch rows equal their batch-1 runs, the streaming twin
equals the while_loop, generated groups follow the official group and stop rules.

One config (the ``gqa`` corner), ``max_new_groups`` 4, prompts of 1..6 groups in a bucket of 8 slots and fixed
samplers and stop tokens: every example reuses the same three compiled programs (batch 2, batch 1, streaming).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref import generate, sampling
from mimo_ref.testing import strategies as mst

CFG = mst.lm_config({"num_hidden_layers": 1, "local_layers": 1}, name="generate")
SPECIAL = mst.special_tokens(CFG)
STOPS = (SPECIAL.im_end,)
TEXT_SAMPLER = sampling.SamplerConfig(do_sample=True, temperature=1.0)
SPEECH_SAMPLER = sampling.SamplerConfig(do_sample=True, temperature=0.9, top_k=5)
OPTIONS = dict(
    max_new_groups=4,
    stop_tokens=STOPS,
    text_sampler=TEXT_SAMPLER,
    speech_sampler=SPEECH_SAMPLER,
    prompt_bucket=8,
)
FAVOURED = (SPECIAL.empty, SPECIAL.im_end, 3, 4)  # text ids the random head makes likely


@functools.cache
def generation_params(seed: int) -> dict:
    """Random params whose text head only scores a few ids (``<|empty|>``, the stop token, two text ids), so that
    generations mix speech groups (patch decoder), text groups and stops instead of uniform noise."""
    params = mst.lm_params(CFG, seed)
    rng = np.random.default_rng(seed)
    head = np.zeros((CFG.vocab_size, CFG.hidden_size), np.float32)
    head[list(FAVOURED)] = rng.standard_normal((len(FAVOURED), CFG.hidden_size)) * 0.3
    return params | {"lm_head": {"weight": jnp.asarray(head)}}


@st.composite
def prompts(draw):
    """Two prompts of 1..6 groups each (text and speech groups, empty ids sprinkled)."""
    lengths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=2))
    kinds = [draw(st.lists(st.sampled_from(mst.GROUP_KINDS), min_size=n, max_size=n)) for n in lengths]
    return mst.prompt_list(CFG, SPECIAL.empty, kinds, draw(mst.seeds()))


@given(prompt_ids=prompts(), params_seed=st.integers(0, 3), key=st.integers(0, 2**16), min_new=st.integers(0, 3))
def test_batch_rows_equal_their_batch_one_runs(prompt_ids, params_seed, key, min_new):
    """Row b of a batched (left-padded) generation equals generating prompt b alone with row b's key."""
    params = generation_params(params_seed)
    keys = jax.random.split(jax.random.key(key), len(prompt_ids))
    batch = generate.generate(params, CFG, SPECIAL, prompt_ids, key=keys, min_new_groups=min_new, **OPTIONS)
    for b, prompt in enumerate(prompt_ids):
        single = generate.generate(params, CFG, SPECIAL, prompt, key=keys[b : b + 1], min_new_groups=min_new, **OPTIONS)
        np.testing.assert_array_equal(batch.sequence(b), single.sequence(0), err_msg=f"row {b}")


@given(prompt_ids=prompts(), params_seed=st.integers(0, 3), key=st.integers(0, 2**16), min_new=st.integers(0, 3))
def test_streaming_twin_equals_generate(prompt_ids, params_seed, key, min_new):
    """``generate_stream`` (the same group step driven from Python) yields each generated group of ``generate`` in
    order and ends with the same result."""
    params = generation_params(params_seed)
    kwargs = dict(key=jax.random.key(key), min_new_groups=min_new, **OPTIONS)
    loop = generate.generate(params, CFG, SPECIAL, prompt_ids, **kwargs)
    results = []
    groups = list(generate.generate_stream(params, CFG, SPECIAL, prompt_ids, on_result=results.append, **kwargs))
    np.testing.assert_array_equal(results[0].ids, loop.ids)
    np.testing.assert_array_equal(results[0].lengths, loop.lengths)
    g = CFG.group_size
    for b in range(len(prompt_ids)):
        generated = loop.generated(b)
        for i in range(generated.shape[1] // g):
            np.testing.assert_array_equal(groups[i][b], generated[:, i * g : (i + 1) * g], err_msg=f"row {b} group {i}")


@given(prompt_ids=prompts(), params_seed=st.integers(0, 3), key=st.integers(0, 2**16), min_new=st.integers(0, 3))
def test_generated_groups_follow_the_group_and_stop_rules(prompt_ids, params_seed, key, min_new):
    """Every generated group repeats its text id over its G columns; a speech group (text ``<|empty|>``) holds valid,
    non-empty speech ids, any other group the channels' empty ids. A row ends at its first stop token generated at
    a length >= min_length (stop tokens are suppressed before), or after max_new_groups."""
    params = generation_params(params_seed)
    result = generate.generate(
        params, CFG, SPECIAL, prompt_ids, key=jax.random.key(key), min_new_groups=min_new, **OPTIONS
    )
    g = CFG.group_size
    empties = np.asarray(CFG.speech_empty_ids)[:, None]  # [C, 1]
    for b in range(len(prompt_ids)):
        generated = result.generated(b)  # [C+1, n*G]
        n = generated.shape[1] // g
        assert 1 <= n <= OPTIONS["max_new_groups"]
        for i in range(n):
            group = generated[:, i * g : (i + 1) * g]  # [C+1, G]
            text = int(group[0, 0])
            assert (group[0] == text).all(), f"row {b} group {i}: text id not repeated"
            if text == SPECIAL.empty:
                assert (group[1:] != empties).all(), f"row {b} group {i}: a speech token is an empty id"
                assert (group[1:] < np.asarray(CFG.speech_vocab_sizes)[:, None]).all()
            else:
                assert (group[1:] == empties).all(), f"row {b} group {i}: a text group carries speech"
            # official: stop tokens are set to -inf while the length before this group (prompt_groups + i) is below
            # min_length = prompt_groups + min_new; a stop token then ends the row (its new length is >= min_length)
            assert text not in STOPS or i >= min_new, f"row {b} group {i}: stop token before min_length"
            if i < n - 1:
                assert text not in STOPS, f"row {b} group {i}: the row went on after a stop token"
            else:
                assert text in STOPS or n == OPTIONS["max_new_groups"], f"row {b}: ended early without a stop token"
