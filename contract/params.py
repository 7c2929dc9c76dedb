"""params.yaml -> frozen dataclass, with `-S section.key=value` overrides.

Every step reads only its own section of ``params.yaml`` into its config dataclass.
Overrides use the syntax of ``dvc exp run -S``: ``-S train.embedding.compression=100``;
the value is parsed as YAML (so ``3``, ``0.5``, ``true``, ``[a, b]`` keep their types).

Example:
    >>> cfg = load_config(GenerateConfig, "generate", "params.yaml", ["generate.rows=1000"])
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from contract.io import plain

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


def add_params_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--params PATH`` and repeatable ``-S section.key=value`` to a step's parser."""
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS,
        help="parameters file (default: params.yaml; built-in defaults if it does not exist)",
    )
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one parameter, as `dvc exp run -S` does (repeatable)",
    )


def read_params(path: Path | str | None) -> dict[str, Any]:
    """The whole parameters file as a dict ({} when ``path`` is None or the default is absent)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        if path == DEFAULT_PARAMS:
            return {}
        raise ValueError(f"parameters file {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(section: str, values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``values`` (one section) with ``section.a.b=v`` overrides applied."""
    out = _deep_copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        parts = key.strip().split(".")
        if parts[0] != section:
            raise ValueError(f"override {item!r} is for section {parts[0]!r}; this step reads {section!r}")
        if len(parts) < 2:
            raise ValueError(f"override {item!r} names a whole section; name a key: {section}.KEY=VALUE")
        node = out
        for p in parts[1:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def from_dict(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Builds dataclass ``cls`` from ``values``, recursing into nested dataclasses.

    Unknown keys and values of the wrong type raise ``ValueError`` naming the key.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    values = _move_aliases(cls, values, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _move_aliases(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Applies ``cls.PARAM_ALIASES`` ({"key": "deeper.path"}): a section may name a nested
    setting at its top (``train.embedding`` for ``train.model.embedding``)."""
    aliases: dict[str, str] = getattr(cls, "PARAM_ALIASES", {})
    if not any(k in values for k in aliases):
        return values
    values = _deep_copy(values)
    for key, target in aliases.items():
        if key not in values:
            continue
        *parents, leaf = target.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where}.{part} must be a mapping, got {node!r}")
        if leaf in node:
            raise ValueError(f"{where}.{key} and {where}.{target} are the same setting; set only {where}.{key}")
        node[leaf] = values.pop(key)
    return values


def load_config(cls: type[T], section: str, params: Path | str | None = DEFAULT_PARAMS,
                overrides: list[str] | None = None) -> T:
    """Reads ``section`` of the parameters file into ``cls``, applying ``overrides``."""
    data = read_params(params)
    values = data.get(section) or {}
    values = apply_overrides(section, values, overrides or [])
    return from_dict(cls, values, section)


def as_dict(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with tuples turned into lists (JSON/YAML friendly)."""
    return plain(dataclasses.asdict(cfg))


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"{where} = {value!r}; expected one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} = {value!r}; expected a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} = {value!r}; expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} = {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{where} = {value!r}; expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} = {value!r}; expected a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{where} = {value!r}; expected a string")
        return str(value)
    if tp is Path:
        return Path(value)
    return value
