"""Which images show one patient: kept in one split, and left out of held-out scores together.

Several X-rays of one patient are not independent: a model that trained on one of them has
seen the patient, so another of them in validation or test, or in a "held-out" set, is not
held out. Copies of one radiograph are found by content (:mod:`cxrlab.data.dedup`); images of
one patient are different radiographs, so only the data can say which belong together.

A *patient rule* says how, per source:

``kermany`` (built in)
    The paediatric collection of Kermany et al. 2018 and its redistributions name each file
    after its patient: ``person124_virus_238.jpeg`` (patient ``person124``; its bacterial
    and viral images are one child), ``IM-0119-0001.jpeg`` (``IM-0119``) and
    ``NORMAL2-IM-0588-0001.jpeg`` (``NORMAL2-IM-0588``).
``re:PATTERN``
    A regular expression searched in the file name: its group named ``patient``, else its
    first group, else the whole match, is the patient. A file it does not match has no known
    patient.
``FILE.csv`` or ``FILE.csv#COLUMN``
    A CSV with a ``path`` column (relative to the source's folder, or a bare file name) and
    a patient column (``patient`` unless named after ``#``), as many releases ship one.
``none``
    Patients are not known.

Without a rule a source gets ``auto``: the Kermany naming wherever a file name follows it,
nothing elsewhere (no other public naming is known to carry the patient). Patients are keyed
``kermany:person124`` for the built-in rule, so that one child is one patient in every folder
that names files the Kermany way, and ``SOURCE:ID`` for a source's own rule.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..utils import DisjointSets

__all__ = [
    "KERMANY_PATTERN",
    "PatientRule",
    "parse_patient_rule",
    "parse_patient_rules",
    "patient_ids",
]

#: The Kermany et al. 2018 file names' patient: ``person124``, ``IM-0119``,
#: ``NORMAL2-IM-0588`` (followed by ``_`` or ``-`` and the image's own number).
KERMANY_PATTERN = r"^(?P<patient>person\d+|(?:NORMAL2-)?IM-\d+)(?=[-_])"
_KERMANY = re.compile(KERMANY_PATTERN)
_KINDS = ("auto", "kermany", "regex", "csv", "none")


@dataclass(frozen=True)
class PatientRule:
    """How one source's images name their patient (see the module docstring).

    Attributes:
        kind: ``auto``, ``kermany``, ``regex``, ``csv`` or ``none``.
        pattern: the regular expression (``regex``).
        path: the CSV file (``csv``).
        column: the CSV's patient column.
    """

    kind: str = "auto"
    pattern: str = ""
    path: str = ""
    column: str = "patient"

    @property
    def namespace(self) -> str | None:
        """The prefix of this rule's patient keys (``None``: the source's name)."""
        return "kermany" if self.kind in ("auto", "kermany") else None

    def __str__(self) -> str:
        if self.kind == "regex":
            return f"re:{self.pattern}"
        if self.kind == "csv":
            return self.path + (f"#{self.column}" if self.column != "patient" else "")
        return self.kind

    def ids(self, files: Sequence[tuple[str, str]], source: str) -> list[str]:
        """Each file's patient id (``""`` when not known); ``files`` are ``(path relative to
        the source's folder, file name)``.

        Raises:
            DataError: an explicit rule that names no file's patient (a pattern that matches
                no name, a CSV that names none of the files), or an unreadable CSV.
        """
        if self.kind == "none":
            return [""] * len(files)
        if self.kind == "csv":
            table = _read_csv(Path(self.path), self.column)
            out = [_lookup(table, rel) for rel, _ in files]
        else:
            regex = _KERMANY if self.kind in ("auto", "kermany") else re.compile(self.pattern)
            out = [_match(regex, name) for _, name in files]
        if self.kind != "auto" and files and not any(out):
            first = files[0][1]
            raise DataError(
                f"The patient rule {str(self)!r} of source {source!r} names the patient of none "
                f"of its {len(files)} images (first file name: {first!r}); fix the rule, or "
                "give 'none' if its patients are not known"
            )
        return out


def _match(regex: re.Pattern[str], name: str) -> str:
    m = regex.search(name)
    if m is None:
        return ""
    if "patient" in regex.groupindex:
        return m.group("patient") or ""
    return (m.group(1) if regex.groups else m.group(0)) or ""


def _lookup(table: Mapping[str, str], rel: str) -> str:
    """The patient of ``rel`` in a CSV's table: by its path, or by a shorter end of it (the
    CSV's paths may start below the source's folder), down to the bare file name."""
    parts = rel.split("/")
    for k in range(len(parts)):
        hit = table.get("/".join(parts[k:]))
        if hit:
            return hit
    return ""


def _read_csv(path: Path, column: str) -> dict[str, str]:
    """``{path or file name: patient}`` from a patient CSV."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except OSError as e:
        raise DataError(f"Cannot read the patient CSV {path}: {e.strerror or e}") from e
    if not rows or not {"path", column} <= set(rows[0]):
        raise DataError(f"The patient CSV {path} needs 'path' and {column!r} columns")
    out: dict[str, str] = {}
    for r in rows:
        rel = (r["path"] or "").strip().replace("\\", "/")
        patient = (r[column] or "").strip()
        if rel and patient:
            out[rel] = patient
    return out


