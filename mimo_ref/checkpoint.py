"""Checkpoint loading shared by the LM and the audio tokenizer.

A checkpoint is a folder (or a Hugging Face repo id, downloaded with ``huggingface_hub.snapshot_download``, the
only place this package touches the network) holding ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``.

Tensors are read lazily: each safetensors file is memory-mapped, and one tensor at a time is cast to the
requested dtype and moved into JAX, so peak host memory is the loaded params plus one tensor (never two full
copies). The safetensors format is read directly (8-byte little-endian header length, JSON header, raw
little-endian data) because numpy has no bfloat16; ``ml_dtypes`` (a JAX dependency) supplies it.

Params become nested dicts keyed like the checkpoint names: ``"model.layers.3.mlp.up_proj.weight"`` ->
``params["model"]["layers"][3]["mlp"]["up_proj"]["weight"]`` (numeric path parts become list indices).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint is missing files or tensors, or has tensors of the wrong shape."""


SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def resolve_dtype(dtype) -> jnp.dtype:
    """``"float32" | "bfloat16" | "float64"`` (or a dtype) -> a JAX dtype; float64 needs x64 mode."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 needs JAX's x64 mode: call `jax.config.update('jax_enable_x64', True)` first "
            "(the CLI does this for --dtype float64)"
        )
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float64)):
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float64")
    return dtype


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, *, what: str = "checkpoint") -> Path:
    """A local folder, or a Hugging Face repo id (``owner/name``) downloaded into the HF cache.

    The hub is contacted only when ``path_or_repo_id`` is not an existing folder and looks like a repo id.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"{what} {text} is a file; pass the folder that holds config.json")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"])
            )
        except Exception as exc:  # the hub raises many types; all mean "could not download"
            raise CheckpointError(
                f"{what} {text!r} is not a local folder and could not be downloaded from the Hugging Face hub "
                f"({type(exc).__name__}: {exc}); pass a local folder or check the repo id and network"
            ) from exc
    raise CheckpointError(f"{what} folder {text} does not exist; pass a folder with config.json or an HF repo id")


class SafetensorsFile:
    """A memory-mapped safetensors file: ``names()``, ``shape(name)``, ``read(name) -> np.ndarray`` (a view)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(header_len))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is not a readable safetensors file ({exc})") from exc
        header.pop("__metadata__", None)
        self.header = header
        self.data_start = 8 + header_len
        self.mmap = np.memmap(self.path, dtype=np.uint8, mode="r")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        raw = self.mmap[self.data_start + begin : self.data_start + end]
        return raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])


def open_checkpoint_tensors(folder: Path) -> dict[str, SafetensorsFile]:
    """Map every tensor name of the checkpoint in ``folder`` to the (memory-mapped) file holding it."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index} has no valid `weight_map` ({exc})") from exc
        files: dict[str, SafetensorsFile] = {}
        where: dict[str, SafetensorsFile] = {}
        for name, shard in weight_map.items():
            if shard not in files:
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index} lists shard {shard}, which is missing from {folder}")
                files[shard] = SafetensorsFile(folder / shard)
            if name not in files[shard].header:
                raise CheckpointError(f"{index} says {name} is in {shard}, but that shard does not hold it")
            where[name] = files[shard]
        return where
    if single.is_file():
        f = SafetensorsFile(single)
        return {name: f for name in f.names()}
    raise CheckpointError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")


def nest(flat: dict[str, object]) -> dict:
    """``{"a.0.b": x}`` -> ``{"a": [{"b": x}]}``: dotted names to nested dicts, numeric parts to lists."""
    root: dict = {}
    for name, value in flat.items():
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            keys = sorted(node, key=int)
            if [int(k) for k in keys] != list(range(len(keys))):
                raise CheckpointError(f"non-contiguous layer indices {keys}")
            return [node[k] for k in keys]
        return node

    return listify(root)


def flatten(params, prefix: str = "") -> dict[str, object]:
    """Inverse of :func:`nest`: nested dicts/lists -> ``{"dotted.name": leaf}``."""
    out: dict[str, object] = {}
    items = enumerate(params) if isinstance(params, list) else params.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_params(
    folder: Path,
    shapes: dict[str, tuple[int, ...]],
    dtype,
    *,
    ignored: Callable[[str], bool] = lambda name: False,
    keep_float32: Iterable[str] = (),
) -> dict:
    """Load the tensors named in ``shapes`` from ``folder`` into a nested param dict of ``dtype``.

    Strict: a tensor of ``shapes`` that the checkpoint lacks, or a checkpoint tensor that is neither in
    ``shapes`` nor ``ignored(name)``, or a shape mismatch, raises :class:`CheckpointError` listing them.
    ``keep_float32`` names tensors kept in float32 whatever ``dtype`` (e.g. RVQ codebooks, which the official
    code always uses in float32).
    """
    dtype = resolve_dtype(dtype)
    where = open_checkpoint_tensors(folder)
    missing = sorted(set(shapes) - set(where))
    unexpected = sorted(n for n in set(where) - set(shapes) if not ignored(n))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            )
        if unexpected:
            more = " ..." if len(unexpected) > 8 else ""
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}{more}")
        raise CheckpointError(f"checkpoint {folder} does not match its config.json: " + "; ".join(parts))
    wrong = [
        f"{n} is {list(where[n].shape(n))}, expected {list(s)}"
        for n, s in sorted(shapes.items())
        if tuple(where[n].shape(n)) != tuple(s)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {folder} has tensors of the wrong shape: {'; '.join(wrong[:8])}")
    keep = set(keep_float32)
    flat = {}
    for name in shapes:
        target = jnp.float32 if name in keep else dtype
        flat[name] = jnp.asarray(np.asarray(where[name].read(name)).astype(target))
    return nest(flat)
