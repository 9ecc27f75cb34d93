"""Testing tools for MiMo-Audio ports: Hypothesis strategies and a differential-testing helper.

- :mod:`mimo_ref.testing.strategies`: small valid LM and audio-tokenizer configs (corner lists and free draws),
  random params from a seed, valid ``input_ids``, waveforms, mel lengths, codes, sampler configs.
- :func:`differential`: run a reference and a candidate function on drawn cases and raise an ``AssertionError``
  naming the drawn inputs at the first mismatch; with ``stages=True`` it compares the candidate's intermediates
  (tap names) first and names the first diverging stage (:func:`with_stages` gives a JAX candidate's).
- :mod:`mimo_ref.testing.entries`: reference entry points that expose intermediates (the patch decoder's tokens,
  per-step hidden states and logits; codes -> vq, coarse mel, waveform).

The property suite that uses them is ``tests/properties/`` (described in ``docs/properties.md``); how another port
reuses them is in ``docs/porting_with_properties.md``.
"""

from mimo_ref.testing import entries, strategies
from mimo_ref.testing.differential import differential, with_stages

__all__ = ["differential", "entries", "strategies", "with_stages"]
