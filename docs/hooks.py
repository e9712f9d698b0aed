"""MkDocs hooks: every public object of the documented packages must have a docstring (a
warning, so ``mkdocs build --strict`` fails), and the table of ``cxrlab train`` options is
generated from :class:`cxrlab.engine.TrainConfig`'s fields, the one place they are declared."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import typing

log = logging.getLogger("mkdocs.plugins.cxrlab")

#: The packages the API reference documents (docs/reference/).
PACKAGES = (
    "cxrlab",
    "cxrlab.data",
    "cxrlab.models",
    "cxrlab.engine",
    "cxrlab.runs",
    "cxrlab.training",
    "cxrlab.evaluation",
    "cxrlab.segment",
    "cxrlab.infer",
    "cxrlab.audit",
    "cxrlab.shift",
    "cxrlab.adapt",
    "cxrlab.analysis",
    "cxrlab.study",
)
MARKER = "<!-- train-options -->"


def _undocumented(obj: object) -> bool:
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return not doc or doc.startswith(f"{obj.__name__}(")  # the generated signature
    return not doc.strip()


def on_pre_build(config: object) -> None:
    for name in PACKAGES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and _undocumented(obj):
                log.warning(f"{name}.{attr} has no docstring")


def _options_table() -> str:
    from cxrlab.engine import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    rows = ["| option | default | choices | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        choices = ", ".join(map(str, typing.get_args(hint)))
        choices = choices if typing.get_origin(hint) is typing.Literal else ""
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        flag = f"`--{f.name.replace('_', '-')}`"
        rows.append(f"| {flag} | `{default}` | {choices} | {f.metadata.get('help', '')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return markdown.replace(MARKER, _options_table()) if MARKER in markdown else markdown