def parse_patient_rule(text: str) -> PatientRule:
    """``"kermany"``, ``"re:PATTERN"``, ``"FILE.csv[#COLUMN]"``, ``"none"`` or ``"auto"`` ->
    a :class:`PatientRule`.

    Raises:
        ConfigError: anything else, or a pattern that does not compile.
    """
    text = text.strip()
    if text in ("auto", "kermany", "none"):
        return PatientRule(text)
    if text.startswith("re:"):
        pattern = text[3:]
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"Patient rule {text!r}: not a regular expression ({e})") from e
        if not pattern:
            raise ConfigError("Patient rule 're:' needs a pattern, e.g. re:^(P\\d+)_")
        return PatientRule("regex", pattern=pattern)
    path, _, column = text.partition("#")
    if path.lower().endswith(".csv"):
        return PatientRule("csv", path=path, column=column or "patient")
    raise ConfigError(
        f"Patient rule {text!r}: give kermany, re:PATTERN, FILE.csv[#COLUMN], auto or none"
    )


def parse_patient_rules(texts: Sequence[str], sources: Sequence[str]) -> dict[str, PatientRule]:
    """Each source's rule from ``NAME=RULE`` texts (with one source, ``RULE`` will do);
    sources not named get ``auto``.

    Raises:
        ConfigError: a rule for a source that is not there, two rules for one source, or a
            rule without a name among several sources.
    """
    out = dict.fromkeys(sources, PatientRule())
    given: set[str] = set()
    for text in texts:
        name, sep, rule = text.partition("=")
        if not sep or name not in out:
            if len(sources) == 1 and (not sep or name not in out):
                name, rule = sources[0], text
            else:
                raise ConfigError(
                    f"--patients {text!r}: write NAME=RULE with NAME one of the sources "
                    f"({', '.join(sources)})"
                )
        if name in given:
            raise ConfigError(f"--patients: two rules for source {name!r}")
        given.add(name)
        out[name] = parse_patient_rule(rule)
    return out


def patient_ids(
    root: str | Path, paths: Sequence[str], rules: Sequence[str] = ()
) -> dict[str, str]:
    """``{path: patient key}`` of the images at ``paths`` (relative to ``root``) whose
    patient is known, by each source's rule (``NAME=RULE`` texts, see the module docstring).

    In a view of several sources (:mod:`cxrlab.data.sources`) each image's rule is its
    source's, applied to the file it links to; in a plain folder the one source is the
    folder.

    Raises:
        ConfigError: a rule that does not parse or names no source (see
            :func:`parse_patient_rules`).
        DataError: an explicit rule that names no image's patient.
    """
    from .sources import view_origins

    root = Path(root)
    origins = view_origins(root)  # {path: (source, path relative to its folder)}
    by_source: dict[str, list[str]] = {}
    for p in paths:
        source = origins[p][0] if p in origins else root.name
        by_source.setdefault(source, []).append(p)
    names = list(by_source) if origins else [root.name]
    if origins:  # a view: every source it was built from, with images here or not
        names = list(dict.fromkeys([*(s for s, _ in origins.values()), *names]))
    rules_by = parse_patient_rules(rules, names)
    out: dict[str, str] = {}
    for source, members in by_source.items():
        rule = rules_by[source]
        rels = [origins[p][1] if p in origins else p for p in members]
        files = [(rel, rel.rsplit("/", 1)[-1]) for rel in rels]
        prefix = rule.namespace or source
        for p, pid in zip(members, rule.ids(files, source)):
            if pid:
                out[p] = f"{prefix}:{pid}"
    return out


def group_units(
    paths: Sequence[str], copy_keys: Sequence[str], patients: Mapping[str, str]
) -> list[str]:
    """Each image's split unit: its copy group joined with every image of its patient,
    directly or through copies (one radiograph of two children's files links them). A unit's
    key is the smallest copy-group key in it, so an image without a patient keeps its copy
    group's key, and a split of data without patients is drawn exactly as before."""
    sets = DisjointSets()
    first: dict[str, str] = {}
    for p, k in zip(paths, copy_keys):
        patient = patients.get(p)
        if patient:
            sets.join(k, first.setdefault(patient, k))
    return [sets.find(k) for k in copy_keys]
