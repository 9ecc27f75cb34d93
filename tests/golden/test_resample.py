"""Golden parity of :func:`mimo_ref.audio_io.resample` with ``torchaudio.functional.resample`` (default arguments).

Fixture ``pipeline/resample.safetensors`` holds ``in_<rate>`` and ``out_<rate>_to_<rate>`` pairs; rates are read from
the names ("16k" = 16000 Hz, "44k1" = 44100 Hz).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref.audio_io import resample
from tests.golden_utils import load_arrays, rel_l2

# float32 torchaudio vs this float32 port; measured ~1e-7 on the fixtures (the kernel is built in float32 as
# torchaudio builds it, the convolution sums in float64).
TOL = 1e-5

RATE = re.compile(r"^(\d+)k(\d*)$")


def parse_rate(text: str) -> int:
    """ "16k" -> 16000, "44k1" -> 44100, "22k05" -> 22050."""
    match = RATE.match(text)
    assert match, f"unrecognised rate {text!r} in a resample fixture name"
    whole, frac = match.groups()
    return int(whole) * 1000 + (int(frac) * 10 ** (3 - len(frac)) if frac else 0)


def resample_cases(golden_dir) -> list[tuple[str, str, int, int]]:
    """(input name, output name, orig rate, new rate) of every fixture pair."""
    arrays = load_arrays(golden_dir / "pipeline" / "resample.safetensors")
    cases = []
    for name in sorted(arrays):
        match = re.match(r"^out_(\w+?)_to_(\w+)$", name)
        if match:
            source, target = match.groups()
            assert f"in_{source}" in arrays, f"{name} has no input in_{source}"
            cases.append((f"in_{source}", name, parse_rate(source), parse_rate(target)))
    return cases


def test_parse_rate():
    assert [parse_rate(s) for s in ("16k", "44k1", "24k", "22k05", "8k")] == [16000, 44100, 24000, 22050, 8000]


def test_resample_matches_torchaudio(golden_dir):
    arrays = load_arrays(golden_dir / "pipeline" / "resample.safetensors")
    cases = resample_cases(golden_dir)
    assert len(cases) >= 2, "the fixture should hold at least the 16 kHz and 44.1 kHz cases"
    for source, target, orig, new in cases:
        wave, expected = arrays[source], arrays[target]
        out = resample(wave, orig, new)
        assert out.dtype == wave.dtype
        assert out.shape == expected.shape, f"{target}: length {out.shape} != torchaudio {expected.shape}"
        assert out.shape[-1] == math.ceil(new * wave.shape[-1] / orig)
        err = rel_l2(out, expected)
        assert err <= TOL, f"{target}: relative L2 error {err:.3e} > {TOL:.0e}"


RATES = [8000, 16000, 22050, 24000, 44100, 48000]


@given(
    orig=st.sampled_from(RATES),
    new=st.sampled_from(RATES),
    length=st.integers(min_value=1, max_value=3000),
    seed=st.integers(0, 2**31 - 1),
)
def test_resample_length_dc_and_batching(orig, new, length, seed):
    """Output length is ceil(new * T / orig); leading axes are independent; a constant keeps its level inside."""
    rng = np.random.default_rng(seed)
    waves = rng.standard_normal((2, length)).astype(np.float32)
    out = resample(waves, orig, new)
    assert out.shape == (2, -(-new * length // orig))
    np.testing.assert_allclose(out[1], resample(waves[1], orig, new), rtol=0, atol=1e-6)
    if orig == new:
        assert out is waves
    ones = resample(np.ones(length + 4000, np.float32), orig, new)
    interior = ones[ones.shape[0] // 4 : 3 * ones.shape[0] // 4]
    # the windowed sinc's DC gain is within ~7e-4 of 1 for these rates
    assert np.abs(interior - 1).max() < 1e-3


@pytest.mark.parametrize("bad", [0, -16000, 16000.5, True])
def test_resample_rejects_bad_rates(bad):
    with pytest.raises(ValueError, match="positive integer rate"):
        resample(np.zeros(10, np.float32), bad, 24000)


def test_resample_rejects_integer_audio():
    with pytest.raises(TypeError, match="floating-point"):
        resample(np.zeros(10, np.int16), 16000, 24000)
