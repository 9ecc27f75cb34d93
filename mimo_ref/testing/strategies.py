"""Hypothesis strategies for MiMo-Audio: small valid configs, random params, valid inputs.

Everything here is meant to be reused by other ports' test suites (see ``docs/porting_with_properties.md``).
Two kinds of config strategies exist, because in JAX (and most compiled stacks) compile time dominates a property
suite:

- :func:`lm_configs` / :func:`audio_configs` draw every field from small sets of valid values (GQA ratios,
  ``input_local_dim != local_dim``, group sizes 1..4, any delay pattern, windowed / causal attention, short
  codebook lists, ...). Each drawn config is a new program to compile: use them where nothing is compiled
  (``jax.eval_shape``) or where a port compiles cheaply.
- :func:`lm_corner_configs` / :func:`audio_corner_configs` sample from a fixed list of named corner configs
  (:data:`LM_CORNERS`, :data:`AUDIO_CORNERS`), so compiled functions are reused across examples and tests.

Configs are always built through the official-style constructors (:func:`mimo_ref.config.lm_config_from_dict`,
:func:`mimo_ref.audio.config.audio_config_from_dict`) from ``config.json``-like dicts, so every drawn config is one
a checkpoint could hold. Params come from a drawn integer seed (:func:`seeds`) rather than drawn floats: Hypothesis
shrinks a seed cheaply and a failing example is reproduced by its seed alone.

Shape letters follow the project legend: B batch, T positions (groups), G group size, C audio channels, V vocab,
D model width, Q quantizer levels, M mel bins.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from mimo_ref import lm
from mimo_ref.audio.config import AudioTokenizerConfig, audio_config_from_dict
from mimo_ref.audio.config import param_shapes as audio_param_shapes
from mimo_ref.audio.mel import periodic_hann
from mimo_ref.config import LMConfig, SpecialTokens, lm_config_from_dict
from mimo_ref.random_weights import random_params, synthetic_special
from mimo_ref.sampling import SamplerConfig

MAX_SEED = 2**32 - 1
IGNORED_TEXT_ID = -100  # official prompts hold -100 at text columns 1..G-1 of a group (never read)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``numpy.random.default_rng`` (params, ids, waveforms): shrink towards 0."""
    return st.integers(0, MAX_SEED)


# ---------------------------------------------------------------------------------------------------------------
# LM configs
# ---------------------------------------------------------------------------------------------------------------

LM_BASE: dict[str, Any] = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "speech_vocab_size": "17-17-9",
    "speech_zeroemb_idx": "16-16-8",
    "delay_pattern": "0-1-2",
    "group_size": 4,
    "audio_channels": 3,
    "local_dim": 16,
    "local_layers": 2,
    "local_attn_heads": 2,
    "local_ffn_dim": 32,
    "input_local_layers": 1,
    "input_local_dim": None,
    "input_full_attention": True,
}
"""A tiny ``config.json`` of the LM (real key names); corners and drawn configs override fields of it."""

LM_CORNER_DICTS: dict[str, dict[str, Any]] = {
    # GQA 2:1, input_local_dim == local_dim, bidirectional patch encoder, delays 0..C-1 (the real layout, C = 3).
    "gqa": {},
    # MQA (one KV head), N*H (24) != hidden (32), input_local_dim 8 != local_dim 16 (adds speech_embeddings_to_local),
    # odd group size 3, a delay gap (0, 2), empty id 0 on channel 0, tied word embeddings.
    "mqa_projected": {
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "input_local_dim": 8,
        "group_size": 3,
        "audio_channels": 2,
        "speech_vocab_size": "9-5",
        "speech_zeroemb_idx": "0-4",
        "delay_pattern": "0-2",
        "tie_word_embeddings": True,
    },
    # Real speech layout (8 channels, vocabularies 1025/129, delays 0..7), MHA, one-layer stacks, and a causal
    # patch encoder (input_full_attention null -> is_causal=True officially).
    "real_layout_causal_encoder": {
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 1,
        "local_layers": 1,
        "speech_vocab_size": "1025-1025-129-129-129-129-129-129",
        "speech_zeroemb_idx": "1024-1024-128-128-128-128-128-128",
        "delay_pattern": "0-1-2-3-4-5-6-7",
        "audio_channels": 8,
        "input_full_attention": None,
    },
}


