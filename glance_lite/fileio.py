"""Safe file handling shared by every stage: atomic writes, safe checkpoint loading, clear errors.

Project rules implemented here (see :doc:`/book/intro`):

* every write is atomic (write to a temporary file in the same folder, then ``os.replace``);
* ``torch.load`` always runs with ``weights_only=True``;
* bad input raises :class:`GlanceError` (or a subclass) whose message names the file and the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "GlanceError",
    "DatasetError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "save_torch",
    "load_torch",
    "read_image",
]


class GlanceError(Exception):
    """Base class of the package's user-facing errors; the CLI prints them as one line."""


class DatasetError(GlanceError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the temporary file onto ``path``.

    The temporary file lives in the destination folder, so ``os.replace`` is atomic on POSIX and
    Windows; a crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, w)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (tensors, dicts, lists, numbers and strings only)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; a missing or corrupt file raises GlanceError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise GlanceError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise GlanceError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e


def read_image(path: str | os.PathLike, mode: str = "RGB"):
    """Open an image fully with PIL, converted to ``mode``; a bad file raises DatasetError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from e
