"""Output files: checked before any model work, written atomically.

Two rules every command that writes files follows:

- :func:`check_output_path` runs before anything is loaded or computed, so a path that cannot be written fails in
  a second, not after a generation: the name must end in one of the format's suffixes (``-o x.mp3`` for a WAV
  writer is rejected rather than given WAV data under an MP3 name), must not be an existing folder, and the
  nearest existing folder above it must be a writable folder (missing folders are created at write time).
- :func:`atomic_outputs` writes each file under a temporary name in its final folder and renames it into place
  only when every file of the output was written (``os.replace``, atomic on one file system). A failure or
  Ctrl-C leaves no partial file behind, and an existing file of that name stays intact until it is replaced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written, reported before any model work."""


def check_output_path(path: str | os.PathLike, *, suffixes: Sequence[str], option: str = "-o") -> Path:
    """Check that ``path`` can receive a file of a format whose names end in one of ``suffixes``.

    ``option`` names the command-line option (or argument) the path came from, for the message. Returns the path.
    Raises :class:`OutputPathError` when the suffix does not match (case-insensitive), the path is a folder, a
    parent is a file, or the nearest existing parent folder is not writable.
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option} is empty; pass a file name ending in {' or '.join(suffixes)}")
    out = Path(text).expanduser()
    if out.is_dir() or text.endswith(("/", os.sep)):
        raise OutputPathError(f"{option} {text} is a folder; pass a file name such as {out / ('out' + suffixes[0])}")
    if out.suffix.lower() not in {s.lower() for s in suffixes}:
        raise OutputPathError(
            f"{option} {text}: this command writes {' or '.join(suffixes)} files only; "
            f"use a name ending in {suffixes[0]}"
        )
    parent = out.parent
    while not parent.exists():  # the folders that will be created at write time
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{option} {text}: {parent} is a file, so no folder can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {text}: the folder {parent} is not writable")
    return out


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` with the same suffix (writers such as soundfile pick formats by suffix)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Write several files as one output: yields temporary paths, renamed onto ``paths`` when the block succeeds.

    Missing parent folders are created (and removed again, when still empty, if the block fails). On any exception
    (KeyboardInterrupt included) every temporary file is deleted and the exception propagates; files already at
    ``paths`` are left untouched.
    """
    finals = [Path(p).expanduser() for p in paths]
    created: list[Path] = []
    for final in finals:
        missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    temps = [temporary_name(final) for final in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
