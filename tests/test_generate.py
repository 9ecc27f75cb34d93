"""Generation: argument errors, the stop rule, progress reports. (Batches equal their batch-1 runs and the streaming
twin equals the while_loop: properties, tests/properties/test_prop_generate.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimo_ref import generate, lm, sampling

TINY = Path(__file__).parents[1] / "weights" / "mimo_audio_tiny"
SAMPLED = sampling.SamplerConfig(do_sample=True, temperature=0.9, top_k=50, top_p=0.95)


@pytest.fixture(scope="module")
def model():
    return lm.load_lm(TINY)


def make_prompt(cfg, special, groups: int, seed: int) -> np.ndarray:
    """A prompt of text groups and speech groups (every third group is speech)."""
    rng = np.random.default_rng(seed)
    g, c = cfg.group_size, cfg.audio_channels
    ids = np.empty((c + 1, groups * g), np.int64)
    for t in range(groups):
        speech = t % 3 == 2
        ids[0, t * g : (t + 1) * g] = special.empty if speech else rng.integers(0, 390)
        for ch in range(c):
            ids[ch + 1, t * g : (t + 1) * g] = (
                rng.integers(0, cfg.speech_empty_ids[ch], size=g) if speech else cfg.speech_empty_ids[ch]
            )
    return ids


def test_the_jitted_loop_reports_progress_once_per_group(model):
    """Progress comes from the group step itself, so a run shown on a terminal is the same compiled while_loop as
    one that is not (the pipeline's progress display no longer switches to the Python-loop twin)."""
    params, cfg, special = model
    prompt = make_prompt(cfg, special, 4, seed=1)
    seen: list[int] = []
    with generate.progress_listener(seen.append):
        shown = generate.generate(params, cfg, special, prompt, max_new_groups=5)
    plain = generate.generate(params, cfg, special, prompt, max_new_groups=5)
    np.testing.assert_array_equal(shown.ids, plain.ids)
    assert seen == list(range(1, int(shown.lengths[0] - shown.prompt_lengths[0]) + 1))


def test_stop_token_ends_sequence_and_min_length_suppresses_it(model):
    params, cfg, special = model
    prompt = make_prompt(cfg, special, 4, seed=1)
    free = generate.generate(params, cfg, special, prompt, max_new_groups=8)
    first_text = int(free.generated(0)[0, 0])
    stopped = generate.generate(params, cfg, special, prompt, max_new_groups=8, stop_tokens=[first_text])
    assert stopped.lengths[0] == stopped.prompt_lengths[0] + 1  # stops right after the stop token
    held = generate.generate(params, cfg, special, prompt, max_new_groups=8, min_new_groups=3, stop_tokens=[first_text])
    assert int(held.generated(0)[0, 0]) != first_text  # suppressed below the minimum length
    assert held.lengths[0] >= held.prompt_lengths[0] + 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_groups=0), "max_new_groups must be >= 1"),
        (dict(max_new_groups=2, stop_tokens=[10**6]), "stop token 1000000 is outside the text vocabulary"),
        (dict(max_new_groups=600), "exceeds the model's max_position_embeddings"),
    ],
)
def test_bad_arguments(model, kwargs, message):
    params, cfg, special = model
    with pytest.raises(ValueError, match=message):
        generate.generate(params, cfg, special, make_prompt(cfg, special, 3, 0), **kwargs)


def test_bad_prompts(model):
    params, cfg, special = model
    prompt = make_prompt(cfg, special, 3, 0)
    with pytest.raises(ValueError, match="rank 1"):
        generate.generate(params, cfg, special, prompt[0], max_new_groups=2)
    with pytest.raises(ValueError, match="has 8 rows; this model needs audio_channels \\+ 1 = 9"):
        generate.generate(params, cfg, special, prompt[1:], max_new_groups=2)
    with pytest.raises(ValueError, match="not a positive multiple of group_size"):
        generate.generate(params, cfg, special, prompt[:, :-1], max_new_groups=2)
    bad = prompt.copy()
    bad[3, 0] = cfg.speech_vocab_sizes[2]
    with pytest.raises(ValueError, match="channel 2 has speech ids outside"):
        generate.generate(params, cfg, special, bad, max_new_groups=2)
    bad = prompt.copy()
    bad[0, 0] = cfg.vocab_size
    with pytest.raises(ValueError, match="text ids outside the vocabulary"):
        generate.generate(params, cfg, special, bad, max_new_groups=2)
