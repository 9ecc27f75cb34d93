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
import mmap
import os
import re
from collections.abc import Callable
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


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # Hugging Face repo ids are exactly `owner/name`
REDOWNLOAD = (
    "it was probably cut short by an interrupted download: delete it and download the checkpoint again "
    "(for a Hugging Face repo id: `huggingface-cli download OWNER/NAME --force-download`)"
)


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is meant as a local path rather than a Hugging Face repo id.

    A path: anything that is not of the form ``owner/name``, or starts with ``.``, ``/`` or ``~``, or whose first
    part is an existing local folder (``models/typo`` when ``models/`` exists).
    """
    if not REPO_ID.fullmatch(text) or text.startswith((".", "/", "~")):
        return True
    return Path(text.split("/")[0]).is_dir()


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, *, what: str = "checkpoint") -> Path:
    """A local folder, or a Hugging Face repo id (``owner/name``) downloaded into the HF cache.

    The hub is contacted only when ``path_or_repo_id`` is not an existing folder and does not look like a path
    (:func:`looks_like_path`); a path that does not exist is reported as "no such folder", never sent to the hub.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"{what} {text} is a file; pass the folder that holds config.json")
    if looks_like_path(text):
        first = text.split("/")[0]
        why = f" ({first}/ exists, so this is read as a local path)" if REPO_ID.fullmatch(text) else ""
        raise CheckpointError(
            f"no such folder: {what} {text} does not exist{why}; pass a folder holding config.json or a Hugging "
            "Face repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as exc:  # the hub raises many types; all mean "could not download"
        reason = (str(exc).strip().splitlines() or [""])[0][:200]  # hub messages run to several lines
        raise CheckpointError(
            f"{what} {text} is not a local folder, and downloading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {reason}); check the folder name, or the repo id and the network"
        ) from exc


class SafetensorsFile:
    """A memory-mapped safetensors file: ``names()``, ``shape(name)``, ``read(name) -> np.ndarray`` (a view).

    Opening checks the header against the file: every tensor's byte span must match its shape and dtype, and the
    file must be as long as the header promises; a shorter file (an interrupted download) is reported with its
    path, the expected and actual sizes and re-download advice, not as a reshape error at first use.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            actual = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                prefix = fh.read(9)  # 8-byte header length, then the JSON header's opening brace
                header_len = int.from_bytes(prefix[:8], "little")
                if len(prefix) == 9 and prefix[8:] != b"{":
                    raise ValueError("it does not start with a safetensors header")
                if len(prefix) == 9 and 8 + header_len <= actual:
                    fh.seek(8)
                    header = json.loads(fh.read(header_len))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is not a readable safetensors file ({exc})") from exc
        if len(prefix) < 9 or 8 + header_len > actual:
            raise CheckpointError(
                f"{self.path} is truncated: its header needs at least {8 + header_len if len(prefix) == 9 else 9} "
                f"bytes but the file has {actual}; {REDOWNLOAD}"
            )
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path} is not a safetensors file (its header is not a JSON object)")
        header.pop("__metadata__", None)
        end = 0
        for name, info in header.items():
            try:
                begin, stop = (int(v) for v in info["data_offsets"])
                count = int(np.prod([int(d) for d in info["shape"]]))
                dtype = info["dtype"]
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: the header entry of {name} is malformed ({exc!r})") from exc
            if dtype in SAFETENSORS_DTYPES and stop - begin != count * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize:
                raise CheckpointError(
                    f"{self.path}: tensor {name} ({dtype} {info['shape']}) spans {stop - begin} bytes in the header, "
                    "which does not match its shape; the file is corrupt"
                )
            end = max(end, stop)
        expected = 8 + header_len + end
        if actual < expected:
            raise CheckpointError(
                f"{self.path} is truncated: its header promises {expected} bytes but the file has {actual}; "
                f"{REDOWNLOAD}"
            )
        self.header = header
        self.data_start = 8 + header_len
        with open(self.path, "rb") as fh:
            self.mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # the mapping outlives the handle

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        count = (end - begin) // dtype.itemsize
        return np.frombuffer(self.mmap, dtype, count, self.data_start + begin).reshape(info["shape"])

    def release(self, name: str) -> None:
        """Drop the pages of tensor ``name`` from this process once it was copied out.

        Why a hand-written reader rather than ``safetensors.safe_open``: every memory-mapped reader (numpy's
        memmap, ``safe_open``'s) keeps each page it touched resident in the process until the file is closed, so
        loading the 16 GB 7B checkpoint measured 20.9 GiB peak RSS (the params plus the file pages of the shards);
        ``madvise(MADV_DONTNEED)`` after each tensor returns its pages to the page cache (shared, not this
        process's), and the peak stays at the params plus one tensor (see docs/scale.md).
        """
        begin, end = self.header[name]["data_offsets"]
        page = mmap.PAGESIZE
        start = (self.data_start + begin) // page * page  # madvise wants a page-aligned start
        length = self.data_start + end - start
        if length > 0 and hasattr(mmap, "MADV_DONTNEED"):
            self.mmap.madvise(mmap.MADV_DONTNEED, start, length)


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
    precision,
    *,
    ignored: Callable[[str], bool] = lambda name: False,
    place: Callable[[str, np.ndarray], object] | None = None,
) -> dict:
    """Load the tensors named in ``shapes`` from ``folder`` into a nested param dict.

    ``precision``: a :class:`mimo_ref.precision.Precision` (or a preset name / dtype). Each tensor is held in
    ``precision.storage_dtype(its stored dtype)``: as stored (a bf16 checkpoint stays bf16 under float32 compute,
    and the model upcasts at use), narrowed to the compute dtype when wider, or rounded to bf16 when the precision
    asks for bf16 weights. Strict: a tensor of ``shapes`` that the checkpoint lacks, or a checkpoint tensor that
    is neither in ``shapes`` nor ``ignored(name)``, or a shape mismatch, raises :class:`CheckpointError`.
    ``place``: puts one tensor on devices (default ``jnp.asarray``: the default device); it receives the
    memory-mapped view itself when no cast is needed.
    """
    from mimo_ref.precision import resolve_precision

    precision = resolve_precision(precision)
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
    flat = {}
    for name in shapes:
        view = where[name].read(name)  # memory-mapped, no copy yet
        storage = precision.storage_dtype(view.dtype)
        if place is None:
            # One tensor at a time: copy (and cast) it into a 64-byte-aligned host buffer, drop its file pages,
            # then copy the buffer to the device. Aligned, the device copy needs no staging copy (measured: the
            # unaligned file view cost a third transient copy of the largest tensor, 1.2 GiB for the 7B).
            host = aligned_empty(view.shape, storage)
            np.copyto(host, view, casting="unsafe")
            where[name].release(name)  # its file pages leave this process
            flat[name] = jax.block_until_ready(jnp.asarray(host))
            del host
        else:
            # `place(name, array) -> jax.Array` (mimo_ref.sharding) copies each device's slice straight from the map
            flat[name] = jax.block_until_ready(place(name, view.astype(storage, copy=False)))
            where[name].release(name)
        del view
    return nest(flat)


def aligned_empty(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised host array whose data starts on an ``alignment``-byte boundary (what XLA's CPU client
    copies from without an intermediate staging buffer)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)
