"""Several sources as one dataset: every image keeps the source it came from.

A model trained on one compilation learns its quirks (its hospitals, its devices, its
patients' ages) along with the classes. Training on several sources, and knowing which
image came from where, is the first defence and the only way to measure it.

:func:`combine_sources` builds a *view*: a folder in the Kaggle layout whose files are links
to the sources' images, each under its (mapped) class::

    <view>/Pneumonia/images/sample__Lung_Opacity__Lung_Opacity-1.png -> <sample>/...
    <view>/Pneumonia/images/quex__Train__Non-COVID__non_COVID (1).png -> <quex>/...
    <view>/sources.csv                       path,source,origin (one row per image)
    <view>/sources.json                      the sources, their class maps and counts

Every command reads a view as it reads any dataset (scan, split, caches, masks: a linked
image's masks are found beside the file it links to). Views live in the cache, keyed by the
sources' folders and class maps, and are rebuilt from a run's card when the cache is gone.

Class maps rename classes (``Lung_Opacity=Pneumonia``), merge them (two classes mapped to
one name) and drop them (``Non-COVID=-``). A source's images get its name as their source,
or a finer one from a CSV of ``path,source`` rows (paths relative to that source's folder).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..utils import atomic_write_text, cache_dir, hash_strings
from .layout import find_layout, parse_class_map

__all__ = [
    "DROP",
    "METADATA",
    "SOURCES_FILE",
    "Source",
    "class_source_table",
    "combine_sources",
    "confounds",
    "data_root",
    "parse_sources",
    "read_sources",
    "view_origins",
]

#: A class map's target that leaves a class out.
DROP = "-"
#: The file at a view's root naming each image's source.
SOURCES_FILE = "sources.csv"
_SPEC_FILE = "sources.json"
_VIEW_VERSION = 2


@dataclass(frozen=True)
class Source:
    """One dataset among several: a name, its folder, and how its classes map.

    Attributes:
        name: how results name it (a folder-name-like word: letters, digits, ``-_.``).
        root: its dataset folder (any layout :func:`~cxrlab.data.layout.find_layout` reads).
        class_map: ``{dataset class: class}``; ``-`` drops a class; unmapped classes keep
            their names.
        finer: a CSV of ``path,source`` rows (paths relative to ``root``) naming finer
            sources (hospitals, collections) for some or all of its images; or
            ``"metadata"``: the collections the release's own spreadsheets name.
    """

    name: str
    root: str
    class_map: Mapping[str, str] = field(default_factory=dict)
    finer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(Path(self.root).resolve()),
                "class_map": dict(sorted(self.class_map.items())), "finer": self.finer}  # fmt: skip


def parse_sources(
    data: Sequence[str], class_maps: Iterable[str] = (), finer: Iterable[str] = ()
) -> tuple[Source, ...]:
    """Sources from ``--data [NAME=]PATH`` texts, ``--class-map NAME=FROM=TO,...`` texts and
    ``--sources-csv NAME=FILE`` texts. A source without a name is named after its folder.

    Raises:
        ConfigError: a malformed text, two sources with one name, or a map or CSV naming no
            source.
    """
    sources: list[Source] = []
    for text in data:
        name, sep, path = text.partition("=")
        if not sep or os.path.exists(text):  # a plain path (which may hold '=')
            name, path = Path(text).resolve().name, text
        name = name.strip()
        if not path.strip():
            raise ConfigError(f"Source {name!r} names no folder: give --data {name}=PATH")
        if not re.fullmatch(r"[\w.\-]+", name):
            raise ConfigError(
                f"Source name {name!r} (from --data {text!r}) must be letters, digits, '-', "
                "'_' or '.'; name it with --data NAME=PATH"
            )
        sources.append(Source(name, path.strip()))
    names = [s.name for s in sources]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"Two --data sources are named {twice!r}; name them with NAME=PATH")

    def by_name(texts: Iterable[str], option: str, example: str) -> dict[str, str]:
        out = {}
        for text in texts:
            name, sep, rest = text.partition("=")
            if not sep or not rest.strip():
                raise ConfigError(f"{option} looks like {example}; got {text!r}")
            if name.strip() not in names:
                raise ConfigError(
                    f"{option} names source {name.strip()!r}, which no --data names "
                    f"(sources: {', '.join(names)})"
                )
            out[name.strip()] = rest.strip()
        return out

    maps = by_name(class_maps, "--class-map", "NAME=DATASET_CLASS=CLASS[,...]")
    csvs = by_name(finer, "--sources-csv", "NAME=FILE.csv")
    return tuple(Source(s.name, s.root, parse_class_map(maps.get(s.name)), csvs.get(s.name))
                 for s in sources)  # fmt: skip


#: ``--sources-csv NAME=metadata``: the finer sources from the release's own spreadsheets.
METADATA = "metadata"


def _metadata_sources(src: Source, root: Path) -> dict[str, str]:
    """``{file stem (lower case): finer source}`` from the Kaggle release's per-class
    ``<Class>.metadata.xlsx`` (columns ``FILE NAME`` and ``URL``): each image's collection
    is the host of the URL it was taken from (``NAME:host``)."""
    from urllib.parse import urlparse

    sheets = sorted(root.glob("*.metadata.xlsx")) + sorted(root.glob("*/*.metadata.xlsx"))
    if not sheets:
        raise DataError(
            f"Source {src.name!r}: no <Class>.metadata.xlsx in {root} to read finer sources "
            "from (the Kaggle release ships them); give a CSV of path,source instead"
        )
    try:
        import openpyxl
    except ImportError as e:
        raise DataError("Reading metadata spreadsheets needs openpyxl: pip install openpyxl") from e
    out: dict[str, str] = {}
    for sheet in sheets:
        try:
            rows = list(
                openpyxl.load_workbook(sheet, read_only=True).active.iter_rows(values_only=True)
            )
        except Exception as e:  # not a workbook: openpyxl raises several types
            raise DataError(f"Cannot read {sheet} as a spreadsheet ({e})") from e
        header = [str(c or "").strip().upper() for c in rows[0]] if rows else []
        if "FILE NAME" not in header or "URL" not in header:
            raise DataError(f"{sheet} has no 'FILE NAME' and 'URL' columns")
        name_at, url_at = header.index("FILE NAME"), header.index("URL")
        for row in rows[1:]:
            if row[name_at] is None:
                continue
            url = str(row[url_at] or "").strip()
            host = urlparse(url).netloc.removeprefix("www.") or url or "unknown"
            out[Path(str(row[name_at]).strip()).stem.lower()] = f"{src.name}:{host}"
    return out


def _finer_sources(src: Source) -> dict[str, str]:
    """``{path relative to the source's folder: finer source}`` from its CSV."""
    if not src.finer or src.finer == METADATA:
        return {}
    path = Path(src.finer)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except OSError as e:
        raise DataError(f"Cannot read the sources CSV {path}: {e.strerror or e}") from e
    if not rows or not {"path", "source"} <= set(rows[0]):
        raise DataError(f"The sources CSV {path} needs 'path' and 'source' columns")
    return {r["path"].strip().replace("\\", "/"): r["source"].strip() for r in rows}


def _view_key(sources: Sequence[Source]) -> str:
    return hash_strings([f"sources-view-v{_VIEW_VERSION}"]
                        + [json.dumps(s.to_dict(), sort_keys=True) for s in sources])  # fmt: skip


def combine_sources(sources: Sequence[Source], out: str | os.PathLike[str] | None = None) -> Path:
    """The view of ``sources`` (see the module docstring), built unless it exists.

    Returns:
        The view's folder (``out``, or one in the cache keyed by the sources).

    Raises:
        DataError: a source folder holds no classes; a class map names a class its source
            does not have; a source has no image left after its map; two sources spell one
            class two ways; a sources CSV names files its source does not have.
    """
    if not sources:
        raise ConfigError("Give at least one source")
    key = _view_key(sources)
    view = Path(out) if out is not None else cache_dir() / "sources" / key
    spec_path = view / _SPEC_FILE
    if spec_path.is_file():
        try:
            if json.loads(spec_path.read_text()).get("key") == key:
                return view
        except ValueError:
            pass
    links: list[tuple[str, Path, str]] = []  # (view path, origin, source)
    used: set[str] = set()
    spelled: dict[str, tuple[str, str]] = {}  # normalised class -> (spelling, source)
    counts = {src.name: _link_source(src, links, used, spelled) for src in sources}
    _write_view(view, links, {"key": key, "sources": [s.to_dict() for s in sources],
                              "images": counts})  # fmt: skip
    return view


def _link_source(src: Source, links: list[tuple[str, Path, str]], used: set[str],
                 spelled: dict[str, tuple[str, str]]) -> dict[str, int]:  # fmt: skip
    """Add ``src``'s images to ``links`` under their mapped classes; its images per class.

    Raises:
        DataError: see :func:`combine_sources`.
    """
    layout = find_layout(src.root, min_classes=1)
    present = {c.name for c in layout.classes}
    for name in src.class_map:
        if name not in present:
            raise DataError(
                f"The class map of source {src.name!r} names {name!r}, which it does not "
                f"have (its classes: {', '.join(sorted(present))})"
            )
    finer = _finer_sources(src)
    meta = _metadata_sources(src, layout.root) if src.finer == METADATA else {}
    seen_rel: set[str] = set()
    mine: Counter[str] = Counter()
    for folder in layout.classes:
        target = src.class_map.get(folder.name, folder.name)
        if target == DROP:
            continue
        norm = re.sub(r"[\s_\-.]+", "", target).lower()
        first = spelled.setdefault(norm, (target, src.name))
        if first[0] != target:
            raise DataError(
                f"Sources name one class two ways: {first[0]!r} ({first[1]}) and "
                f"{target!r} ({src.name}); map them to one name with --class-map"
            )
        for f in folder.files():
            rel = f.relative_to(layout.root).as_posix()
            seen_rel.add(rel)
            source = finer.get(rel) or meta.get(f.stem.lower()) or src.name
            links.append((f"{target}/images/{_flat(src.name, rel, used)}", f.resolve(),
                          source))  # fmt: skip
            mine[target] += 1
    if not mine:
        raise DataError(f"Source {src.name!r} has no image left after its class map")
    missing = sorted(set(finer) - seen_rel)
    if missing:
        raise DataError(
            f"The sources CSV of {src.name!r} names {len(missing)} file(s) that "
            f"{src.name} does not have (first: {missing[0]}; paths are relative to "
            f"{layout.root})"
        )
    return dict(sorted(mine.items()))


def _write_view(view: Path, links: list[tuple[str, Path, str]], spec: dict[str, Any]) -> None:
    """Write the view atomically: links (or copies) to the images, the sources CSV and the
    spec (which says what the view was built from)."""
    tmp = view.with_name(f".{view.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, origin, _ in links:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(origin, dest)
        except OSError:  # no symlinks here (some Windows setups): a copy
            shutil.copy2(origin, dest)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "source", "origin"])
    w.writerows([rel, source, str(origin)] for rel, origin, source in links)
    atomic_write_text(tmp / SOURCES_FILE, buf.getvalue())
    atomic_write_text(tmp / _SPEC_FILE, json.dumps(spec, indent=2) + "\n")
    shutil.rmtree(view, ignore_errors=True)
    view.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, view)


