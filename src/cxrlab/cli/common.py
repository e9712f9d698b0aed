"""What every command shares: the Typer apps, the options most commands have (one
declaration each), and the command line generated from a typed config.

A config dataclass whose fields are declared with :func:`cxrlab.typed_config.option` becomes
command-line options by :func:`config_parameters`: the field's type gives the flag's type (a
``Literal`` its choices, a tuple a repeatable flag), its metadata the help text and panel.
:func:`config_from_options` turns the parsed values back into the config.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .. import __version__
from ..errors import CxrlabError

__all__ = [
    "BatchSize",
    "Device",
    "Progress",
    "ResumeOpt",
    "ScoreClassMap",
    "ScoreSplit",
    "Seed",
    "analyze_app",
    "app",
    "config_from_options",
    "config_parameters",
    "data_app",
    "external_sets",
    "parse_ratios",
    "parse_values",
    "segment_app",
    "study_app",
    "with_config_options",
]

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray classification and transfer-learning studies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(
    help="Scan, split, cache, synthesise and download datasets.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
study_app = typer.Typer(
    help="Run a grid of trainings from a TOML file and report on it.", no_args_is_help=True
)
app.add_typer(study_app, name="study")
analyze_app = typer.Typer(
    help="Analyses of finished runs: why pretraining helps.", no_args_is_help=True
)
app.add_typer(analyze_app, name="analyze")
segment_app = typer.Typer(
    help="Lung segmentation: train a segmenter, score it, and write masks for any dataset.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Chest X-ray classification and transfer-learning studies."""


# ----------------------------------------------------------------- options most commands have
#: ``--device``: where models run.
Device = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")]
#: ``--progress/--no-progress``.
Progress = Annotated[bool, typer.Option(help="Progress bars.")]
#: ``--resume`` of the commands that write a resumable run folder (train, pretrain).
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue an interrupted run in --out.", rich_help_panel="Runtime")
]
#: ``--batch-size``.
BatchSize = Annotated[int, typer.Option(help="Images per batch.")]
#: ``--seed``.
Seed = Annotated[int, typer.Option(help="Random seed.")]

#: ``--split`` of the commands that score a run.
ScoreSplit = Annotated[
    str, typer.Option(help="test, val, train (the run's split) or all (every image).")
]
#: ``--class-map`` of the commands that score a run on another dataset.
ScoreClassMap = Annotated[
    str | None,
    typer.Option(
        help="Map dataset classes to the model's: 'COVID-19=COVID,Non-COVID=-' "
        "('-': not scored, only where its images went)."
    ),
]
ExternalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external",
        help="After training, score every run on this dataset too: NAME=PATH (repeatable); "
        "copies of training images are left out first.",
    ),
]
ExternalMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external-class-map",
        help="An external set's class map: NAME=DATASET_CLASS=MODEL_CLASS,... "
        "('-': not scored), e.g. quex=Non-COVID=-,COVID-19=COVID.",
    ),
]
MasksFrom = Annotated[
    Path | None,
    typer.Option(help="For runs trained with --lungs: a lung segmenter run instead of theirs."),
]
Doubtful = Annotated[
    Literal["skip", "keep"],
    typer.Option(help="An image whose lung mask is doubtful: skip it (say why) or keep it."),
]


def external_sets(external: list[str] | None, maps: list[str] | None) -> tuple:
    """``--external`` and ``--external-class-map`` as external sets."""
    from ..runs.external_sets import parse_external, parse_external_maps

    by_name = parse_external_maps(maps or [])
    sets = tuple(parse_external(text, by_name) for text in external or [])
    unknown = sorted(set(by_name) - {e.name for e in sets})
    if unknown:
        raise CxrlabError(f"--external-class-map names {unknown[0]!r}, which no --external names")
    return sets


def parse_values(text: str, kinds: tuple[type, ...], flag: str, example: str) -> tuple:
    """``"0.7,0.15,0.15"`` -> ``(0.7, 0.15, 0.15)``: one comma-separated value per type in
    ``kinds``; a wrong count or value is one line naming ``--flag``."""
    try:
        parts = tuple(kind(p) for kind, p in zip(kinds, text.split(",")))
    except ValueError:
        parts = ()
    if len(parts) != len(kinds) or len(text.split(",")) != len(kinds):
        count = {2: "two", 3: "three"}.get(len(kinds), str(len(kinds)))
        what = "numbers" if all(k in (int, float) for k in kinds) else "values"
        raise CxrlabError(
            f"--{flag} must be {count} comma-separated {what} like {example}, got {text!r}"
        )
    return parts


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> ``(0.7, 0.15, 0.15)``."""
    return parse_values(text, (float, float, float), "ratios", "0.7,0.15,0.15")


# ------------------------------------------------------------- the command line from a config
def _cli_type(hint: Any, default: Any) -> tuple[Any, Any]:
    """The command-line type and default of a config field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args and args[-1] is Ellipsis:  # repeatable
        return list[args[0]] | None, None  # type: ignore[valid-type]
    if origin is tuple:  # a fixed number of values: one comma-separated text
        return str, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if any(typing.get_origin(a) is tuple for a in rest):  # one value or several
            return list[str], [default]
    return hint, default


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per field of the config dataclass ``cls``, annotated as a Typer
    option with the field's help, panel and choices."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, default = _cli_type(hints[f.name], f.default)
        info = typer.Option(help=f.metadata.get("help"), rich_help_panel=f.metadata.get("panel"))
        annotation = Annotated[kind, info]
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return params


def config_from_options(cls: type, options: dict[str, Any], section: str = "") -> Any:
    """The config ``cls`` from parsed :func:`config_parameters` values (unknown keys refused)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for name, value in options.items():
        hint = hints.get(name)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple and not (args and args[-1] is Ellipsis):  # "a,b,c"
            example = _cli_type(hint, defaults[name])[1]
            value = parse_values(value, args, name.replace("_", "-"), example)
        elif origin is tuple:
            value = tuple(value or ())
        elif isinstance(value, list):  # one value or several
            value = value[0] if len(value) == 1 else tuple(value)
        values[name] = value
    return cls.from_dict(values, section=section)


def with_config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command, besides its own parameters, one option per field of ``cls``; the
    command receives them as keyword arguments."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())
        own = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        func.__signature__ = inspect.Signature([*own, *config_parameters(cls)])  # type: ignore[attr-defined]
        return func

    return wrap
