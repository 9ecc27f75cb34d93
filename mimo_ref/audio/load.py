"""Loading a MiMo-Audio-Tokenizer checkpoint (a folder or a Hugging Face repo id) into params + config."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp

from mimo_ref.audio.config import AudioTokenizerConfig, load_audio_config, param_shapes
from mimo_ref.checkpoint import load_params, resolve_checkpoint, resolve_dtype
from mimo_ref.layers import Params

# RVQ training state of the official EuclideanCodebook (EMA statistics and the k-means flag): inference never
# reads them, so the loader skips exactly these names and nothing else.
RVQ_TRAINING_BUFFER = re.compile(r"encoder\.quantizer\.vq\.layers\.\d+\._codebook\.(cluster_size|embed_avg|inited)")


def is_rvq_training_buffer(name: str) -> bool:
    """True for the RVQ training buffers ``cluster_size``, ``embed_avg`` and ``inited`` of any level."""
    return RVQ_TRAINING_BUFFER.fullmatch(name) is not None


def load_audio_tokenizer(path_or_repo_id: str | os.PathLike, dtype="float32") -> tuple[Params, AudioTokenizerConfig]:
    """Load a tokenizer checkpoint: ``(params, cfg)``.

    ``path_or_repo_id``: a folder with ``config.json`` and ``model.safetensors`` (or shards + index), or a Hugging
    Face repo id such as ``XiaomiMiMo/MiMo-Audio-Tokenizer``. ``dtype``: "float32" (default), "bfloat16" or
    "float64" (needs x64 mode). The RVQ codebooks stay float32 in every dtype (the official code quantizes in
    float32); in bfloat16 their values are rounded to bfloat16 first, as the official bf16 model holds them.
    Loading is strict: a missing tensor, an unexpected one or a wrong shape raises
    :class:`mimo_ref.checkpoint.CheckpointError`; a broken config raises :class:`mimo_ref.config.ConfigError`.
    Params are nested dicts keyed like the checkpoint (``params["encoder"]["layers"][0]["fc1"]["weight"]``).
    """
    folder = resolve_checkpoint(path_or_repo_id, what="audio tokenizer checkpoint")
    cfg = load_audio_config(folder)
    shapes = param_shapes(cfg)
    codebooks = [name for name in shapes if name.endswith("._codebook.embed")]
    params = load_params(folder, shapes, dtype, ignored=is_rvq_training_buffer, keep_float32=codebooks)
    if resolve_dtype(dtype) == jnp.bfloat16:
        # official bf16 run: `model.bfloat16()` rounds the codebook buffers too, and the encoder's
        # `quantizer.float()` restores only their dtype, so the RVQ runs in float32 on bf16-rounded codewords
        for level in params["encoder"]["quantizer"]["vq"]["layers"]:
            level["_codebook"]["embed"] = level["_codebook"]["embed"].astype(jnp.bfloat16).astype(jnp.float32)
    return params, cfg
