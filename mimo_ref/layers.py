"""Layers shared by the LM and the audio tokenizer: one pure function per upstream module.

Dimension legend (used in every shape comment and einsum of this package): B batch, T positions, S key/cache
length, D model width, N query heads, K kv heads, R = N/K query heads per kv head, H head dim, F FFN width,
V vocab, L layers, G group size, C audio channels, Q quantizer levels, M mel bins, I / O a Linear's input /
output width. Derived widths and lengths: Di the patch encoder's width (``input_local_dim``), Dl the patch
decoder's (``local_dim``), Vmax the largest speech vocabulary (the patch decoder's padded heads), P prompt slots
and N new groups in generation; in the audio tokenizer T mel frames, T1 after conv1, T2 after conv2 (50 Hz),
T3 after down-sampling (25 Hz codes).

Params are nested dicts keyed like the checkpoint (``{"weight": ..., "bias": ...}``); PyTorch layouts are kept
(``Linear.weight`` is ``[out, in]``, ``Conv1d.weight`` is ``[out, in, k]``, ``ConvTranspose1d.weight`` is
``[in, out, k]``), so a port can match tensors by path and shape. (The patch decoder's decode steps on CPU read a
derived copy, some weights transposed to ``weight_t`` ``[in, out]``: :func:`input_major`,
``mimo_ref/lm.py::decode_layout``.)

Numerics policy: norms and softmax compute in at least float32 (float64 inputs stay float64 except where the
official code forces float32, documented per function); RoPE tables are always computed in float32 (official)
and then cast; masks use a large finite negative rather than -inf so fully-masked padding rows stay finite.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Params = dict

MASK_VALUE = -1e30  # large finite negative for masked attention scores (STYLE rule 7)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype reductions run in: float64 stays float64, anything narrower computes in float32."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def one_float32_row(x: jax.Array) -> bool:
    """Whether ``x`` is a single float32 row (``[I]``, ``[1, I]``, ``[1, 1, I]``, ...) on the CPU backend: what every
    product of a decode step at batch 1 sees under the default float32 compute."""
    return math.prod(x.shape[:-1]) == 1 and x.dtype == jnp.float32 and jax.default_backend() == "cpu"


def narrow_weight_row(x: jax.Array, w: jax.Array) -> bool:
    """Whether ``linear`` takes the one-row form: one float32 row on CPU against a bfloat16-held weight.

    That is a decode step's product with a real (bfloat16) checkpoint's weight under float32 compute. There XLA's
    CPU einsum first writes a float32 copy of the whole weight, then reads it: 4 + 4 bytes per entry besides the 2
    stored (the 11008 x 4096 MLP product 17.4 ms against 7.0 ms in the one-row form, which fuses the upcast into
    the one read; docs/performance.md, "Products of one row with a narrower weight"). Several rows, float32 or
    float64 weights, float64 compute and other backends keep the einsum.
    """
    return one_float32_row(x) and w.dtype == jnp.bfloat16


# A block of bfloat16 weights at least this large is read in place by one row rather than upcast first (measured,
# docs/performance.md "Products of one row with a narrower weight": smaller blocks' float32 copies stay in cache).
IN_PLACE_MIN_BYTES = 8 << 20


def reads_in_place(tree, x: jax.Array) -> bool:
    """Whether a block of weights (one transformer layer) meeting ``x`` is used as stored rather than upcast first.

    True where ``x`` is one float32 row on CPU, every weight held in another dtype is bfloat16 and those weigh at
    least ``IN_PLACE_MIN_BYTES``: each product then takes ``linear``'s one-row form (``narrow_weight_row``) and
    norm scales and biases follow type promotion, so the block needs no upcast copy (``mimo_ref/lm.py::qwen_stack``
    skips ``precision.at_use`` for it). The results are the same sums in another float32 order.
    """
    narrow = [leaf for leaf in jax.tree_util.tree_leaves(tree) if leaf.dtype != x.dtype]
    return (
        one_float32_row(x)
        and all(leaf.dtype == jnp.bfloat16 for leaf in narrow)
        and sum(leaf.size * leaf.dtype.itemsize for leaf in narrow) >= IN_PLACE_MIN_BYTES
    )


def linear(params: Params, x: jax.Array) -> jax.Array:
    """``nn.Linear``: ``x @ W.T (+ b)``. x ``[..., in]``, weight ``[out, in]``, bias ``[out]`` -> ``[..., out]``.

    The weight is upcast to the compute dtype by type promotion (a bfloat16 weight under float32 compute is
    exact in float32). The same sum is computed in one of two forms (``narrow_weight_row``): the einsum, or,
    for one float32 row against a bfloat16 weight on CPU, the elementwise product summed over ``I``, which
    reads the narrow weight once; the two differ only in float32 summation order. A weight may instead be held
    input-major, ``weight_t`` ``[in, out]`` (the same matrix transposed, :func:`input_major`); then ``x @ W_t``.
    """
    if "weight_t" in params:
        y = jnp.einsum("...I,IO->...O", x, params["weight_t"])  # [..., I] -> [..., O]
        return y + params["bias"] if "bias" in params else y
    w = params["weight"]
    if narrow_weight_row(x, w):
        y = jnp.sum(w.astype(x.dtype) * x.reshape(-1), axis=-1)  # [O, I] * [I] -> [O]
        y = y.reshape(*x.shape[:-1], w.shape[0])  # [O] -> [..., O] (the leading dims are all 1)
    else:
        y = jnp.einsum("...I,OI->...O", x, w)  # [..., I] -> [..., O]
    if "bias" in params:
        y = y + params["bias"]
    return y


def input_major(*linears: Params) -> Params:
    """One ``linear``'s params with the weight held input-major: ``{"weight_t": [I, O]}`` (and ``"bias"``), the same
    matrix transposed. Several Linears of the same input (e.g. ``q_proj``, ``k_proj``, ``v_proj``) become one, their
    outputs side by side in the order given (``weight_t`` ``[I, O1 + O2 + ...]``): one product instead of several.
    The products are the same sums, in another float32 order.

    Why (a decode step's layout, ``mimo_ref/lm.py::decode_layout``): XLA's CPU product of one row with a float32
    matrix reads the matrix fastest when its rows are long (measured in a jitted loop over 64 MB of weights on a
    2-core AMD EPYC VM: ``[1024, 256]`` held output-major 13.4 GB/s, input-major ``[256, 1024]`` 21.5 GB/s;
    ``[256, 1024]`` output-major 21.4, input-major 13.9; a ``[256, 256]`` product 30 us either way, a fused
    ``[256, 768]`` 40 us: docs/performance.md, "Weights held input-major").
    """
    if any(("bias" in p) != ("bias" in linears[0]) for p in linears):
        raise ValueError("input_major: fuse Linears that all have a bias or none")
    out = {"weight_t": jnp.concatenate([p["weight"].T for p in linears], axis=1)}  # [O, I] each -> [I, sum O]
    if "bias" in linears[0]:
        out["bias"] = jnp.concatenate([p["bias"] for p in linears])  # [sum O]
    return out


def wide_output(*linears: Params) -> bool:
    """Whether the product of these Linears of one input (side by side) is wider than its input, ``O > I``: where
    holding it input-major reads faster (:func:`input_major`)."""
    return sum(p["weight"].shape[0] for p in linears) > linears[0]["weight"].shape[1]


FEW_ROWS = range(2, 33)  # row counts for which ``text_head`` takes the rows-inner form (measured, see there)


def text_head(params: Params, x: jax.Array) -> jax.Array:
    """``linear`` for the LM's text head (``lm_head``, ``[V, D]``: the largest weight a step reads).

    x ``[..., D]`` -> ``[..., V]``. Where ``x`` holds 2 to 32 float32 rows on CPU, the product is written as the
    elementwise product of the (upcast) weight with every row, summed over ``D``, with the rows as the inner output
    axis (``[V, R]``, then transposed): each weight row is read once for all rows, and a bfloat16 weight's upcast is
    fused into that read. XLA's CPU dot for so few rows is not memory-bound: measured in a jitted loop on the
    151680 x 512 head, 8 float32 rows 16.7 ms against 27.0 (einsum), bfloat16-held 14.9 against 42.5; 2 rows 14.1
    against 19.1, 32 rows 34.3 against 45.3; one row is far slower in this form (1 s), so it keeps ``linear``
    (docs/performance.md, "The text head for a few rows"). The same exact products, summed in another float32 order.
    """
    if "weight_t" in params:  # held input-major for a one-row decode step (mimo_ref/lm.py::text_head_decode_layout)
        return linear(params, x)
    w = params["weight"]
    rows = math.prod(x.shape[:-1])
    if rows not in FEW_ROWS or x.dtype != jnp.float32 or jax.default_backend() != "cpu":
        return linear(params, x)
    flat = x.reshape(rows, x.shape[-1])  # [..., I] -> [R, I]
    y = jnp.sum(w[:, None, :].astype(x.dtype) * flat[None], axis=-1)  # [O, 1, I] * [1, R, I] -> [O, R]
    y = y.T.reshape(*x.shape[:-1], w.shape[0])  # [O, R] -> [..., O]
    return y + params["bias"] if "bias" in params else y


def embedding(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``nn.Embedding`` lookup. table ``[V, D]``, ids ``[...]`` int -> ``[..., D]``."""
    return jnp.take(table, ids, axis=0)  # [...] -> [..., D]


def rms_norm(params: Params, x: jax.Array, *, eps: float) -> jax.Array:
    """Qwen2 ``RMSNorm``: ``weight * (x / sqrt(mean(x^2) + eps))``. x ``[..., D]``, weight ``[D]`` -> ``[..., D]``.

    Official (transformers ``Qwen2RMSNorm``): the statistics and the scaling run in **float32** whatever the
    input dtype (a float64 run too), the normalised value is cast back to the input dtype, and only then
    multiplied by the weight (so a bf16 input is rounded to bf16 before the float32 weight multiplies it, and
    the product follows type promotion).
    """
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)  # [..., D] -> [..., 1]
    normed = (x32 * jax.lax.rsqrt(variance + eps)).astype(x.dtype)
    return params["weight"] * normed


