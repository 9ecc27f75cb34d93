"""The MiMo-Audio language model: input embedding, Qwen2 backbone, heads and the patch decoder.

Official: ``src/mimo_audio/modeling_mimo_audio.py`` (``MiMoAudioForCausalLM``) on top of transformers' Qwen2.

Data layout. ``input_ids`` is ``[B, C+1, T*G]``: row 0 holds text ids, rows 1..C the speech ids of each audio
channel; every G consecutive columns form one *group*, which is one backbone position. Only column 0 of a group's
text row is read. A group whose text id is ``<|empty|>`` is a *speech group*.

Flow of one forward (shapes for B sequences of T groups):

    input_ids [B, C+1, T*G]
      -> speech_embeddings_sum   [B, T, G, Di]   per-channel lookups summed in a bfloat16 buffer
      -> patch_encoder           [B, T, G, Di]   bidirectional Qwen2 stack over the G frames of each group
      -> speech_group_downcast   [B, T, D]       G*Di -> D
      +  text embedding          [B, T, D]       zero for <|empty|> groups
      -> backbone (Qwen2)        [B, T, D]       causal, KV cache
      -> lm_head (last position) [B, V]          text logits
      -> hidden_states_downcast  [B, Dl]         input of the patch decoder
      -> patch_decoder           [B, G, C]       speech tokens of the next group, delay pattern
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_ref import layers, sampling
from mimo_ref.checkpoint import load_params, resolve_checkpoint
from mimo_ref.config import LMConfig, QwenStackConfig, SpecialTokens, load_lm_config, load_special_tokens
from mimo_ref.precision import Precision, at_use, model_dtype, resolve_precision, upcast
from mimo_ref.tap import is_collecting, tap

Params = dict
KVCache = list  # one {"k": [B, S, K, H], "v": [B, S, K, H]} dict per layer


# ---------------------------------------------------------------------------------------------------------------
# Weight spec and loading
# ---------------------------------------------------------------------------------------------------------------


def qwen_stack_shapes(prefix: str, cfg: QwenStackConfig, *, embed_vocab: int | None) -> dict[str, tuple[int, ...]]:
    """Tensor names/shapes of one transformers ``Qwen2Model`` (q/k/v bias, no o_proj bias, final norm)."""
    d, n, k, h, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.norm.weight": (d,)}
    if embed_vocab is not None:
        shapes[f"{prefix}.embed_tokens.weight"] = (embed_vocab, d)
    for i in range(cfg.num_layers):
        p = f"{prefix}.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (d,),
            f"{p}.post_attention_layernorm.weight": (d,),
            f"{p}.self_attn.q_proj.weight": (n * h, d),
            f"{p}.self_attn.q_proj.bias": (n * h,),
            f"{p}.self_attn.k_proj.weight": (k * h, d),
            f"{p}.self_attn.k_proj.bias": (k * h,),
            f"{p}.self_attn.v_proj.weight": (k * h, d),
            f"{p}.self_attn.v_proj.bias": (k * h,),
            f"{p}.self_attn.o_proj.weight": (d, n * h),
            f"{p}.mlp.gate_proj.weight": (f, d),
            f"{p}.mlp.up_proj.weight": (f, d),
            f"{p}.mlp.down_proj.weight": (d, f),
        }
    return shapes


def param_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """The executable weight spec: every tensor name of a MiMo-Audio LM checkpoint and its shape."""
    d, dl, di, g = cfg.hidden_size, cfg.local_dim, cfg.input_local_dim, cfg.group_size
    shapes = qwen_stack_shapes("model", cfg.backbone, embed_vocab=cfg.vocab_size)
    # the two local stacks have their embed_tokens deleted by the official constructor
    shapes |= qwen_stack_shapes("local_transformer", cfg.local, embed_vocab=None)
    shapes |= qwen_stack_shapes("input_local_transformer", cfg.input_local, embed_vocab=None)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for c, vocab in enumerate(cfg.speech_vocab_sizes):
        shapes[f"local_transformer_lm_heads.{c}.weight"] = (vocab, dl)
        shapes[f"speech_embeddings.{c}.weight"] = (vocab, di)
    if di != dl:
        shapes["speech_embeddings_to_local.weight"] = (dl, di)
    shapes["speech_group_downcast.weight"] = (d, di * g)
    shapes["hidden_states_downcast.weight"] = (dl, d)
    return shapes


def load_lm(
    path_or_repo_id: str | Path, precision: str | Precision = "float32", *, place=None
) -> tuple[Params, LMConfig, SpecialTokens]:
    """Load a MiMo-Audio LM checkpoint (folder or HF repo id): ``(params, cfg, special_tokens)``.

    Every tensor is checked against :func:`param_shapes`; missing/unexpected/wrong-shaped tensors raise
    ``CheckpointError`` naming them. ``precision``: a preset of :mod:`mimo_ref.precision` (``"float32"`` default,
    ``"float64"`` (needs ``jax.config.update("jax_enable_x64", True)``), ``"bfloat16"``, ``"official"``), a
    :class:`~mimo_ref.precision.Precision` or a dtype. Weights stay in their checkpoint dtype when it is not wider
    than the compute dtype (a bf16 checkpoint run in float32 holds bf16 weights and upcasts at use); the
    returned ``cfg.compute_dtype`` records the compute dtype. ``place``: see :func:`mimo_ref.checkpoint.load_params`
    (:func:`mimo_ref.sharding.placer` puts each tensor's shards on a mesh).
    """
    precision = resolve_precision(precision)
    folder = resolve_checkpoint(path_or_repo_id, what="LM checkpoint")
    cfg = dataclasses.replace(load_lm_config(folder), compute_dtype=precision.compute)
    special = load_special_tokens(folder)
    params = load_params(folder, param_shapes(cfg), precision, place=place)
    if cfg.tie_word_embeddings:
        params["lm_head"] = {"weight": params["model"]["embed_tokens"]["weight"]}
    return params, cfg, special


# ---------------------------------------------------------------------------------------------------------------
# Qwen2 stack (backbone, patch encoder and patch decoder share it)
# ---------------------------------------------------------------------------------------------------------------


def qwen_attention(
    params: Params,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array,
    *,
    cfg: QwenStackConfig,
    cache: dict | None = None,
    write_pos: jax.Array | int = 0,
) -> tuple[jax.Array, dict | None]:
    """Qwen2 self-attention. x ``[B, T, D]``, cos/sin ``[B, T, H]``, mask ``[B, T, S]`` -> ``[B, T, D]``.

    Without a cache, S = T (keys are this call's positions). With a cache ``{"k", "v": [B, S, K, H]}``, this call's
    keys/values are written at slots ``write_pos..write_pos+T-1`` first and attention runs over all S slots.
    """
    b, t, _ = x.shape
    if "qkv_proj" in params:  # q, k, v as one product (the patch decoder's decode layout, :func:`decode_layout`)
        nq, nk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        q, k, v = jnp.split(layers.linear(params["qkv_proj"], x), [nq, nq + nk], axis=-1)  # [B, T, N*H + 2*K*H]
    else:
        q, k, v = (layers.linear(params[name], x) for name in ("q_proj", "k_proj", "v_proj"))  # [B, T, D] -> ...
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)  # [B, T, N*H] -> [B, T, N, H]
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)  # [B, T, K*H] -> [B, T, K, H]
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)  # [B, T, K*H] -> [B, T, K, H]
    q = layers.apply_rope(q, cos, sin)
    k = layers.apply_rope(k, cos, sin)
    if cache is not None:
        cache = {"k": layers.cache_write(cache["k"], k, write_pos), "v": layers.cache_write(cache["v"], v, write_pos)}
        k, v = cache["k"], cache["v"]  # [B, S, K, H]
    out = layers.attend(q, k, v, mask)  # -> [B, T, N, H]
    out = out.reshape(b, t, cfg.num_heads * cfg.head_dim)  # [B, T, N, H] -> [B, T, N*H]
    return layers.linear(params["o_proj"], out), cache  # [B, T, N*H] -> [B, T, D]


def qwen_layer(
    params: Params,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array,
    *,
    cfg: QwenStackConfig,
    cache: dict | None = None,
    write_pos: jax.Array | int = 0,
) -> tuple[jax.Array, dict | None]:
    """One pre-norm Qwen2 decoder layer: ``x + attn(norm(x))``, then ``+ mlp(norm(.))``. ``[B, T, D] -> [B, T, D]``.

    The residual adds follow type promotion, so a bfloat16 ``x`` entering a float32 stack becomes float32 after
    the first add, as in torch (this matters for the patch encoder, see :func:`patch_encoder`).
    """
    h = layers.rms_norm(params["input_layernorm"], x, eps=cfg.rms_norm_eps)
    attn, cache = qwen_attention(params["self_attn"], h, cos, sin, mask, cfg=cfg, cache=cache, write_pos=write_pos)
    x = x + attn
    h = layers.rms_norm(params["post_attention_layernorm"], x, eps=cfg.rms_norm_eps)
    return x + layers.swiglu_mlp(params["mlp"], h), cache


def qwen_stack(
    params: Params,
    x: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    *,
    cfg: QwenStackConfig,
    cache: KVCache | None = None,
    write_pos: jax.Array | int = 0,
    name: str = "qwen",
) -> tuple[jax.Array, KVCache | None]:
    """A transformers ``Qwen2Model`` on input embeddings: layers then the final RMSNorm.

    x ``[B, T, D]``, positions ``[B, T]`` (RoPE), mask ``[B, T, S]`` bool, optional per-layer cache -> ``[B, T, D]``.
    RoPE tables are computed once in float32 and cast to the dtype of ``x`` *as it enters the stack* (transformers
    derives them from ``inputs_embeds``), then reused by every layer. ``name``: prefix of the activation taps.
    """
    cos, sin = layers.rope_tables(positions, head_dim=cfg.head_dim, theta=cfg.rope_theta, dtype=x.dtype)
    new_cache = [] if cache is not None else None
    for i, layer_params in enumerate(params["layers"]):
        if not layers.reads_in_place(layer_params, x):  # one row: bf16 weights read as stored (layers.linear)
            layer_params = at_use(layer_params, x.dtype, x)  # bf16-stored weights upcast per layer (precision.py)
        layer_cache = cache[i] if cache is not None else None
        x, layer_cache = qwen_layer(layer_params, x, cos, sin, mask, cfg=cfg, cache=layer_cache, write_pos=write_pos)
        tap(f"{name}.layer{i}", x)
        if new_cache is not None:
            new_cache.append(layer_cache)
    return tap(f"{name}.norm", layers.rms_norm(params["norm"], x, eps=cfg.rms_norm_eps)), new_cache


def init_cache(cfg: QwenStackConfig, batch: int, length: int, dtype) -> KVCache:
    """A zeroed preallocated KV cache: per layer ``{"k", "v": [B, S, K, H]}`` with S = ``length``."""
    shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]


# ---------------------------------------------------------------------------------------------------------------
# Input embedding (official `_prepare_input_embeds`)
# ---------------------------------------------------------------------------------------------------------------


def split_groups(input_ids: jax.Array, *, cfg: LMConfig) -> tuple[jax.Array, jax.Array]:
    """input_ids ``[B, C+1, T*G]`` -> (text ids ``[B, T]`` = column 0 of each group, speech ids ``[B, T, C, G]``)."""
    b, _, length = input_ids.shape  # [B, C+1, T*G]
    g, c = cfg.group_size, cfg.audio_channels
    text = input_ids[:, 0, ::g]  # [B, T*G] -> [B, T]
    speech = input_ids[:, 1:, :].reshape(b, c, length // g, g)  # [B, C, T*G] -> [B, C, T, G]
    return text, speech.transpose(0, 2, 1, 3)  # [B, C, T, G] -> [B, T, C, G]


def compute_dtype(params: Params, cfg: LMConfig) -> jnp.dtype:
    """The LM's compute dtype: ``cfg.compute_dtype`` (set at load), or the dtype the params are held in."""
    return model_dtype(cfg.compute_dtype, params["model"]["embed_tokens"]["weight"])


def speech_embeddings_sum(params: Params, speech_ids: jax.Array, *, cfg: LMConfig) -> jax.Array:
    """Sum of the per-channel speech embeddings, accumulated in **bfloat16**. ``[B, T, C, G]`` -> ``[B, T, G, Di]``.

    Official: the accumulator is allocated as bfloat16 whatever the model dtype and each channel is added in place
    (``buf += emb_c``: computed in the promoted dtype, then rounded to bfloat16), channel 0 first. Ids equal to the
    channel's empty id contribute zero.
    """
    b, t, c, g = speech_ids.shape
    dtype = compute_dtype(params, cfg)
    buf = jnp.zeros((b, t, g, cfg.input_local_dim), jnp.bfloat16)
    for ch in range(c):
        ids = speech_ids[:, :, ch, :]  # [B, T, C, G] -> [B, T, G]
        table = params["speech_embeddings"][ch]["weight"]
        emb = layers.embedding(table, ids).astype(dtype)  # [B, T, G] -> [B, T, G, Di], in the model dtype
        emb = jnp.where((ids == cfg.speech_empty_ids[ch])[..., None], 0, emb)
        buf = (buf.astype(emb.dtype) + emb).astype(jnp.bfloat16)
    return tap("lm.speech_embeddings_sum", buf)


def patch_encoder(params: Params, speech_embeds: jax.Array, *, cfg: LMConfig) -> jax.Array:
    """Input local transformer over each group independently. ``[B, T, G, Di] -> [B, T, G, Di]``.

    Each group's G frames form one sequence (positions 0..G-1), bidirectional when ``input_full_attention``
    (official passes ``is_causal=not input_full_attention``). The input is the **bfloat16** sum from
    :func:`speech_embeddings_sum`, so, as in transformers: the RoPE tables of every layer are rounded to bfloat16,
    the first RMSNorm rounds its normalised value to bfloat16 before the weight multiplies it, and the first
    residual add uses the bfloat16 input. After that, activations are in the model dtype.
    """
    b, t, g, di = speech_embeds.shape
    x = speech_embeds.reshape(b * t, g, di)  # [B, T, G, Di] -> [B*T, G, Di]
    pos = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b * t, g))  # [B*T, G]
    mask = layers.attention_mask(pos, pos, causal=not cfg.input_full_attention)  # [B*T, G, G]
    # The stack's input is bf16 while the model computes wider: its weights are upcast to the compute dtype here
    # (type promotion alone would leave the first RMSNorm's weight multiply in bf16 for bf16-stored weights).
    stack = upcast(params["input_local_transformer"], compute_dtype(params, cfg))
    out, _ = qwen_stack(stack, x, pos, mask, cfg=cfg.input_local, name="lm.patch_encoder")
    return out.reshape(b, t, g, di)  # [B*T, G, Di] -> [B, T, G, Di]


