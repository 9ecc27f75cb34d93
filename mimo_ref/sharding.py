"""Several devices: data and tensor parallelism with ``jax.sharding``, kept apart from the math (STYLE rule 15).

A mesh has two axes: ``data`` (batch rows) and ``model`` (tensor parallel). Sharding is data, not code:

- :func:`lm_rules` / :func:`audio_rules` build a table from checkpoint-name patterns to ``PartitionSpec`` s over
  the tensor dims in their checkpoint (PyTorch) layouts. Megatron's split: the q/k/v projections and the FFN's
  gate/up (``fc1``) are split by output rows (whole attention heads, FFN columns), the attention output
  projection and the FFN's down (``fc2``) by input columns, so each device computes whole heads and a slice of
  the FFN and XLA adds one all-reduce after each block; vocabularies (text embedding, ``lm_head``) are split by
  rows. Norms, biases added after a reduction, convolutions, RVQ codebooks and the speech tables (1025 / 129
  rows, which divide no even axis) are replicated by explicit rules.
- :func:`spec_for` applies the table to one tensor: the first matching rule wins; a tensor no rule matches is an
  error (never a silent default). A split dimension must divide the axis size: attention projections count
  *heads* (a head is never cut) and fall back to replication when the head count does not divide the axis (the
  real LM has 8 KV heads: a model axis of 16 splits its 32 query heads and replicates K/V, as Megatron/vLLM
  duplicate KV heads); every other rule raises :class:`ShardingError` naming the tensor and the axis size.
- :func:`placer` gives ``mimo_ref.checkpoint.load_params`` its ``place`` hook: each device's shard is sliced
  from the checkpoint's memory map and copied to that device alone (``jax.make_array_from_callback``), so no
  device ever holds a whole split tensor.
- :func:`generate` is :func:`mimo_ref.generate.generate` with ``in_shardings`` / ``out_shardings`` at the jit
  boundary: params as placed, batch rows over ``data``, outputs replicated (they are token ids: small, and every
  host of a multi-host run can then read them). The layer functions never mention a mesh: XLA's SPMD
  partitioner propagates the shardings through them.

No ``with_sharding_constraint`` is used: XLA's propagation from the placed params and inputs gave results equal
to the single-device run (``tests/test_sharding.py``), so nothing needed pinning.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mimo_ref import generate as gen
from mimo_ref.arith import round_up
from mimo_ref.audio.config import AudioTokenizerConfig, load_audio_config
from mimo_ref.checkpoint import flatten, nest, resolve_checkpoint
from mimo_ref.config import LMConfig, QwenStackConfig, SpecialTokens, load_lm_config

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)


class ShardingError(ValueError):
    """A mesh that cannot be built, or a tensor that cannot be split as its rule says."""


# ---------------------------------------------------------------------------------------------------------------
# Meshes
# ---------------------------------------------------------------------------------------------------------------


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,model=4"`` -> ``{"data": 2, "model": 4}``. An axis left out is returned as 0 ("fill")."""
    sizes = {DATA: 0, MODEL: 0}
    seen = set()
    for part in str(text).replace(" ", "").split(","):
        name, eq, value = part.partition("=")
        if not eq or name not in sizes or name in seen or not value.isdigit() or int(value) < 1:
            raise ShardingError(
                f"cannot read mesh {text!r}: write AXIS=SIZE pairs, AXIS data or model, SIZE >= 1, "
                "e.g. 'data=2,model=4' or 'model=8'"
            )
        seen.add(name)
        sizes[name] = int(value)
    return sizes


