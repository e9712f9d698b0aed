"""Typed configuration objects and cards: dataclasses checked on the way in.

``from_dict`` rejects unknown keys (with a did-you-mean) and values of the wrong type, naming
the key, so a typo in a config file or a call never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from .errors import CheckpointError, ConfigError

__all__ = ["check_format", "from_dict", "option"]

T = TypeVar("T")


def _check(value: Any, hint: Any, key: str, section: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key, section)
            except ConfigError:
                continue
        raise ConfigError(f"{section}{key} = {value!r} has the wrong type (expected {hint})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{section}{key} must be one of {', '.join(map(repr, args))}; got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{section}{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], key, section) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{section}{key} needs {len(args)} values, got {len(value)}")
        return tuple(_check(v, a, key, section) for v, a in zip(value, args))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{section}{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{section}{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{section}{key} must be a string, got {value!r}")
        return value
    return value


def option(default: Any, help: str, *, panel: str = "") -> Any:
    """A config field that carries its command-line help: ``lr: float = option(1e-3,
    "Learning rate.", panel="Training")``. The command line is generated from such fields
    (:func:`cxrlab.cli.common.config_parameters`): their type gives the flag's type and a
    ``Literal`` its choices, so a new option is one field in one place."""
    return dataclasses.field(default=default, metadata={"help": help, "panel": panel})


def from_dict(cls: type[T], data: dict[str, Any], section: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and value types.

    Args:
        cls: a dataclass type.
        data: key/value pairs (e.g. one TOML table).
        section: a prefix for error messages, like ``"[train] "``.

    Raises:
        ConfigError: an unknown key (with a suggestion) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown key {key!r} in {(section or cls.__name__).strip()}{hint}")
        out[key] = _check(value, hints[key], key, section)
    try:
        return cls(**out)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{section or cls.__name__}: {e}") from e


def check_format(
    card: dict[str, Any], expected: str, where: str, what: str = "cxrlab model card"
) -> None:
    """Refuse another kind of card, and a newer version of this kind, with one line
    (``expected`` is ``kind/version``: a run's, an ensemble's or a segmenter's card).

    Raises:
        CheckpointError: the card's format is another kind, or a newer version.
    """
    fmt = str(card.get("format"))
    kind, _, version = fmt.rpartition("/")
    want_kind, _, want_version = expected.rpartition("/")
    if kind == want_kind and version.isdigit() and int(version) > int(want_version):
        raise CheckpointError(
            f"{where} is a {fmt} card, written by a newer cxrlab than this one (which reads "
            f"{expected}); upgrade cxrlab to use it"
        )
    if fmt != expected:
        raise CheckpointError(f"{where} is not a {what} (format {fmt!r})")