def input_embeds(params: Params, input_ids: jax.Array, *, cfg: LMConfig, empty_id: int) -> jax.Array:
    """Official ``_prepare_input_embeds``: ``[B, C+1, T*G]`` ids -> ``[B, T, D]`` backbone input embeddings."""
    text, speech = split_groups(input_ids, cfg=cfg)  # [B, T], [B, T, C, G]
    b, t = text.shape
    is_speech = (text == empty_id)[:, :, None, None]  # [B, T] -> [B, T, 1, 1]
    speech_embeds = speech_embeddings_sum(params, speech, cfg=cfg)  # -> [B, T, G, Di] bfloat16
    speech_embeds = speech_embeds * is_speech.astype(speech_embeds.dtype)  # non-speech groups zeroed (still bf16)
    encoded = patch_encoder(params, speech_embeds, cfg=cfg)  # -> [B, T, G, Di] model dtype
    encoded = encoded * is_speech.astype(encoded.dtype)
    concatenated = encoded.reshape(b, t, -1)  # [B, T, G, Di] -> [B, T, G*Di]
    grouped = layers.linear(params["speech_group_downcast"], concatenated)  # [B, T, G*Di] -> [B, T, D]
    text_embeds = layers.embedding(params["model"]["embed_tokens"]["weight"], text)  # [B, T] -> [B, T, D]
    text_embeds = text_embeds.astype(compute_dtype(params, cfg))  # upcast at use (bf16-stored tables)
    text_embeds = jnp.where((text == empty_id)[..., None], 0, text_embeds)  # <|empty|> groups carry no text
    return tap("lm.input_embeds", text_embeds + grouped)


