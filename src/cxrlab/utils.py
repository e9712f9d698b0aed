"""Small helpers shared across the package: hashing, atomic writes, cache location."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "WHY_NULL",
    "DisjointSets",
    "atomic_write_bytes",
    "atomic_write_rows",
    "atomic_write_text",
    "cache_dir",
    "hash_strings",
    "strict_json",
    "write_json",
]

#: The key beside a ``null`` that says why a number is missing: ``{"auroc": null,
#: "why_null": {"auroc": "..."}}``. Producers that know the reason set it; otherwise
#: :func:`strict_json` writes :data:`UNDEFINED`.
WHY_NULL = "why_null"
UNDEFINED = "not a number: undefined for these data (for example, no images to count)"


def cache_dir() -> Path:
    """Where cxrlab keeps derived data (scan results, decoded-image caches).

    ``$CXRLAB_CACHE`` wins, then ``$XDG_CACHE_HOME/cxrlab``, then ``~/.cache/cxrlab``. The
    dataset folder itself is never written to: it may be read-only.
    """
    if env := os.environ.get("CXRLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cxrlab"


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity, where the OS tells it; else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


def atomic_write_rows(
    path: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    fieldnames: list[str] | None = None,
    extrasaction: str = "raise",
) -> None:
    """Dict rows as a CSV file, written atomically (columns: ``fieldnames``, else the first
    row's keys; ``extrasaction="ignore"`` leaves other keys out)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames or list(rows[0]), lineterminator="\n",
                       extrasaction=extrasaction)  # type: ignore[arg-type]  # fmt: skip
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _strict(value: Any) -> tuple[Any, bool]:
    """``value`` with every non-finite number as ``None``, and whether it held one."""
    if isinstance(value, dict):
        return strict_json(value), False
    if isinstance(value, (list, tuple)):
        items = [_strict(v) for v in value]
        return [v for v, _ in items], any(bad for _, bad in items)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy values
        return _strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None, True
    return value, False


def strict_json(obj: Any) -> Any:
    """``obj`` made strict JSON: NaN and infinities become ``null``, numpy values plain
    Python ones, and every dict that held such a number says why beside it, under
    :data:`WHY_NULL` (the producer's reason where it gave one)."""
    if not isinstance(obj, dict):
        return _strict(obj)[0]
    out: dict[str, Any] = {}
    why = dict(obj.get(WHY_NULL) or {})
    for key, value in obj.items():
        if key == WHY_NULL:
            continue
        out[key], bad = _strict(value)
        if bad:
            why.setdefault(str(key), UNDEFINED)
    if why:
        out[WHY_NULL] = why
    return out


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (see :func:`strict_json`), atomically."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


class DisjointSets:
    """Union-find over hashable items (path halving): :meth:`join` links two items' sets
    and the smallest item of a set is its root, so a set's name does not depend on the
    order of the joins."""

    def __init__(self) -> None:
        self._parent: dict[Any, Any] = {}

    def find(self, item: Any) -> Any:
        """The root of ``item``'s set (an item never seen is its own)."""
        parent = self._parent
        while parent.setdefault(item, item) != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def join(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)