def layer_norm(params: Params, x: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """``nn.LayerNorm`` over the last axis (biased variance), computed in the input dtype (float32/float64).

    x ``[..., D]``, weight/bias ``[D]`` -> ``[..., D]``. eps defaults to torch's 1e-5.
    """
    xc = x.astype(compute_dtype(x.dtype))
    mean = jnp.mean(xc, axis=-1, keepdims=True)  # [..., D] -> [..., 1]
    var = jnp.mean(jnp.square(xc - mean), axis=-1, keepdims=True)  # [..., D] -> [..., 1]
    y = ((xc - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
    return y * params["weight"] + params["bias"]


def group_norm(params: Params, x: jax.Array, *, num_groups: int = 1, eps: float = 1e-5) -> jax.Array:
    """``nn.GroupNorm`` on channels-first data. x ``[B, D, T]`` (D split in ``num_groups``) -> ``[B, D, T]``.

    Statistics over each group's channels and all T positions; affine per channel.
    """
    b, d, t = x.shape
    xc = x.astype(compute_dtype(x.dtype)).reshape(b, num_groups, d // num_groups, t)  # [B, D, T] -> [B, g, D/g, T]
    mean = jnp.mean(xc, axis=(2, 3), keepdims=True)
    var = jnp.mean(jnp.square(xc - mean), axis=(2, 3), keepdims=True)
    y = ((xc - mean) * jax.lax.rsqrt(var + eps)).reshape(b, d, t).astype(x.dtype)  # [B, g, D/g, T] -> [B, D, T]
    return y * params["weight"][None, :, None] + params["bias"][None, :, None]


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, torch's default ``nn.GELU()`` / ``F.gelu``."""
    return jax.nn.gelu(x, approximate=False)


def silu(x: jax.Array) -> jax.Array:
    """SiLU / swish, ``x * sigmoid(x)``."""
    return jax.nn.silu(x)


def swiglu_mlp(params: Params, x: jax.Array) -> jax.Array:
    """Qwen2 MLP: ``down(silu(gate(x)) * up(x))``. x ``[..., D]`` -> ``[..., D]`` through ``[..., F]``."""
    gate = silu(linear(params["gate_proj"], x))  # [..., D] -> [..., F]
    up = linear(params["up_proj"], x)  # [..., D] -> [..., F]
    return linear(params["down_proj"], gate * up)  # [..., F] -> [..., D]


def gelu_mlp(params: Params, x: jax.Array) -> jax.Array:
    """Audio-tokenizer MLP: ``fc2(gelu(fc1(x)))``. ``params`` holds ``fc1`` and ``fc2``. ``[..., D] -> [..., D]``."""
    return linear(params["fc2"], gelu(linear(params["fc1"], x)))  # [..., D] -> [..., F] -> [..., D]


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
    """Default RoPE inverse frequencies ``1 / theta^(2i / H)``, i = 0..H/2-1, in float32 (official). ``[H/2]``."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / jnp.float32(head_dim)  # [H/2]
    return 1.0 / (jnp.float32(theta) ** exponent)


def rope_tables(
    positions: jax.Array, *, head_dim: int, theta: float, dtype, inv_freq_dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """RoPE ``cos``/``sin`` tables for integer ``positions`` ``[...]`` -> two ``[..., H]`` arrays in ``dtype``.

    Official (transformers ``Qwen2RotaryEmbedding`` and the tokenizer's ``RotaryEmbedding``): angles are computed
    in float32 (autocast disabled) whatever the model dtype, duplicated to the full head dim (``cat(f, f)``),
    then cos/sin are cast to the activation dtype. So a float64 run has float32-accurate RoPE, and a bf16
    activation gets bf16-rounded tables. ``inv_freq_dtype=bfloat16`` rounds the inverse frequencies to bf16 (and
    back to float32) first: the official wrapper's ``.bfloat16()`` rounds that buffer of the audio tokenizer.
    """
    inv_freq = rope_inv_freq(head_dim, theta).astype(inv_freq_dtype).astype(jnp.float32)  # [H/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [...] -> [..., H/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [..., H/2] -> [..., H]
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (the "half-split" RoPE layout of HF Llama/Qwen2)."""
    x1, x2 = jnp.split(x, 2, axis=-1)  # [..., H] -> 2 x [..., H/2]
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` ``[B, T, N, H]`` by tables ``cos``/``sin`` ``[B, T, H]`` (or ``[T, H]``): ``x cos + rot(x) sin``."""
    cos = cos[..., None, :]  # [.., T, H] -> [.., T, 1, H]
    sin = sin[..., None, :]
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def attention_mask(
    q_pos: jax.Array,
    k_pos: jax.Array,
    *,
    causal: bool,
    window: tuple[int, int] = (-1, -1),
    q_segment: jax.Array | None = None,
    k_segment: jax.Array | None = None,
    k_valid: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask ``[B, T, S]`` (True = may attend) from query/key positions ``[B, T]`` / ``[B, S]``.

    - ``causal``: key position <= query position.
    - ``window=(left, right)``: key position in ``[q - left, q + right]``; a negative side is unbounded
      (flash-attn's ``window_size`` semantics; ``causal`` forces ``right = 0``).
    - ``q_segment``/``k_segment`` ``[B, T]``/``[B, S]``: packed sequences attend only within their segment.
    - ``k_valid`` ``[B, S]`` bool: keys that exist (padding and unwritten cache slots are False).
    """
    qp = q_pos[:, :, None]  # [B, T] -> [B, T, 1]
    kp = k_pos[:, None, :]  # [B, S] -> [B, 1, S]
    mask = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), dtype=bool)  # [B, T, S]
    left, right = window
    if causal:
        right = 0
    if left >= 0:
        mask &= kp >= qp - left
    if right >= 0:
        mask &= kp <= qp + right
    if q_segment is not None and k_segment is not None:
        mask &= q_segment[:, :, None] == k_segment[:, None, :]
    if k_valid is not None:
        mask &= k_valid[:, None, :]
    return mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float | None = None) -> jax.Array:
    """Scaled dot-product attention with grouped-query heads.

    q ``[B, T, N, H]``, k/v ``[B, S, K, H]`` (N a multiple of K; query head n uses kv head n // (N/K), as
    ``repeat_kv`` / ``repeat_interleave`` do), mask ``[B, T, S]`` bool -> ``[B, T, N, H]``.
    Scores and softmax run in float32 (float64 for float64 inputs); the output has q's dtype.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    ct = compute_dtype(q.dtype)
    qg = q.reshape(b, t, kh, n // kh, h).astype(ct)  # [B, T, N, H] -> [B, T, K, R, H], R = N/K
    scores = jnp.einsum("BTKRH,BSKH->BKRTS", qg, k.astype(ct)) * scale  # -> [B, K, R, T, S]
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("BKRTS,BSKH->BTKRH", probs, v.astype(ct))  # -> [B, T, K, R, H]
    return out.reshape(b, t, n, h).astype(q.dtype)  # [B, T, K, R, H] -> [B, T, N, H]


def cache_write(cache: jax.Array, new: jax.Array, start: jax.Array | int) -> jax.Array:
    """Write ``new`` ``[B, T, K, H]`` into a preallocated cache ``[B, S, K, H]`` at positions ``start..start+T-1``."""
    start = jnp.asarray(start, dtype=jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (zero, start, zero, zero))


# ---------------------------------------------------------------------------------------------------------------
# Convolutions (PyTorch layouts, channels first)
# ---------------------------------------------------------------------------------------------------------------


def conv1d(params: Params, x: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
    """``nn.Conv1d``: x ``[B, Din, T]``, weight ``[Dout, Din, k]``, bias ``[Dout]`` -> ``[B, Dout, T']``.

    ``T' = (T + 2 * padding - k) // stride + 1`` (zero padding).
    """
    y = jax.lax.conv_general_dilated(
        x,
        params["weight"].astype(x.dtype),
        window_strides=(stride,),
        padding=[(padding, padding)],
        dimension_numbers=("NCH", "OIH", "NCH"),
        precision=jax.lax.Precision.HIGHEST,
    )  # [B, Din, T] -> [B, Dout, T']
    if "bias" in params:
        y = y + params["bias"][None, :, None]
    return y


def conv_transpose1d(params: Params, x: jax.Array, *, stride: int) -> jax.Array:
    """``nn.ConvTranspose1d`` (no padding): x ``[B, Din, T]``, weight ``[Din, Dout, k]`` -> ``[B, Dout, (T-1)*s + k]``.

    Output frame ``t*s + j`` receives ``x[t] @ weight[:, :, j]``, summed over overlapping t.
    """
    w = params["weight"].astype(x.dtype)
    k = w.shape[-1]
    # A transposed conv is a conv over the stride-dilated input with the flipped, in/out-swapped kernel.
    y = jax.lax.conv_general_dilated(
        x,
        jnp.flip(w, axis=-1).transpose(1, 0, 2),  # [Din, Dout, k] -> [Dout, Din, k] flipped
        window_strides=(1,),
        padding=[(k - 1, k - 1)],
        lhs_dilation=(stride,),
        dimension_numbers=("NCH", "OIH", "NCH"),
        precision=jax.lax.Precision.HIGHEST,
    )  # [B, Din, T] -> [B, Dout, (T-1)*s + k]
    if "bias" in params:
        y = y + params["bias"][None, :, None]
    return y