# ---------------------------------------------------------------------------------------------------------------
# Backbone and heads
# ---------------------------------------------------------------------------------------------------------------


def backbone(
    params: Params,
    embeds: jax.Array,
    positions: jax.Array,
    *,
    cfg: LMConfig,
    cache: KVCache | None = None,
    write_pos: jax.Array | int = 0,
    key_valid: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Qwen2 backbone (causal). embeds ``[B, T, D]``, positions ``[B, T]`` -> hidden ``[B, T, D]``, cache.

    Without a cache: causal attention over the T positions (``key_valid`` ``[B, T]`` masks padding keys).
    With a cache of S slots: this call occupies slots ``write_pos..write_pos+T-1``; a query at slot i sees slots
    ``<= i`` that are valid (``key_valid`` ``[B, S]``: False for left padding).
    """
    b, t, _ = embeds.shape
    q_slot = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + write_pos, (b, t))  # [B, T]
    s = t if cache is None else cache[0]["k"].shape[1]
    k_slot = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))  # [B, S]
    mask = layers.attention_mask(q_slot, k_slot, causal=True, k_valid=key_valid)  # [B, T, S]
    return qwen_stack(
        params["model"], embeds, positions, mask, cfg=cfg.backbone, cache=cache, write_pos=write_pos, name="lm.backbone"
    )


def heads(params: Params, last_hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Text logits and patch-decoder input from the last hidden state ``[B, D]`` -> (``[B, V]``, ``[B, Dl]``)."""
    logits = tap("lm.text_logits", layers.text_head(params["lm_head"], last_hidden))  # [B, D] -> [B, V]
    local_hidden = layers.linear(params["hidden_states_downcast"], last_hidden)  # [B, D] -> [B, Dl]
    return logits, tap("lm.local_hidden", local_hidden)


class StepOutput(NamedTuple):
    """What one LM step returns (:func:`step`).

    embeds / hidden ``[B, T, D]``: the backbone input and output (final RMSNorm included); logits ``[B, V]``
    and local_hidden ``[B, Dl]``: the text head and the patch-decoder input at the last position; cache: the KV
    cache after this step's writes (None without a cache).
    """

    embeds: jax.Array
    hidden: jax.Array
    logits: jax.Array
    local_hidden: jax.Array
    cache: KVCache | None


class ForwardOutput(NamedTuple):
    """:func:`forward`'s result: the fields of :class:`StepOutput` without a cache."""

    embeds: jax.Array  # [B, T, D]
    hidden: jax.Array  # [B, T, D]
    logits: jax.Array  # [B, V] at the last position
    local_hidden: jax.Array  # [B, Dl] at the last position


def step(
    params: Params,
    input_ids: jax.Array,
    positions: jax.Array,
    *,
    cfg: LMConfig,
    empty_id: int,
    cache: KVCache | None = None,
    write_pos: jax.Array | int = 0,
    key_valid: jax.Array | None = None,
) -> StepOutput:
    """The one LM step: input embedding -> backbone -> heads at the last position. Used by :func:`forward` (a whole
    sequence), by generation's prefill (padded prompts into a cache) and by its group step (one group).

    input_ids ``[B, C+1, T*G]``, positions ``[B, T]``; ``cache``, ``write_pos`` and ``key_valid`` as in
    :func:`backbone`.
    """
    embeds = input_embeds(params, input_ids, cfg=cfg, empty_id=empty_id)  # [B, C+1, T*G] -> [B, T, D]
    hidden, cache = backbone(
        params, embeds, positions, cfg=cfg, cache=cache, write_pos=write_pos, key_valid=key_valid
    )  # -> [B, T, D]
    logits, local_hidden = heads(params, hidden[:, -1])  # [B, D] -> [B, V], [B, Dl]
    return StepOutput(embeds, hidden, logits, local_hidden, cache)


def forward(params: Params, input_ids: jax.Array, *, cfg: LMConfig, empty_id: int) -> ForwardOutput:
    """Official ``forward`` on a full sequence (no padding, no cache, positions 0..T-1): :func:`step`.

    input_ids ``[B, C+1, T*G]`` -> :class:`ForwardOutput` (embeds, hidden, text logits and patch-decoder input at
    the last position).
    """
    b, t = input_ids.shape[0], input_ids.shape[-1] // cfg.group_size
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))  # [B, T]
    out = step(params, input_ids, positions, cfg=cfg, empty_id=empty_id)
    return ForwardOutput(out.embeds, out.hidden, out.logits, out.local_hidden)


