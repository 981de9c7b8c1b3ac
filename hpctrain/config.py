"""Typed configs: strict loading of nested dataclasses from YAML/dicts, and overrides.

Every config section is a ``@dataclass(kw_only=True, slots=True)`` whose fields carry a
docstring-like ``metadata={"help": ...}``; checks live in ``__post_init__``. This module
holds the machinery; the sections themselves live next to the code that uses them.

Typos fail loudly: a silently ignored ``partiton=`` wastes a queue wait.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

from hpctrain.errors import ConfigError

T = TypeVar("T")

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert only the lossless cases
    (int -> float, str -> Path, nested mapping -> dataclass)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        nullable = " (or null)" if type(None) in args else ""
        if len(errors) == 1:  # the one real alternative says precisely what was wrong
            raise ConfigError(errors[0] + nullable)
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}: " + "; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: got {value!r}, expected one of {list(allowed)}{extra}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a list")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {value!r}, expected a section (mapping) of {tp.__name__}")
        return from_mapping(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads "1e-3" (no dot) as a string: accept plain
        # numeric strings so `lr: 1e-3` and `--set optimizer.lr=1e-3` mean what users expect.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a string")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: got {value!r}, expected a path")
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with the valid list."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    missing = [f.name for f in fields.values()
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        # said here, so that a TypeError from the class itself stays what it is: a bug
        raise ConfigError(f"{where or cls.__name__}: missing required key(s) {', '.join(repr(m) for m in missing)}; "
                          "add them")
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {name!r}.{hint} Valid keys{' of ' + where if where else ''}: "
                              f"{', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if where and not str(e).startswith(where):
            raise ConfigError(f"{where}.{e}") from None
        raise


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    hint = "pass the path of a YAML file (examples: docs/examples/)"
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; {hint}")
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist; {hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {str(path)!r} is not a text file (byte {e.start} is not UTF-8: a binary file, "
                          f"e.g. a shard or checkpoint, given where the YAML config goes?); {hint}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror or e}; check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) to ``data``."""
    import yaml

    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            child = dict(child) if isinstance(child, dict) else {}
            node[k] = child
            node = child
        node[keys[-1]] = value
    return out


def field_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field, for generated reference docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


# ---------------------------------------------------------------- CLI flags from dataclass fields

def _flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _cli_fields(cls: type, only: typing.Iterable[str] | None) -> list[dataclasses.Field]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields) if only is None else list(only)
    unknown = [n for n in names if n not in fields]
    if unknown:  # a programming error in a command module, not a user error
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return [fields[n] for n in names]


def add_flags(parser: Any, cls: type, only: typing.Iterable[str] | None = None) -> None:
    """One argparse flag per field of dataclass ``cls`` (or the fields named in ``only``).

    The flag is ``--field-name`` unless the field's metadata names another (``"flag"``); its
    default is the field's default and its help the field's ``"help"``, followed by the default
    (``"default_text"`` in the metadata words it, e.g. "unlimited"). So a default is written once,
    in the dataclass. Supported: int, float, str, Path, their ``| None`` forms, bool (a switch for
    a False default, ``--no-...`` for a True one), list[str] (repeatable) and Literal (choices).
    """
    import argparse

    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls, only):
        tp = hints[f.name]
        if get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        default = _field_default(f)
        help_ = f.metadata.get("help", "")
        shown = f.metadata.get("default_text", default)
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        if tp is bool:
            if default:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["action"] = "store_true"
        elif get_origin(tp) is list:
            kw.update(action="append", metavar=f.metadata.get("metavar"))
        else:
            if get_origin(tp) is Literal:
                kw["choices"] = list(get_args(tp))
            else:
                kw["type"] = tp if tp in (int, float, str, Path) else str
                kw["metavar"] = f.metadata.get("metavar") or _flag_of(f).lstrip("-").upper().replace("-", "_")
            if shown is not None:
                help_ = f"{help_} (default {shown})" if help_ else f"default {shown}"
        parser.add_argument(_flag_of(f), help=help_, **kw)


def flag_values(cls: type, args: Any, only: typing.Iterable[str] | None = None) -> dict[str, Any]:
    """The values :func:`add_flags` parsed for ``cls``, by field name (keyword arguments of ``cls``)."""
    return {f.name: getattr(args, f.name) for f in _cli_fields(cls, only)}
