"""Precision: the compute dtype and the weight storage, two separate notions resolved once at load.

- **compute dtype** (``"float32"`` default, ``"float64"``, ``"bfloat16"``): the dtype activations, matmuls and
  residual streams run in. Norms, softmax, RoPE tables and the ISTFT keep their own numerics policy on top of it
  (see ``docs/numerics.md``).
- **weight storage**: the dtype each weight is *held* in. By default a weight keeps the dtype the checkpoint
  stores it in (the real LM stores bfloat16) unless that is wider than the compute dtype (a float32 checkpoint
  run in bfloat16 is rounded at load, as ``model.bfloat16()`` would). ``weights="bfloat16"`` rounds every
  weight to bfloat16 at load whatever the checkpoint holds (what the official ``MimoAudio`` wrapper does).

A weight held narrower than the compute dtype is upcast **at use** (type promotion in ``x @ W``, or an explicit
``astype`` where promotion alone would not reach the compute dtype; a single float32 row on CPU reads a bfloat16
weight in place, the upcast fused into the product: ``mimo_ref/layers.py::narrow_weight_row``). Upcasting
bfloat16 (or float32) to a wider float is exact, so results equal upcasting every weight at load (ids identical;
values within float32 rounding, where XLA fuses a conversion into the kernel that consumes it, or sums a one-row
product in another order), with half (or a quarter) of the resident memory.
``tests/test_precision.py`` checks it.

- **buffers** (``bf16_buffers``): the official wrapper's ``.bfloat16()`` on the audio tokenizer also rounds its
  floating buffers, the RoPE ``inv_freq`` of its three transformers (the ISTFT window is a checkpoint tensor and
  is rounded with the weights). ``bf16_buffers=True`` reproduces that.

Presets (:data:`PRESETS`; the CLI's ``--precision``):

========== ======== ==================== ============ =================================================
name       compute  weights              bf16 buffers use it for
========== ======== ==================== ============ =================================================
float32    float32  as stored            no           the default reference (float32 math on the checkpoint)
float64    float64  as stored            no           1e-6 comparisons of ports; error bars for float32
bfloat16   bfloat16 bfloat16             no           a loose reference of bf16 serving stacks
official   float32  rounded to bfloat16  yes          what the official wrapper (and the pipeline fixtures)
                                                      compute: bit-exact ids end to end
========== ======== ==================== ============ =================================================
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

COMPUTE_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}
WEIGHT_STORAGE = ("checkpoint", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a model is held and run: ``compute`` dtype name, ``weights`` storage, ``bf16_buffers``."""

    compute: str = "float32"
    weights: str = "checkpoint"  # "checkpoint": as stored (narrowed to compute if wider); "bfloat16": rounded
    bf16_buffers: bool = False  # round the audio tokenizer's RoPE inv_freq to bfloat16 (official wrapper)

    def __post_init__(self):
        if self.compute not in COMPUTE_DTYPES:
            raise ValueError(f"unknown compute dtype {self.compute!r}; choose one of {sorted(COMPUTE_DTYPES)}")
        if self.weights not in WEIGHT_STORAGE:
            raise ValueError(f"unknown weight storage {self.weights!r}; choose one of {list(WEIGHT_STORAGE)}")

    @property
    def dtype(self) -> jnp.dtype:
        """The compute dtype as a JAX dtype."""
        return jnp.dtype(COMPUTE_DTYPES[self.compute])

    def storage_dtype(self, stored: np.dtype) -> np.dtype:
        """The dtype a checkpoint tensor stored as ``stored`` is held in.

        Floats: bfloat16 when ``weights="bfloat16"``; else the stored dtype, narrowed to the compute dtype when
        wider (so a bf16 checkpoint run in float32 stays bf16, and a float32 checkpoint run in bfloat16 is
        rounded). Integer / bool tensors are kept as stored.
        """
        stored = np.dtype(stored)
        if not jnp.issubdtype(stored, jnp.floating):
            return stored
        if self.weights == "bfloat16":
            return np.dtype(jnp.bfloat16)
        if stored.itemsize > self.dtype.itemsize or (self.compute == "bfloat16" and stored != self.dtype):
            return np.dtype(self.dtype)
        return stored


PRESETS = {
    "float32": Precision("float32"),
    "float64": Precision("float64"),
    "bfloat16": Precision("bfloat16"),
    "official": Precision("float32", weights="bfloat16", bf16_buffers=True),
}