# ---------------------------------------------------------------------------------------------------------------
# Patch decoder (official `local_forward`)
# ---------------------------------------------------------------------------------------------------------------

# choose(logits [B, Cg, V] of `channels` (Cg channels sharing one vocabulary of V), channels, step, keys [B])
#   -> tokens [B, Cg]
ChannelSampler = Callable[[jax.Array, tuple[int, ...], jax.Array, jax.Array], jax.Array]


class PatchDecoderTables(NamedTuple):
    """What the patch decoder reads at every step, prepared once per generate call (:func:`patch_decoder_tables`)."""

    # per group of channels sharing a vocabulary (speech_vocab_groups), their speech heads side by side, one Linear:
    # {"weight": [Cg * V, Dl]} or {"weight_t": [Dl, Cg * V]}
    group_heads: tuple[Params, ...]
    embeddings: jax.Array  # [C, Vmax, Dl]: the per-channel speech embeddings, padded to Vmax and stacked
    local: Params  # the local transformer, in its decode layout where that applies (:func:`decode_layout`)


def patch_decoder_tables(params: Params, *, cfg: LMConfig, rows: int = 1) -> PatchDecoderTables:
    """The patch decoder's weights as its steps read them, built once outside a decode loop.

    Heads: for each group of channels sharing a vocabulary size (:func:`speech_vocab_groups`), those channels'
    ``local_transformer_lm_heads`` side by side in channel order, one product per group, computed only at the steps
    where one of its channels emits (:func:`patch_decoder`): the real model's ``(0, 1)`` at 1025 entries (2.1 MB in
    float32 at Dl 256, read at steps 0-4) and ``(2, ..., 7)`` at 129 (0.8 MB, steps 2-10), 17.7 MB a group where
    every head at every step read 31.8 MB. Embeddings: per channel, padded to the largest
    vocab and stacked (already projected to the local width when ``input_local_dim != local_dim``). Both are built
    in the compute dtype (upcast at use). Local: the local transformer, in :func:`decode_layout` for ``rows`` rows (the
    batch) on CPU where its weights are held in the compute dtype (as stored otherwise: bfloat16-held layers are
    upcast or read in place per step, ``qwen_stack``); each group's heads are held input-major on CPU by the same rule.
    Same products, summed in another float32 order.
    """
    vmax = max(cfg.speech_vocab_sizes)
    dtype = compute_dtype(params, cfg)
    on_cpu = jax.default_backend() == "cpu"
    heads_, embs = [], []
    for c, vocab in enumerate(cfg.speech_vocab_sizes):
        heads_.append(params["local_transformer_lm_heads"][c]["weight"].astype(dtype))  # [Vc, Dl]
        e = params["speech_embeddings"][c]["weight"].astype(dtype)  # [Vc, Di]
        if "speech_embeddings_to_local" in params:
            e = layers.linear(upcast(params["speech_embeddings_to_local"], dtype), e)  # [Vc, Di] -> [Vc, Dl]
        embs.append(jnp.pad(e, ((0, vmax - vocab), (0, 0))))  # [Vc, Dl] -> [Vmax, Dl]
    group_heads = []
    for channels, _ in speech_vocab_groups(cfg):
        heads = {"weight": jnp.concatenate([heads_[ch] for ch in channels])}  # [Cg * V, Dl]
        if on_cpu and (rows > 1 or layers.wide_output(heads)):
            heads = layers.input_major(heads)
        group_heads.append(heads)
    local = params["local_transformer"]
    if on_cpu and all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(local)):
        local = decode_layout(local, rows=rows)
    return PatchDecoderTables(tuple(group_heads), jnp.stack(embs), local)


