"""Loading a MiMo-Audio-Tokenizer checkpoint (a folder or a Hugging Face repo id) into params + config."""

from __future__ import annotations

import dataclasses
import os
import re

from mimo_ref.audio.config import AudioTokenizerConfig, load_audio_config, param_shapes
from mimo_ref.checkpoint import load_params, resolve_checkpoint
from mimo_ref.layers import Params
from mimo_ref.precision import Precision, resolve_precision

# RVQ training state of the official EuclideanCodebook (EMA statistics and the k-means flag): inference never
# reads them, so the loader skips exactly these names and nothing else.
RVQ_TRAINING_BUFFER = re.compile(r"encoder\.quantizer\.vq\.layers\.\d+\._codebook\.(cluster_size|embed_avg|inited)")


def is_rvq_training_buffer(name: str) -> bool:
    """True for the RVQ training buffers ``cluster_size``, ``embed_avg`` and ``inited`` of any level."""
    return RVQ_TRAINING_BUFFER.fullmatch(name) is not None


def load_audio_tokenizer(
    path_or_repo_id: str | os.PathLike, precision: str | Precision = "float32", *, place=None
) -> tuple[Params, AudioTokenizerConfig]:
    """Load a tokenizer checkpoint: ``(params, cfg)``.

    ``path_or_repo_id``: a folder with ``config.json`` and ``model.safetensors`` (or shards + index), or a Hugging
    Face repo id such as ``XiaomiMiMo/MiMo-Audio-Tokenizer``. ``precision``: a preset of :mod:`mimo_ref.precision`
    ("float32" default, "float64" (needs x64 mode), "bfloat16", "official"), a ``Precision`` or a dtype; the
    returned ``cfg.compute_dtype`` / ``cfg.bf16_buffers`` record it. The RVQ always computes in float32 (the
    official code quantizes in float32); with bf16 weights its codebooks hold bf16-rounded values, as the official
    bf16 model holds them.
    Loading is strict: a missing tensor, an unexpected one or a wrong shape raises
    :class:`mimo_ref.checkpoint.CheckpointError`; a broken config raises :class:`mimo_ref.config.ConfigError`.
    Params are nested dicts keyed like the checkpoint (``params["encoder"]["layers"][0]["fc1"]["weight"]``).
    ``place``: see :func:`mimo_ref.checkpoint.load_params` (:func:`mimo_ref.sharding.placer` for a mesh).
    """
    folder = resolve_checkpoint(path_or_repo_id, what="audio tokenizer checkpoint")
    cfg = load_audio_config(folder)
    shapes = param_shapes(cfg)
    precision = resolve_precision(precision)
    cfg = dataclasses.replace(cfg, compute_dtype=precision.compute, bf16_buffers=precision.bf16_buffers)
    # Codebooks follow the same storage rule: an official bf16 run's `model.bfloat16()` rounds them and the
    # encoder's `quantizer.float()` restores only their dtype, so the RVQ (always float32, upcast at use in
    # rvq.py) runs on bf16-rounded codewords.
    params = load_params(folder, shapes, precision, ignored=is_rvq_training_buffer, place=place)
    return params, cfg