def lm_config(overrides: dict[str, Any] | None = None, *, name: str = "lm") -> LMConfig:
    """An :class:`LMConfig` from :data:`LM_BASE` updated with ``overrides`` (``config.json`` keys)."""
    return lm_config_from_dict(LM_BASE | (overrides or {}), Path(f"<strategies {name}>"))


LM_CORNERS: dict[str, LMConfig] = {name: lm_config(d, name=name) for name, d in LM_CORNER_DICTS.items()}


def lm_corner_configs() -> st.SearchStrategy[LMConfig]:
    """One of :data:`LM_CORNERS` (a fixed list, so compiled functions are reused)."""
    return st.sampled_from(list(LM_CORNERS.values()))


@st.composite
def lm_config_dicts(draw) -> dict[str, Any]:
    """A valid LM ``config.json`` dict, every field drawn from a small set (head dims always even: RoPE)."""
    heads, kv_heads = draw(st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 1), (6, 3), (3, 1)]))
    channels = draw(st.sampled_from([1, 2, 3, 8]))
    vocabs = draw(st.lists(st.integers(2, 17), min_size=channels, max_size=channels))
    empties = [draw(st.integers(0, v - 1)) for v in vocabs]
    delays = draw(st.lists(st.integers(0, 3), min_size=channels, max_size=channels))
    local_heads = draw(st.sampled_from([1, 2]))
    local_dim = draw(st.sampled_from([8, 16]))
    input_local_dim = draw(st.sampled_from([None, 4 * local_heads, 12 * local_heads, local_dim]))
    return LM_BASE | {
        "vocab_size": draw(st.sampled_from([32, 64])),
        "hidden_size": draw(st.sampled_from([16, 32])),
        "intermediate_size": draw(st.sampled_from([16, 40])),
        "num_hidden_layers": draw(st.integers(1, 2)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": draw(st.sampled_from([4, 8])),
        "rope_theta": draw(st.sampled_from([10000.0, 1000000.0])),
        "tie_word_embeddings": draw(st.booleans()),
        "speech_vocab_size": "-".join(map(str, vocabs)),
        "speech_zeroemb_idx": "-".join(map(str, empties)),
        "delay_pattern": "-".join(map(str, delays)),
        "group_size": draw(st.integers(1, 4)),
        "audio_channels": channels,
        "local_dim": local_dim,
        "local_layers": draw(st.integers(1, 2)),
        "local_attn_heads": local_heads,
        "local_ffn_dim": draw(st.sampled_from([16, 24])),
        "input_local_layers": draw(st.integers(1, 2)),
        "input_local_dim": input_local_dim,
        "input_full_attention": draw(st.sampled_from([True, False, None])),
    }


def lm_configs() -> st.SearchStrategy[LMConfig]:
    """Any small valid :class:`LMConfig` (see :func:`lm_config_dicts`); each one compiles anew."""
    return lm_config_dicts().map(lambda d: lm_config_from_dict(d, Path("<strategies lm_configs>")))


def special_tokens(cfg: LMConfig) -> SpecialTokens:
    """Special ids at the top of the text vocabulary (``<|empty|>`` is ``vocab_size - 1``), as the benchmark uses."""
    return synthetic_special(cfg.vocab_size)


WEIGHTS = ("probing", "plain")
"""Random-weight styles of :func:`lm_params` / :func:`audio_params`: ``"probing"`` (:func:`probing_params`, the
default) or ``"plain"`` (:func:`mimo_ref.random_weights.random_params`: N(0, 0.02) matrices, unit norm scales,
zero biases; what a benchmark needs, and blind to the bugs listed in :func:`probing_params`)."""

QK_GAIN = 2.0
"""q_proj / k_proj weights are N(0, (QK_GAIN / sqrt(fan_in))^2): attention scores of unit-scale inputs then have a
standard deviation of about QK_GAIN^2 = 4, so softmax is peaked (N(0, 0.02) weights give scores near 0 and
uniform attention, which hides position and head-pairing bugs)."""

ISTFT_LOG_MAGNITUDE_MEAN = 1.5
"""Mean of the ISTFT head's log-magnitude bias: with the head's weights at gain 2, about 7% of the log-magnitudes
pass log(1e2) = 4.6, so the official magnitude clip (:data:`mimo_ref.audio.vocoder.MAX_MAGNITUDE`) is exercised."""


def probing_params(shapes: dict[str, tuple[int, ...]], seed: int, dtype=jnp.float32) -> dict:
    """Random weights for a weight spec, at scales that make a port's bugs visible to a float32 comparison.

    - norm scales (``*norm.weight``: RMSNorm, LayerNorm, GroupNorm) ~ U(0.5, 1.5), each norm its own: a swapped or
      dropped norm changes the output (with unit scales a dropped final RMSNorm before an argmax changes nothing);
    - biases ~ N(0, 0.3^2) (q/k/v/out, fc, conv, LayerNorm biases): a dropped bias changes the output;
    - matrices ~ N(0, 1 / fan_in) (activations stay O(1) through the layers), except q_proj / k_proj at
      :data:`QK_GAIN` (peaked attention: RoPE positions, head pairing and masks matter);
    - embedding tables (``embed_tokens``, ``speech_embeddings``) ~ N(0, 1);
    - the vocoder's ISTFT head (``head.out``) at gain 2, its log-magnitude bias ~ N(1.5, 0.5^2) (see
      :data:`ISTFT_LOG_MAGNITUDE_MEAN`) and its phase bias ~ N(0, 1).

    fan_in: ``in`` of a ``Linear`` ``[out, in]``, ``in * k`` of a ``Conv1d`` ``[out, in, k]``, ``in`` of a
    ``ConvTranspose1d`` ``[in, out, k]``. Deterministic in ``seed``.
    """
    from mimo_ref.checkpoint import nest

    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("head.out.bias"):  # [n_fft + 2]: log-magnitude half, then phase half
            half = shape[0] // 2
            value = np.concatenate(
                [rng.normal(ISTFT_LOG_MAGNITUDE_MEAN, 0.5, half), rng.standard_normal(shape[0] - half)]
            )
        elif name.endswith(".bias"):
            value = rng.normal(0.0, 0.3, shape)
        elif name.endswith("embed_tokens.weight") or ".speech_embeddings." in f".{name}":
            value = rng.standard_normal(shape)
        else:
            if len(shape) == 3 and ".dconv" in name:  # ConvTranspose1d [in, out, k]
                fan_in = shape[0]
            elif len(shape) == 3:  # Conv1d [out, in, k]
                fan_in = shape[1] * shape[2]
            else:  # Linear [out, in]
                fan_in = shape[-1]
            gain = QK_GAIN if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
            gain = 2.0 if name.endswith("head.out.weight") else gain
            value = rng.standard_normal(shape) * (gain / math.sqrt(fan_in))
        flat[name] = jnp.asarray(value.astype(np.float32), dtype)
    return nest(flat)


def weight_values(shapes: dict[str, tuple[int, ...]], seed: int, dtype, weights: str) -> dict:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "plain":
        return random_params(shapes, seed, dtype)
    return probing_params(shapes, seed, dtype)


def lm_params(cfg: LMConfig, seed: int, dtype=jnp.float32, *, weights: str = "probing") -> dict:
    """Random LM params of exactly ``lm.param_shapes(cfg)`` (``weights``: :data:`WEIGHTS`, default
    :func:`probing_params`), with ``lm_head`` sharing the text embedding when tied, as :func:`mimo_ref.lm.load_lm`
    does."""
    params = weight_values(lm.param_shapes(cfg), seed, dtype, weights)
    if cfg.tie_word_embeddings:
        params["lm_head"] = {"weight": params["model"]["embed_tokens"]["weight"]}
    return params


def cast_params(params: dict, dtype) -> dict:
    """Every floating leaf cast to ``dtype`` (float64 needs ``jax.enable_x64(True)`` around the call and use)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


# ---------------------------------------------------------------------------------------------------------------
# LM inputs
# ---------------------------------------------------------------------------------------------------------------

GROUP_KINDS = ("text", "speech", "speech_with_empty_ids")
"""Group kinds of :func:`input_ids`: a text group (text id != ``<|empty|>``), a speech group, and a speech group
where about half of the speech ids are their channel's empty id."""


def make_input_ids(cfg: LMConfig, empty_id: int, kinds: list[list[str]], seed: int) -> np.ndarray:
    """``input_ids`` ``[B, C+1, T*G]`` int32 for group ``kinds`` ``[B][T]`` (names from :data:`GROUP_KINDS`).

    Text groups draw a text id other than ``empty_id`` and speech ids that are either the channels' empty ids (as
    official prompts hold) or random (ignored: a property checks it). Text columns 1..G-1 of every group hold -100,
    a copy of column 0, or a random id (all ignored officially). Speech ids are valid ids of their channel.
    """
    rng = np.random.default_rng(seed)
    b, t = len(kinds), len(kinds[0])
    g, c = cfg.group_size, cfg.audio_channels
    empties = np.asarray(cfg.speech_empty_ids)
    ids = np.empty((b, c + 1, t, g), np.int64)  # [B, C+1, T, G], reshaped at the end
    for row in range(b):
        for group, kind in enumerate(kinds[row]):
            if kind == "text":
                text = int(rng.integers(0, cfg.vocab_size - 1))
                text = text if text < empty_id else text + 1  # any id but <|empty|>
                random_speech = bool(rng.integers(0, 2))
            else:
                text = empty_id
                random_speech = True
            ids[row, 0, group, 0] = text
            rest = rng.choice(["ignored", "copy", "random"])
            if rest == "ignored":
                ids[row, 0, group, 1:] = IGNORED_TEXT_ID
            elif rest == "copy":
                ids[row, 0, group, 1:] = text
            else:
                ids[row, 0, group, 1:] = rng.integers(0, cfg.vocab_size, size=g - 1)
            for ch in range(c):
                if random_speech:
                    ids[row, ch + 1, group] = rng.integers(0, cfg.speech_vocab_sizes[ch], size=g)
                else:
                    ids[row, ch + 1, group] = empties[ch]
            if kind == "speech_with_empty_ids":
                sprinkle = rng.random((c, g)) < 0.5  # [C, G]
                ids[row, 1:, group] = np.where(sprinkle, empties[:, None], ids[row, 1:, group])
    return ids.reshape(b, c + 1, t * g).astype(np.int32)  # [B, C+1, T, G] -> [B, C+1, T*G]


@st.composite
def group_kinds(draw, *, batch: int, groups: int) -> list[list[str]]:
    """Group kinds ``[B][T]`` (see :data:`GROUP_KINDS`); shrinks towards all-text."""
    row = st.lists(st.sampled_from(GROUP_KINDS), min_size=groups, max_size=groups)
    return [draw(row) for _ in range(batch)]


@st.composite
def input_ids(draw, cfg: LMConfig, empty_id: int, *, batch: int, groups: int) -> np.ndarray:
    """Valid ``input_ids`` ``[B, C+1, T*G]`` int32: text groups, speech groups, empty ids sprinkled, -100 and other
    ignored values at text columns 1..G-1 (see :func:`make_input_ids`)."""
    kinds = draw(group_kinds(batch=batch, groups=groups))
    return make_input_ids(cfg, empty_id, kinds, draw(seeds()))


def prompt_list(cfg: LMConfig, empty_id: int, kinds: list[list[str]], seed: int) -> list[np.ndarray]:
    """Prompts for :func:`mimo_ref.generate.generate`: one ``[C+1, T_b*G]`` array per row of ``kinds`` (rows may
    differ in length)."""
    return [make_input_ids(cfg, empty_id, [row], seed + i)[0] for i, row in enumerate(kinds)]


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def sampler_configs(*, do_sample: bool | None = None) -> st.SearchStrategy[SamplerConfig]:
    """A :class:`SamplerConfig`, stages on and off (top_k 0/None and top_p outside (0, 1] disable a stage)."""
    return st.builds(
        SamplerConfig,
        do_sample=st.booleans() if do_sample is None else st.just(do_sample),
        temperature=st.sampled_from([None, 0.3, 1.0, 2.0]),
        top_k=st.sampled_from([None, 0, 1, 3, 10]),
        top_p=st.sampled_from([None, 0.0, 0.3, 0.9, 1.0, 1.5]),
    )


def make_logits(shape: tuple[int, ...], seed: int, *, ties: bool) -> np.ndarray:
    """float32 logits from a seed: normal values, or (``ties``) few distinct values so that ties are common."""
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(-3, 4, size=shape).astype(np.float32)
    return (rng.standard_normal(shape) * 3.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Audio tokenizer configs
# ---------------------------------------------------------------------------------------------------------------

AUDIO_BASE: dict[str, Any] = {
    "sampling_rate": 4000,
    "n_mels": 16,
    "nfft": 64,
    "hop_length": 16,
    "window_size": 64,
    "fmin": 0,
    "fmax": None,
    "d_model": 16,
    "kernel_size": 3,
    "stride_size": 2,
    "avg_pooler": 2,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "encoder_skip_layer_id": 1,
    "encoder_causal": False,
    "encoder_attn_window_size": [-1, -1],
    "num_quantizers": 4,
    "codebook_size": [32, 16, 8, 8],
    "decoder_layers": 2,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "decoder_kernel_size": 3,
    "decoder_stride_size": 2,
    "decoder_causal": True,
    "decoder_attn_window_size": [-1, -1],
    "vocoder_dim": 16,
    "vocoder_intermediate_dim": 32,
    "vocoder_num_layers": 2,
    "vocoder_attention_heads": 2,
    "vocoder_attn_window_size": [40, 10],
    "rope_theta": 10000.0,
    "ln_type": "LayerNorm",
    "activation_function": "gelu",
    "rope_type": "default",
    "position_embedding_type": "rope",
    "vocoder_padding": "same",
}
"""A tiny tokenizer ``config.json`` (real key names) with a small mel front end (16 bins, n_fft 64, hop 16)."""

REAL_MEL = {"sampling_rate": 24000, "n_mels": 128, "nfft": 960, "hop_length": 240, "window_size": 960}
"""The real tokenizer's mel front end: one code frame is 240 * 2 * 2 = 960 samples."""

AUDIO_CORNER_DICTS: dict[str, dict[str, Any]] = {
    # Real mel front end and real attention layout (full-attention encoder, causal decoder, vocoder window
    # [40, 10]); a codebook list shorter than num_quantizers (official: extended with its last size).
    "real_mel": REAL_MEL | {"num_quantizers": 5, "codebook_size": [64, 32, 16]},
    # Small mel front end with a window shorter than n_fft, a causal windowed encoder without skip connection,
    # a windowed causal decoder, a small vocoder window and other head counts.
    "windowed_causal": {
        "window_size": 48,
        "d_model": 24,
        "encoder_causal": True,
        "encoder_attn_window_size": [4, -1],
        "encoder_skip_layer_id": None,
        "num_quantizers": 3,
        "codebook_size": [16, 8, 8],
        "decoder_attention_heads": 4,
        "decoder_attn_window_size": [6, -1],
        "vocoder_dim": 8,
        "vocoder_attn_window_size": [3, 1],
    },
}


def audio_config(overrides: dict[str, Any] | None = None, *, name: str = "audio") -> AudioTokenizerConfig:
    """An :class:`AudioTokenizerConfig` from :data:`AUDIO_BASE` updated with ``overrides`` (``config.json`` keys)."""
    return audio_config_from_dict(AUDIO_BASE | (overrides or {}), Path(f"<strategies {name}>"))


AUDIO_CORNERS = {name: audio_config(d, name=name) for name, d in AUDIO_CORNER_DICTS.items()}


def audio_corner_configs() -> st.SearchStrategy[AudioTokenizerConfig]:
    """One of :data:`AUDIO_CORNERS` (a fixed list, so compiled functions are reused)."""
    return st.sampled_from(list(AUDIO_CORNERS.values()))


WINDOWS = [(-1, -1), (3, 2), (4, -1), (0, 0), (-1, 2), (40, 10)]
"""Attention windows ``(left, right)`` (flash-attn semantics: -1 unbounded) drawn by :func:`audio_config_dicts`."""


@st.composite
def audio_config_dicts(draw) -> dict[str, Any]:
    """A valid tokenizer ``config.json`` dict, every field drawn from a small set (even head dims: RoPE).

    The conv stem keeps the real kernel 3 / stride 2 (the code-length formula of the docs assumes them); the
    decoder's transposed conv draws kernel >= stride.
    """
    front = draw(
        st.sampled_from(
            [
                {},
                {"window_size": 48},
                {"nfft": 32, "hop_length": 8, "window_size": 32, "n_mels": 8, "sampling_rate": 8000},
                REAL_MEL,
            ]
        )
    )
    d_model, enc_heads, dec_heads = draw(st.sampled_from([(16, 2, 4), (24, 2, 3), (8, 1, 2), (16, 4, 2)]))
    vocoder_dim, vocoder_heads = draw(st.sampled_from([(16, 2), (8, 2), (12, 1)]))
    enc_layers = draw(st.integers(1, 3))
    levels = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 32), min_size=1, max_size=levels))
    dec_kernel = draw(st.sampled_from([2, 3, 4]))
    return (
        AUDIO_BASE
        | front
        | {
            "d_model": d_model,
            "encoder_layers": enc_layers,
            "encoder_attention_heads": enc_heads,
            "encoder_skip_layer_id": draw(st.sampled_from([None, *range(1, enc_layers + 1)])),
            "encoder_causal": draw(st.booleans()),
            "encoder_attn_window_size": list(draw(st.sampled_from(WINDOWS))),
            "avg_pooler": draw(st.sampled_from([2, 3])),
            "num_quantizers": levels,
            "codebook_size": sizes,
            "decoder_layers": draw(st.integers(1, 2)),
            "decoder_attention_heads": dec_heads,
            "decoder_kernel_size": dec_kernel,
            "decoder_causal": draw(st.booleans()),
            "decoder_attn_window_size": list(draw(st.sampled_from(WINDOWS))),
            "vocoder_dim": vocoder_dim,
            "vocoder_attention_heads": vocoder_heads,
            "vocoder_num_layers": draw(st.integers(1, 2)),
            "vocoder_attn_window_size": list(draw(st.sampled_from(WINDOWS))),
        }
    )