def decode_layout(stack: Params, *, rows: int = 1) -> Params:
    """A Qwen2 stack as a one-position decode step of ``rows`` rows reads it fastest on CPU (the patch decoder's
    local transformer, read whole at each of its sequential steps). Per layer: ``q_proj``, ``k_proj``, ``v_proj``
    become one product, ``qkv_proj`` (:func:`qwen_attention`), where their outputs together are wider than the
    input; products are held input-major (``mimo_ref/layers.py::input_major``, which gives the measured reason):
    for one row those whose output is wider than the input (the fused q/k/v, ``gate_proj``, ``up_proj``), for
    several rows all of them; the rest and the norms are kept as stored. The values are the checkpoint's; the
    products are the same sums in another float32 order. Measured in the decode loop: docs/performance.md,
    "Weights held input-major".
    """

    def held(*linears: Params) -> Params:
        return layers.input_major(*linears) if rows > 1 or layers.wide_output(*linears) else linears[0]

    out = []
    for layer in stack["layers"]:
        attn, mlp = layer["self_attn"], layer["mlp"]
        qkv = (attn["q_proj"], attn["k_proj"], attn["v_proj"])
        if layers.wide_output(*qkv):
            attn = {"qkv_proj": layers.input_major(*qkv), "o_proj": held(attn["o_proj"])}
        mlp = {name: held(mlp[name]) for name in ("gate_proj", "up_proj", "down_proj")}
        out.append(layer | {"self_attn": attn, "mlp": mlp})
    return stack | {"layers": out}


