"""Reference entry points for differential tests of a port: what a component returns *and* what it computes inside.

A port compared on final outputs alone learns *that* it differs; these entries return the intermediates too, so a
comparison says where. Each takes the case dicts of the matching strategy (:func:`mimo_ref.testing.strategies.
patch_decoder_cases`, :func:`~mimo_ref.testing.strategies.codes_to_wave_cases`) as keyword arguments, and returns
NumPy arrays. Run inside :func:`mimo_ref.tap.collecting` (as ``differential(..., stages=True)`` does), every tap
of ``docs/tracing.md`` is recorded as well.

- :func:`patch_decoder_outputs`: official ``local_forward`` with the greedy chooser: tokens, the hidden state of
  every step (after the local stack's final RMSNorm) and every channel head's logits at the steps it is active.
- :func:`codes_to_wave_outputs`: official ``MiMoAudioTokenizer.decode`` of one sequence: vq, coarse mel, waveform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref import lm, sampling
from mimo_ref.audio.config import AudioTokenizerConfig
from mimo_ref.audio.decoder import decode_padded
from mimo_ref.config import LMConfig
from mimo_ref.tap import collecting


def repeat_name(name: str, k: int) -> str:
    """The ``k``-th occurrence of a tap name: ``name``, ``name#1``, ..."""
    return name if k == 0 else f"{name}#{k}"


def patch_decoder_outputs(params: dict, local_hidden, *, cfg: LMConfig) -> dict:
    """The patch decoder on ``local_hidden`` ``[B, Dl]`` with greedy choice (argmax over each active channel's head
    with its empty id removed), eager.

    -> ``{"tokens": [B, G, C] int32, "hidden": [B, S, Dl], "logits": (C arrays [B, G, V_c])}`` with S = G +
    max(delay) steps: ``hidden[:, t]`` is the local stack's output at step t (final RMSNorm included: the heads read
    it), and ``logits[c][:, g]`` is channel c's head ``local_transformer_lm_heads[c]`` at step ``delay[c] + g``,
    the step that emits its frame g (the official code computes a channel's head only at those steps).
    """
    local_hidden = jnp.asarray(local_hidden)
    keys = jax.random.split(jax.random.key(0), local_hidden.shape[0])  # unused by the greedy chooser
    greedy = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
    with collecting() as store:
        tokens = lm.patch_decoder(params, local_hidden, greedy, keys, cfg=cfg)
    steps = cfg.local_steps
    hidden = np.stack([store[repeat_name("lm.patch_decoder.stack.norm", t)][:, 0] for t in range(steps)], axis=1)
    logits = tuple(
        np.stack(
            [store[repeat_name(f"lm.patch_decoder.logits.c{c}", delay + g)] for g in range(cfg.group_size)], axis=1
        )  # G x [B, V_c] -> [B, G, V_c]
        for c, delay in enumerate(cfg.delay_pattern)
    )
    return {"tokens": np.asarray(tokens), "hidden": hidden, "logits": logits}


def codes_to_wave_outputs(params: dict, codes, *, cfg: AudioTokenizerConfig) -> dict:
    """The tokenizer's decoder and vocoder on codes ``[levels, T]`` (one sequence, no chunking).

    -> ``{"vq": [T, D] float32, "coarse_mel": [T2, M], "wav": [T2 * hop]}`` with ``T2 = T * avg_pooler *
    decoder_stride`` (the official ``decode``'s ``vq`` sum, decoder output and waveform).
    """
    codes = jnp.asarray(codes, jnp.int32)
    frames = codes.shape[1]
    vq, mel, mel_lengths, wav = decode_padded(params, codes[:, None, :], jnp.asarray([frames], jnp.int32), cfg=cfg)
    return {"vq": np.asarray(vq[0]), "coarse_mel": np.asarray(mel[0]), "wav": np.asarray(wav[0, 0])}