def make_mesh(mesh: str | Mapping[str, int] | Mesh, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "model")`` mesh over all devices (``jax.devices()``: every host's, in a multi-host run).

    ``mesh``: a string for :func:`parse_mesh`, a ``{"data": d, "model": m}`` mapping (an axis left out or 0
    takes the devices the other leaves), or a ``Mesh`` with exactly these axis names (returned as is).
    ``d * m`` must equal the number of devices.
    """
    if isinstance(mesh, Mesh):
        if tuple(mesh.axis_names) != AXES:
            raise ShardingError(f"a mesh must have the axes {AXES}, got {tuple(mesh.axis_names)}")
        return mesh
    if isinstance(mesh, str):
        sizes = parse_mesh(mesh)
    elif set(mesh) - set(AXES) or any(int(v) < 0 for v in mesh.values()):
        raise ShardingError(f"mesh {dict(mesh)}: axes must be among {AXES} with sizes >= 1")
    else:
        sizes = {DATA: 0, MODEL: 0} | {a: int(v) for a, v in mesh.items()}
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    d, m = sizes[DATA], sizes[MODEL]
    if d == 0 and m == 0:
        d, m = 1, n
    elif d == 0 or m == 0:
        given = d or m
        if n % given:
            raise ShardingError(f"mesh {mesh!r} needs a multiple of {given} devices; JAX sees {n}")
        d, m = (n // m, m) if d == 0 else (d, n // d)
    if d * m != n:
        raise ShardingError(
            f"mesh data={d},model={m} needs {d * m} devices; JAX sees {n} ({devices[0].platform}). On CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={d * m} makes that many"
        )
    # create_device_mesh orders devices for the interconnect (rings on TPU); Auto axes: XLA propagates shardings
    return Mesh(mesh_utils.create_device_mesh((d, m), devices), AXES)


def describe(mesh: Mesh | None) -> str:
    """``"data=2,model=4"`` (or ``"none"``)."""
    return "none" if mesh is None else ",".join(f"{a}={mesh.shape[a]}" for a in AXES)


# ---------------------------------------------------------------------------------------------------------------
# The rules table
# ---------------------------------------------------------------------------------------------------------------

SPLIT_OR_ERROR = "error"
SPLIT_OR_REPLICATE = "replicate"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the table: tensors whose checkpoint name fully matches ``pattern`` get ``spec``.

    ``spec`` names a mesh axis (or None) per tensor dim, PyTorch layout; dims past its length are replicated.
    ``units``: the split dim holds this many equal blocks that must stay whole (attention heads); None: its
    elements. ``if_indivisible``: ``"error"`` or ``"replicate"`` when the axis size does not divide them.
    """

    pattern: str
    spec: P
    why: str
    units: int | None = None
    if_indivisible: str = SPLIT_OR_ERROR


def qwen_stack_rules(prefix: str, stack: QwenStackConfig) -> list[Rule]:
    """Rules of one Qwen2 stack (backbone, patch encoder or patch decoder) named ``prefix``."""
    layer = rf"{re.escape(prefix)}\.layers\.\d+"
    n, k = stack.num_heads, stack.num_kv_heads
    return [
        Rule(rf"{layer}\.self_attn\.q_proj\.(weight|bias)", P(MODEL), "query heads (rows N*H)", n, SPLIT_OR_REPLICATE),
        Rule(rf"{layer}\.self_attn\.[kv]_proj\.(weight|bias)", P(MODEL), "KV heads (rows K*H)", k, SPLIT_OR_REPLICATE),
        Rule(rf"{layer}\.self_attn\.o_proj\.weight", P(None, MODEL), "query heads (cols N*H)", n, SPLIT_OR_REPLICATE),
        Rule(rf"{layer}\.mlp\.(gate|up)_proj\.weight", P(MODEL), "FFN width (rows F)"),
        Rule(rf"{layer}\.mlp\.down_proj\.weight", P(None, MODEL), "FFN width (cols F)"),
        Rule(rf"{layer}\.(input|post_attention)_layernorm\.weight", P(), "norm: needs the whole width"),
        Rule(rf"{re.escape(prefix)}\.norm\.weight", P(), "norm: needs the whole width"),
    ]


def lm_rules(cfg: LMConfig) -> tuple[Rule, ...]:
    """The MiMo-Audio LM's table (names of :func:`mimo_ref.lm.param_shapes`)."""
    rules = qwen_stack_rules("model", cfg.backbone)
    rules += qwen_stack_rules("local_transformer", cfg.local)
    rules += qwen_stack_rules("input_local_transformer", cfg.input_local)
    rules += [
        Rule(r"model\.embed_tokens\.weight", P(MODEL), "text vocabulary (rows V)"),
        Rule(r"lm_head\.weight", P(MODEL), "text vocabulary (rows V)"),
        Rule(
            r"(speech_embeddings|local_transformer_lm_heads)\.\d+\.weight",
            P(),
            "speech vocabularies of 1025 / 129 rows divide no even axis (3M params in the 7B)",
        ),
        Rule(
            r"(speech_group_downcast|hidden_states_downcast|speech_embeddings_to_local)\.weight",
            P(),
            "small projections between the stacks (20M params in the 7B)",
        ),
    ]
    return tuple(rules)


def audio_layer_rules(prefix: str, heads: int) -> list[Rule]:
    """Rules of one tokenizer transformer (encoder, decoder or vocoder) whose layers are ``prefix.layers.i``."""
    layer = rf"{re.escape(prefix)}\.layers\.\d+"
    return [
        Rule(rf"{layer}\.self_attn\.[qkv]_proj\.(weight|bias)", P(MODEL), "heads (rows D)", heads, SPLIT_OR_REPLICATE),
        Rule(rf"{layer}\.self_attn\.out_proj\.weight", P(None, MODEL), "heads (cols D)", heads, SPLIT_OR_REPLICATE),
        Rule(rf"{layer}\.fc1\.(weight|bias)", P(MODEL), "FFN width (rows F)"),
        Rule(rf"{layer}\.fc2\.weight", P(None, MODEL), "FFN width (cols F)"),
        Rule(rf"{layer}\.(self_attn\.out_proj|fc2)\.bias", P(), "added after the all-reduce"),
        Rule(rf"{layer}\.(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", P(), "norm: needs the whole width"),
    ]


def audio_rules(cfg: AudioTokenizerConfig) -> tuple[Rule, ...]:
    """The audio tokenizer's table (names of :func:`mimo_ref.audio.config.param_shapes`)."""
    rules = audio_layer_rules("encoder", cfg.encoder_heads)
    rules += audio_layer_rules("decoder", cfg.decoder_heads)
    rules += audio_layer_rules("decoder.vocoder", cfg.vocoder_heads)
    rules += [
        Rule(r".*(layer_norm|_norm|\.norm)\.(weight|bias)", P(), "norm: needs the whole width"),
        Rule(r".*(conv1|conv2|down_sample_layer\.0|dconv1\.conv|dconv2\.conv)\.(weight|bias)", P(), "convolutions"),
        Rule(r"encoder\.quantizer\.vq\.layers\.\d+\._codebook\.embed", P(), "RVQ codebooks (float32 argmin)"),
        Rule(r"decoder\.vocoder\.(embeddings|head\.out)\.(weight|bias)", P(), "vocoder in/out projections"),
        Rule(r"decoder\.vocoder\.head\.istft\.window", P(), "ISTFT window"),
    ]
    return tuple(rules)


def spec_for(name: str, shape: Sequence[int], rules: Sequence[Rule], axis_sizes: Mapping[str, int]) -> P:
    """The ``PartitionSpec`` of tensor ``name`` of ``shape``: the first rule whose pattern matches.

    Raises :class:`ShardingError` when no rule matches, or when a split does not divide and its rule says
    ``"error"``; returns ``P()`` (replicated) when it says ``"replicate"``.
    """
    for rule in rules:
        if re.fullmatch(rule.pattern, name):
            break
    else:
        raise ShardingError(f"no sharding rule matches tensor {name} {list(shape)}; add one to the rules table")
    spec = tuple(rule.spec)
    if len(spec) > len(shape):
        raise ShardingError(f"rule {rule.pattern!r} splits {len(spec)} dims but {name} has shape {list(shape)}")
    for dim, axis in enumerate(spec):
        if axis is None or axis_sizes.get(axis, 1) == 1:
            continue
        size = axis_sizes[axis]
        count = shape[dim] if rule.units is None else rule.units
        if shape[dim] % count or count % size:
            if rule.if_indivisible == SPLIT_OR_REPLICATE and shape[dim] % count == 0:
                return P()
            what = f"its {count} {rule.why}" if rule.units else f"dim {dim} ({rule.why}) of size {count}"
            raise ShardingError(
                f"cannot split tensor {name} {list(shape)} over the {axis} axis of size {size}: {size} does not "
                f"divide {what}; choose a {axis} axis size that does"
            )
    return P(*spec)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where every tensor of a weight spec goes on a mesh of ``axis_sizes``: ``specs`` (name -> PartitionSpec)."""

    specs: dict[str, P]
    shapes: dict[str, tuple[int, ...]]
    axis_sizes: dict[str, int]

    def shard_shape(self, name: str) -> tuple[int, ...]:
        """Shape of the slice of ``name`` one device holds."""
        shape = self.shapes[name]
        spec = tuple(self.specs[name]) + (None,) * (len(shape) - len(self.specs[name]))
        return tuple(s // (1 if a is None else self.axis_sizes[a]) for s, a in zip(shape, spec, strict=True))

    def device_bytes(self, itemsize: int = 4) -> int:
        """Parameter bytes on one device (every device holds the same amount), ``itemsize`` bytes per value."""
        return sum(int(np.prod(self.shard_shape(n))) * itemsize for n in self.shapes)

    def total_bytes(self, itemsize: int = 4) -> int:
        """Parameter bytes of the whole model, ``itemsize`` bytes per value."""
        return sum(int(np.prod(s)) * itemsize for s in self.shapes.values())

    def replicated(self) -> list[str]:
        """Tensors each device holds whole (every tensor when every mesh axis has size 1)."""
        return [n for n in self.shapes if self.shard_shape(n) == tuple(self.shapes[n])]


def plan(shapes: Mapping[str, Sequence[int]], rules: Sequence[Rule], axis_sizes: Mapping[str, int]) -> Plan:
    """Apply ``rules`` to a weight spec (``param_shapes(cfg)``) for a mesh of ``axis_sizes``. No device needed."""
    sizes = {DATA: 1, MODEL: 1} | dict(axis_sizes)
    specs = {name: spec_for(name, shape, rules, sizes) for name, shape in shapes.items()}
    return Plan(specs, {n: tuple(s) for n, s in shapes.items()}, sizes)


# ---------------------------------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------------------------------


def place_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Copy ``array`` (host memory or a memory map) to the devices of ``sharding``, each device its slice only."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: np.ascontiguousarray(array[index]))


def placer(rules: Sequence[Rule], mesh: Mesh) -> Callable[[str, np.ndarray], jax.Array]:
    """The ``place`` hook of :func:`mimo_ref.checkpoint.load_params`: ``(name, array) -> jax.Array``."""
    sizes = dict(mesh.shape)

    def place(name: str, array: np.ndarray) -> jax.Array:
        return place_array(array, NamedSharding(mesh, spec_for(name, array.shape, rules, sizes)))

    return place


def lm_placer(folder: str | os.PathLike, mesh: Mesh) -> Callable[[str, np.ndarray], jax.Array]:
    """``place`` hook for the LM checkpoint ``folder`` (folder or HF repo id; its config gives the head counts)."""
    folder = resolve_checkpoint(folder, what="LM checkpoint")
    return placer(lm_rules(load_lm_config(folder)), mesh)


def audio_placer(folder: str | os.PathLike, mesh: Mesh) -> Callable[[str, np.ndarray], jax.Array]:
    """``place`` hook for the audio tokenizer checkpoint in ``folder``."""
    folder = resolve_checkpoint(folder, what="audio tokenizer checkpoint")
    return placer(audio_rules(load_audio_config(folder)), mesh)


def shard_params(params, rules: Sequence[Rule], mesh: Mesh):
    """Place params already in memory (random weights, tests) by the same rules. Checkpoints should be loaded
    with ``place=placer(rules, mesh)`` instead, which never holds a whole tensor in memory."""
    place = placer(rules, mesh)
    seen: dict[int, jax.Array] = {}  # tied weights (lm_head = embed_tokens) stay one array
    flat = {}
    for name, leaf in flatten(params).items():
        if id(leaf) not in seen:
            seen[id(leaf)] = place(name, np.asarray(leaf))
        flat[name] = seen[id(leaf)]
    return nest(flat)


def device_param_bytes(params) -> dict[str, int]:
    """Bytes of params each device holds, from the arrays' own shards: ``{"cpu:0": bytes, ...}``."""
    out: dict[str, int] = {}
    seen = set()
    for leaf in jax.tree_util.tree_leaves(params):
        if id(leaf) in seen:
            continue
        seen.add(id(leaf))
        for shard in leaf.addressable_shards:
            key = f"{shard.device.platform}:{shard.device.id}"
            out[key] = out.get(key, 0) + int(shard.data.nbytes)
    return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch over the ``data`` axis (every other dim whole)."""
    return NamedSharding(mesh, P(DATA))


# ---------------------------------------------------------------------------------------------------------------
# Generation over a mesh
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _generate_fn(mesh: Mesh, param_shardings: tuple, treedef):
    """``generate_jit``'s function jitted with explicit in/out shardings (cached: one wrapper, one compile cache)."""
    batch = batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    params_in = jax.tree_util.tree_unflatten(treedef, list(param_shardings))

    def run(params, ids, pads, min_length, keys, st):  # st by position: jit takes no keywords with in_shardings
        return gen.generate_jit(params, ids, pads, min_length, keys, st=st)  # traced inline in this jit

    return jax.jit(
        run,
        static_argnums=(5,),
        in_shardings=(params_in, batch, batch, batch, batch),
        out_shardings=(replicated, replicated),
    )


def put_rows(x: jax.Array, rows: int, sharding: NamedSharding) -> jax.Array:
    """Pad ``x`` to ``rows`` rows with copies of its last row and place it. Host (numpy) values are placed, as
    JAX's multi-process rules ask (every process passes the same value); random keys travel as their key data."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put_rows(jax.random.key_data(x), rows, sharding)  # [B, ...] uint32
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    host = np.concatenate([host, np.repeat(host[-1:], rows - host.shape[0], axis=0)], axis=0)
    return jax.device_put(host, sharding)


def generate(params, cfg: LMConfig, special: SpecialTokens, prompt_ids, *, mesh: Mesh, **options):
    """:func:`mimo_ref.generate.generate` over a mesh: same arguments and result, rows split over ``data``.

    ``params`` must be placed on ``mesh`` (:func:`placer` / :func:`shard_params`). The batch is padded to a
    multiple of the ``data`` axis with copies of the last row (same prompt and key, so it stops when that row
    stops and never lengthens the loop); the copies are dropped from the result.
    """
    st, ids, pads, min_length, keys, prompts = gen.prepare(cfg, special, prompt_ids, **options)
    rows = round_up(len(prompts), mesh.shape[DATA])
    batch = batch_sharding(mesh)
    args = [put_rows(x, rows, batch) for x in (ids, pads, min_length, keys)]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    fn = _generate_fn(mesh, tuple(leaf.sharding for leaf in leaves), treedef)
    new, n_new = fn(params, *args, st)
    b = len(prompts)
    return gen.assemble(prompts, np.asarray(new)[:b], np.asarray(n_new)[:b], st)