# The text head in its decode layout, made once per loaded weight: id(weight) -> (weakref to it, the layout).
_TEXT_HEAD_LAYOUTS: dict[int, tuple[weakref.ref, Params]] = {}


def text_head_decode_layout(params: Params, *, cfg: LMConfig, rows: int) -> Params:
    """``params`` with ``lm_head`` as a decode step of ``rows`` rows reads it fastest: on CPU, for one row, where the
    head is held in the compute dtype, input-major (``{"weight_t": [D, V]}``, ``layers.input_major``: the head's
    output is wider than its input, the rule :func:`decode_layout` follows); otherwise ``params`` itself.

    Called outside the jitted loop (``mimo_ref/generate.py::generate``): the transposed copy is made once per
    ``lm_head`` weight array and kept while that array lives, so a loaded model pays it at its first generation
    (small preset, 310 MB: 108-120 ms) and holds the head twice from then on. Same products, summed in another
    float32 order. Measured in the decode loop (docs/performance.md, "The text head held input-major"): a
    text group 17.8 ms against 21.8 (median of 8), small preset, float32, batch 1; for 2 to 32 rows the stored
    head read by ``layers.text_head``'s rows-inner form is faster, so it stays.
    """
    head = params["lm_head"]
    w = head["weight"]
    if jax.default_backend() != "cpu" or rows != 1 or w.dtype != compute_dtype(params, cfg):
        return params
    entry = _TEXT_HEAD_LAYOUTS.get(id(w))
    if entry is None or entry[0]() is not w:
        layout = jax.jit(layers.input_major)(head)  # [V, D] -> {"weight_t": [D, V]} (and the bias, if any)
        key = id(w)
        entry = (weakref.ref(w, lambda _: _TEXT_HEAD_LAYOUTS.pop(key, None)), layout)
        _TEXT_HEAD_LAYOUTS[key] = entry
    return params | {"lm_head": entry[1]}