def audio_configs() -> st.SearchStrategy[AudioTokenizerConfig]:
    """Any small valid tokenizer config (see :func:`audio_config_dicts`); each one compiles anew."""
    return audio_config_dicts().map(lambda d: audio_config_from_dict(d, Path("<strategies audio_configs>")))


def audio_params(cfg: AudioTokenizerConfig, seed: int, dtype=jnp.float32, *, weights: str = "probing") -> dict:
    """Random tokenizer params of exactly ``param_shapes(cfg)``.

    ``weights`` (:data:`WEIGHTS`): :func:`probing_params` by default (non-unit norm scales, non-zero biases,
    peaked attention, ISTFT magnitudes past the clip), or ``"plain"`` (N(0, 0.02) weights, unit norm weights, zero
    biases); in both, the two
    tensors that are not learned weights set as a checkpoint holds them: the ISTFT window is the periodic Hann
    buffer (a random window would make the envelope division meaningless), and the RVQ codebooks are N(0, 1)
    (the scale of the LayerNorm'd features they quantize) and stay float32 in every dtype (official
    ``quantizer.float()``; bf16-rounded first in a bf16 run, as :func:`mimo_ref.audio.load_audio_tokenizer` does).
    """
    shapes = audio_param_shapes(cfg)
    params = weight_values(shapes, seed, dtype, weights)
    params["decoder"]["vocoder"]["head"]["istft"]["window"] = jnp.asarray(periodic_hann(cfg.nfft), dtype)
    rng = np.random.default_rng(seed + 1)
    for level, size in enumerate(cfg.codebook_sizes):
        embed = rng.standard_normal((size, cfg.d_model)).astype(np.float32)
        if jnp.dtype(dtype) == jnp.bfloat16:
            embed = np.asarray(jnp.asarray(embed, jnp.bfloat16).astype(jnp.float32))
        params["encoder"]["quantizer"]["vq"]["layers"][level]["_codebook"]["embed"] = jnp.asarray(embed)
    return params


