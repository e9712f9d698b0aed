"""Small helpers shared across the package: hashing, atomic writes, cache location."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "cache_dir", "hash_strings", "write_json"]


def cache_dir() -> Path:
    """Where cxrlab keeps derived data (scan results, decoded-image caches).

    ``$CXRLAB_CACHE`` wins, then ``$XDG_CACHE_HOME/cxrlab``, then ``~/.cache/cxrlab``. The
    dataset folder itself is never written to: it may be read-only.
    """
    if env := os.environ.get("CXRLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cxrlab"


def hash_strings(items: Iterable[str], digest_size: int = 16) -> str:
    """A stable hex digest of an ordered sequence of strings."""
    h = hashlib.blake2b(digest_size=digest_size)
    for item in items:
        h.update(item.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file.

    The bytes go to a temporary file in the same folder, are flushed to disk, and replace the
    target with :func:`os.replace` (atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8, ``\\n`` line endings)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