def speech_vocab_groups(cfg: LMConfig) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Channels sharing a speech vocabulary size: ``((channels, V), ...)`` in order of first appearance. The real
    model: channels 0-1 with 1025 entries, channels 2-7 with 129."""
    groups: dict[int, list[int]] = {}
    for c, vocab in enumerate(cfg.speech_vocab_sizes):
        groups.setdefault(vocab, []).append(c)
    return tuple((tuple(channels), vocab) for vocab, channels in groups.items())


def speech_empty_mask(cfg: LMConfig) -> jax.Array:
    """``[C, Vmax]`` bool: True at channel c's empty id (entries past a channel's vocabulary are never read)."""
    idx = jnp.arange(max(cfg.speech_vocab_sizes))[None, :]  # [1, Vmax]
    return idx == jnp.asarray(cfg.speech_empty_ids)[:, None]


def channel_sampler(sampler: sampling.SamplerConfig, *, cfg: LMConfig) -> ChannelSampler:
    """Official ``local_sampler.sample(scores, [empty id])`` for channels of one vocabulary size, all rows at once.

    ``choose(logits [B, Cg, V], channels, step, keys [B]) -> [B, Cg]``: logits are processed (temperature, top-k,
    top-p) with the empty id still present, then each channel's empty id is set to -inf (official order). Row b draws
    ``[C]`` uniforms (one per channel) from ``fold_in(keys[b], step)`` and channel c uses the c-th, so a token's draw
    depends neither on the row's batch nor on which other channels are sampled with it.
    """
    empty = speech_empty_mask(cfg)  # [C, Vmax]

    def choose(logits: jax.Array, channels: tuple[int, ...], step: jax.Array, keys: jax.Array) -> jax.Array:
        idx = np.asarray(channels)
        vocab = logits.shape[-1]
        row_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)  # [B]
        draws = jax.vmap(lambda k: sampling.draw(k, sampler, (cfg.audio_channels,)))(row_keys)  # [B, C] (or None)
        scores = sampling.remove_tokens(sampling.process_logits(logits, sampler), empty[None, idx, :vocab])
        return sampling.choose_with(scores, sampler, None if draws is None else draws[:, idx])  # -> [B, Cg]

    return choose


def channel_activity(step: jax.Array, *, cfg: LMConfig) -> tuple[jax.Array, jax.Array]:
    """Which channels emit a token at patch-decoder ``step`` and for which frame.

    Channel c is active iff ``delay[c] <= step < delay[c] + G``; it then emits frame ``step - delay[c]``.
    -> (active ``[C]`` bool, frame ``[C]`` int32 clipped to 0..G-1).
    """
    delay = jnp.asarray(cfg.delay_pattern, jnp.int32)  # [C]
    frame = step - delay
    active = (frame >= 0) & (frame < cfg.group_size)
    return active, jnp.clip(frame, 0, cfg.group_size - 1)


def local_next_input(emb: jax.Array, active: jax.Array, dtype) -> jax.Array:
    """The next patch-decoder input: the active channels' embeddings of the tokens just chosen, summed in channel
    order (official in-place ``local_embeds += ...``). emb ``[B, C, Dl]``, active ``[C]`` -> ``[B, Dl]``.

    The sum is in the model ``dtype``: the official ``local_embeds`` is ``zeros_like`` of the hidden state, unlike
    the input embedding's speech sum, which is a bfloat16 buffer (:func:`speech_embeddings_sum`).
    """
    x = jnp.zeros((emb.shape[0], emb.shape[2]), dtype)  # [B, Dl]
    for ch in range(emb.shape[1]):  # channel order, as the official in-place `+=`
        x = x + jnp.where(active[ch], emb[:, ch], 0).astype(dtype)  # [B, Dl]
    return x


def patch_decoder(
    params: Params,
    local_hidden: jax.Array,
    choose: ChannelSampler,
    keys: jax.Array,
    *,
    cfg: LMConfig,
    tables: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Official ``local_forward``: the speech tokens of one group. local_hidden ``[B, Dl]`` -> tokens ``[B, G, C]``.

    Steps t = 0 .. G + max(delay) - 1 run the local transformer on one position each (KV cache over the steps,
    positions 0..t). Step 0's input is ``local_hidden``; at step t every active channel c (see
    :func:`channel_activity`) picks a token from ``local_transformer_lm_heads[c](hidden)`` with its empty id removed
    (``choose``, e.g. :func:`channel_sampler`; ``keys`` ``[B]``), stored as frame ``t - delay[c]``; the next input
    is the sum, in channel order, of the active channels' speech embeddings of those tokens (zero when none is).
    The heads are computed per group of channels sharing a vocabulary (:func:`speech_vocab_groups`), one product
    each, and a group is skipped (``lax.cond``) at steps where none of its channels emits; the official loop computes
    each active channel's head alone.
    ``tables``: :func:`patch_decoder_tables` computed once outside a decode loop (recomputed here if None).
    """
    b = local_hidden.shape[0]
    lcfg = cfg.local
    steps = cfg.local_steps
    tables = patch_decoder_tables(params, cfg=cfg, rows=b) if tables is None else tables
    emb_w = tables.embeddings  # [C, Vmax, Dl]
    c = emb_w.shape[0]
    groups = speech_vocab_groups(cfg)
    cache = init_cache(lcfg, b, steps, local_hidden.dtype)
    k_slot = jnp.broadcast_to(jnp.arange(steps, dtype=jnp.int32), (b, steps))  # [B, S]

    def step(t, carry):
        x, cache, tokens = carry  # x [B, Dl], tokens [B, G, C]
        pos = jnp.full((b, 1), t, jnp.int32)  # [B, 1]
        mask = layers.attention_mask(pos, k_slot, causal=True)  # [B, 1, S]
        h, cache = qwen_stack(
            tables.local, x[:, None, :], pos, mask, cfg=lcfg, cache=cache, write_pos=t,
            name="lm.patch_decoder.stack",
        )  # fmt: skip
        active, frame = channel_activity(t, cfg=cfg)  # [C], [C]
        new = jnp.zeros((b, c), jnp.int32)  # [B, C]: each channel's token (ignored where it is silent)
        for g, (channels, vocab) in enumerate(groups):
            idx = np.asarray(channels)

            def sample_group(g=g, channels=channels, vocab=vocab):  # the group's heads in one product, then sampled
                logits = layers.linear(tables.group_heads[g], h[:, 0]).reshape(b, len(channels), vocab)  # [B, Cg, V]
                return choose(logits, channels, t, keys)  # -> [B, Cg]

            silent = jnp.zeros((b, len(channels)), jnp.int32)
            new = new.at[:, idx].set(jax.lax.cond(jnp.any(active[idx]), sample_group, lambda silent=silent: silent))
        if is_collecting():  # dumps hold every channel's head at every step, unpadded, and only the emitted tokens
            for ch in range(c):
                head = params["local_transformer_lm_heads"][ch]
                tap(f"lm.patch_decoder.logits.c{ch}", layers.linear(upcast(head, x.dtype), h[:, 0]))  # [B, V_c]
            tap("lm.patch_decoder.tokens", jnp.where(active[None], new, -1))  # [B, C]; -1: channel inactive
        onehot = jax.nn.one_hot(frame, cfg.group_size, dtype=bool) & active[:, None]  # [C, G]
        tokens = jnp.where(onehot.T[None], new[:, None, :], tokens)  # write [B, C] at [B, frame_c, c]
        emb = emb_w[jnp.arange(c)[None, :], new]  # [C, Vmax, Dl] gathered at [B, C] -> [B, C, Dl]
        return local_next_input(emb, active, x.dtype), cache, tokens

    tokens = jnp.zeros((b, cfg.group_size, cfg.audio_channels), jnp.int32)
    _, _, tokens = jax.lax.fori_loop(0, steps, step, (local_hidden, cache, tokens))
    return tokens