def resolve_precision(precision: str | Precision | jnp.dtype | type) -> Precision:
    """A preset name, a :class:`Precision`, or a compute dtype (``jnp.float64``) -> :class:`Precision`.

    float64 compute needs JAX's x64 mode; the error says how to turn it on.
    """
    if isinstance(precision, Precision):
        out = precision
    elif isinstance(precision, str):
        if precision not in PRESETS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRESETS)}")
        out = PRESETS[precision]
    else:
        name = jnp.dtype(precision).name
        if name not in COMPUTE_DTYPES:
            raise ValueError(f"unsupported dtype {name}; use float32, bfloat16 or float64")
        out = Precision(name)
    if out.compute == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 needs JAX's x64 mode: call `jax.config.update('jax_enable_x64', True)` first "
            "(the CLI does this for --precision float64)"
        )
    return out


def upcast(tree, dtype):
    """Cast every floating leaf of a param (sub)tree narrower than ``dtype`` to ``dtype``: "upcast at use".

    Called inside traced code right where a block of weights is used, so XLA sees one conversion per use and
    nothing is converted ahead of time on the host.
    """
    dtype = jnp.dtype(dtype)
    return jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype) if narrower(leaf.dtype, dtype) else leaf, tree)


def narrower(leaf_dtype, dtype) -> bool:
    """True for a floating dtype with fewer bits than ``dtype``: the only leaves :func:`upcast` converts. Never
    narrowing matters where an activation is deliberately narrower than the model (the patch encoder's bf16 input
    meets float32 weights, as officially; narrowing them to the input's dtype would change the math)."""
    leaf_dtype = jnp.dtype(leaf_dtype)
    return jnp.issubdtype(leaf_dtype, jnp.floating) and leaf_dtype.itemsize < jnp.dtype(dtype).itemsize


def param_bytes(tree) -> int:
    """Resident bytes of every array leaf of a param tree (shared leaves, e.g. tied embeddings, counted once)."""
    seen, total = set(), 0
    for leaf in jax.tree_util.tree_leaves(tree):
        if id(leaf) not in seen and hasattr(leaf, "nbytes"):
            seen.add(id(leaf))
            total += int(leaf.nbytes)
    return total


def model_dtype(compute_dtype: str | None, reference: jax.Array) -> jnp.dtype:
    """The compute dtype of a model: its config's ``compute_dtype``, or (None) the dtype ``reference`` (a weight)
    is held in, for params already cast to the compute dtype."""
    return jnp.dtype(COMPUTE_DTYPES[compute_dtype]) if compute_dtype else jnp.dtype(reference.dtype)


def at_use(tree, dtype, after: jax.Array):
    """Upcast a block of weights (e.g. one transformer layer's) to ``dtype`` right where it is used.

    A no-op unless some floating leaf is narrower than ``dtype`` (float32 weights under float32 compute, or
    float32 weights meeting the patch encoder's bf16 input: weights are never narrowed). Otherwise the conversion
    runs inside a ``lax.cond`` whose predicate is read from ``after`` (the activation entering the block); both
    branches convert, so the result is the same whichever runs. Why: the conversion then cannot start before
    ``after`` exists, so XLA converts one layer at a time. Written as plain ``astype`` (or wrapped in an
    ``optimization_barrier``, which XLA's CPU pipeline drops), XLA schedules every layer's conversion at the start
    and keeps them all: measured with the 7B shapes, 0.71 GB more temporary memory per backbone layer (28.5 GB
    for the model, an out-of-memory error on a 24 GB machine); with the cond, 0.8 GB whatever the depth.

    Not used for a layer that one float32 row reads in place on CPU (``mimo_ref/layers.py::reads_in_place``: a
    decode step at batch 1 with at least 8 MiB of bfloat16 weights in the layer), where the products fuse the upcast.

    Exactness: the converted values equal upcasting at load bit for bit. The LM's ids are identical and its
    outputs agree within float32 rounding (bit-identical on a Xeon, up to 6e-7 on an AMD EPYC, in the patch
    encoder's output: XLA compiles that stack differently for bf16-held weights; ``tests/test_precision.py``); in
    the audio tokenizer, XLA fuses some conversions into the norms that consume them and the fused code may round
    a result differently (measured: 7e-7 max abs on the decoder's coarse mel, 1.3e-7 on the waveform; codes
    identical).
    """
    if not any(narrower(leaf.dtype, dtype) for leaf in jax.tree_util.tree_leaves(tree)):
        return tree
    # Both branches convert; the predicate only makes the conversion wait for `after` (see the docstring).
    waits = jnp.isnan(after.reshape(-1)[0])
    convert = functools.partial(upcast, dtype=dtype)
    return jax.lax.cond(waits, convert, convert, tree)