def cast_audio_params(params: dict, dtype) -> dict:
    """:func:`cast_params` except the RVQ codebooks, which stay float32 (official)."""
    vq = params["encoder"]["quantizer"]["vq"]
    out = cast_params(params, dtype)
    out["encoder"]["quantizer"]["vq"] = vq
    return out


# ---------------------------------------------------------------------------------------------------------------
# Audio inputs
# ---------------------------------------------------------------------------------------------------------------


def make_waveform(num_samples: int, seed: int, *, sample_rate: int) -> np.ndarray:
    """A float32 mono wave in [-1, 1]: a few random sines plus noise, from a seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    wave = np.zeros(num_samples)
    for _ in range(3):
        freq = rng.uniform(50.0, sample_rate / 2.5)
        wave += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    wave += rng.uniform(0.0, 0.1) * rng.standard_normal(num_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


@st.composite
def waveforms(draw, cfg: AudioTokenizerConfig, *, max_frames: int = 64) -> np.ndarray:
    """A float32 wave at ``cfg.sampling_rate`` giving 2..``max_frames`` mel frames (``samples // hop + 1``).

    Corners are drawn on purpose: the fewest and the most frames, and lengths that are a multiple of the hop, one
    sample past it or one sample short of the next (a frame count is reached by up to ``hop`` different lengths).
    The shortest waves are just above ``n_fft // 2`` samples (the centered STFT's reflect padding needs more).
    """
    hop = cfg.hop_length
    frames = draw(st.sampled_from([2, max_frames]) | st.integers(2, max_frames))
    offset = draw(st.sampled_from([0, 1, hop - 1]) | st.integers(0, hop - 1))  # samples past (frames - 1) * hop
    num_samples = max(cfg.nfft // 2 + 1, (frames - 1) * hop + offset)
    return make_waveform(num_samples, draw(seeds()), sample_rate=cfg.sampling_rate)


def mel_lengths(*, max_frames: int = 64, min_segments: int = 1, max_segments: int = 3) -> st.SearchStrategy[list[int]]:
    """Mel-frame lengths of packed segments (odd and even, equal and unequal, down to 1 frame). A fixed number of
    segments (``min_segments == max_segments``) keeps the encoder's batch shape, hence its compile, fixed."""
    return st.lists(st.integers(1, max_frames), min_size=min_segments, max_size=max_segments)


def make_mels(cfg: AudioTokenizerConfig, frames: int, seed: int) -> np.ndarray:
    """Log-mel-like features ``[frames, M]`` float32 from a seed (values around the real log-mel range)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((frames, cfg.n_mels)) * 2.0 - 4.0).astype(np.float32)


def make_codes(sizes: tuple[int, ...], frames: int, seed: int) -> np.ndarray:
    """Valid codes ``[len(sizes), frames]`` int32: level q in ``0..sizes[q]-1``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, frames) for size in sizes]).astype(np.int32)