def _flat(source: str, rel: str, used: set[str]) -> str:
    """A file name in the view for ``rel`` of ``source``: its path with ``__`` for ``/``,
    without ``images`` folders (``sample__COVID__COVID-1.png``); the full path if that
    name is taken."""
    parts = [p for p in rel.split("/") if p.lower() != "images"]
    name = "__".join([source, *parts])
    if name in used:
        name = "__".join([source, *rel.split("/")])
    used.add(name)
    return name


def read_sources(root: str | os.PathLike[str]) -> dict[str, str]:
    """``{path: source}`` of a view (empty for a plain dataset folder)."""
    path = Path(root) / SOURCES_FILE
    if not path.is_file():
        return {}
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return {r["path"]: r["source"] for r in rows}


def view_sources(root: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The sources a view was built from (as :meth:`Source.to_dict`), or ``None``."""
    path = Path(root) / _SPEC_FILE
    try:
        return list(json.loads(path.read_text())["sources"])
    except (OSError, ValueError, KeyError):
        return None


def class_source_table(labels: Sequence[str], sources: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{class: {source: images}}`` over every class and source seen."""
    classes = list(dict.fromkeys(labels))
    names = sorted(set(sources))
    table = {c: dict.fromkeys(names, 0) for c in classes}
    for label, source in zip(labels, sources):
        table[label][source] += 1
    return table


def confounds(table: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Sentences for each class that one source holds entirely, and each source that holds
    one class only (with several sources; empty otherwise)."""
    names = sorted({s for row in table.values() for s in row})
    if len(names) < 2:
        return []
    out = []
    for cls, row in table.items():
        holders = [s for s, n in row.items() if n]
        if len(holders) == 1:
            out.append(f"every {cls} image comes from {holders[0]}: the source predicts the "
                       "class")  # fmt: skip
    for s in names:
        held = [c for c, row in table.items() if row.get(s)]
        if len(held) == 1:
            out.append(f"{s} holds {held[0]} only: its images are that class by source alone")
    return out


def data_root(root: str, built_from: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The folder a run's images came from (its card's data root); a view of several
    sources (``built_from``, as :func:`view_sources` records them) that is no longer in the
    cache is built again from them."""
    if built_from and not Path(root).is_dir():
        return str(combine_sources([Source(**s) for s in built_from], out=root))
    return root


def view_origins(root: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """``{path: (source, path relative to the source's folder)}`` of a view's images (empty
    for a plain dataset folder). The source is the one the view was built from (not a finer
    one); where its folder has moved, the path is the linked file's name alone."""
    root = Path(root)
    path = root / SOURCES_FILE
    specs = view_sources(root)
    if not path.is_file() or not specs:
        return {}
    folders = {str(s["name"]): Path(str(s["root"])) for s in specs}
    resolved = {n: f.resolve() for n, f in folders.items()}
    by_length = sorted(folders, key=len, reverse=True)  # "a_b" before "a"
    out: dict[str, tuple[str, str]] = {}
    for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
        flat = r["path"].rsplit("/", 1)[-1]
        name = next((n for n in by_length if flat.startswith(f"{n}__")), None)
        if name is None:
            continue
        origin = Path(r["origin"])
        try:
            rel = origin.relative_to(resolved[name]).as_posix()
        except ValueError:
            rel = origin.name
        out[r["path"]] = (name, rel)
    return out