def code_frames(mel_frames: int) -> int:
    """Code frames of a segment of ``mel_frames`` (real conv stem and pooler): ``ceil(((L - 1) // 2 + 1) / 2)``."""
    return math.ceil(((mel_frames - 1) // 2 + 1) / 2)


# ---------------------------------------------------------------------------------------------------------------
# Cases of the reference entries (mimo_ref.testing.entries)
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def cached_lm_params(cfg: LMConfig, seed: int, weights: str = "probing") -> dict:
    """:func:`lm_params` kept for reuse across examples (params are not modified by the entries)."""
    return lm_params(cfg, seed, weights=weights)


@functools.lru_cache(maxsize=16)
def cached_audio_params(cfg: AudioTokenizerConfig, seed: int, weights: str = "probing") -> dict:
    """:func:`audio_params` kept for reuse across examples."""
    return audio_params(cfg, seed, weights=weights)


@st.composite
def patch_decoder_cases(
    draw, *, batch: int = 1, weights: str = "probing", configs: st.SearchStrategy[LMConfig] | None = None
) -> dict[str, Any]:
    """Cases of :func:`mimo_ref.testing.entries.patch_decoder_outputs`: ``{"params", "local_hidden", "cfg"}``.

    An LM corner config (:data:`LM_CORNERS`, or from ``configs``), params from one of 4 seeds (``weights``,
    default probing), and a patch-decoder input ``[batch, Dl]`` ~ N(0, 1) float32 (the scale of
    ``hidden_states_downcast`` of a normed hidden state) from a drawn seed.
    """
    cfg = draw(configs if configs is not None else lm_corner_configs())
    params = cached_lm_params(cfg, draw(st.integers(0, 3)), weights)
    rng = np.random.default_rng(draw(seeds()))
    local_hidden = rng.standard_normal((batch, cfg.local_dim)).astype(np.float32)
    return {"params": params, "local_hidden": local_hidden, "cfg": cfg}


@st.composite
def codes_to_wave_cases(
    draw,
    *,
    weights: str = "probing",
    configs: st.SearchStrategy[AudioTokenizerConfig] | None = None,
    frames: st.SearchStrategy[int] | None = None,
) -> dict[str, Any]:
    """Cases of :func:`mimo_ref.testing.entries.codes_to_wave_outputs`: ``{"params", "codes", "cfg"}``.

    A tokenizer corner config (:data:`AUDIO_CORNERS`, or from ``configs``), params from one of 4 seeds
    (``weights``, default probing: about 7% of the ISTFT log-magnitudes pass the clip), and valid codes of 3 levels
    (the sum of several codebooks) and 3 or 8 frames (or from ``frames``; few lengths, so a compiled port is
    reused).
    """
    cfg = draw(configs if configs is not None else audio_corner_configs())
    params = cached_audio_params(cfg, draw(st.integers(0, 3)), weights)
    levels = min(3, cfg.num_quantizers)
    frames = draw(frames if frames is not None else st.sampled_from([3, 8]))
    codes = make_codes(tuple(cfg.codebook_sizes[:levels]), frames, draw(seeds()))
    return {"params": params, "codes": codes, "cfg": cfg}
