"""Typed configuration: dataclasses documented field by field, loaded from YAML.

Every config of the project is a dataclass whose fields carry an attribute
docstring (the string literal right under the field, as in CleanRL's ``Args``).
``load_dataclass`` checks a YAML mapping against such a class: unknown keys,
wrong types, non-finite numbers (.nan, .inf) and malformed files raise a :class:`ConfigError` that names the
file and the dotted key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e5 / 1.0e-3 as floats (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class FieldError(ValueError):
    """Raised by a config dataclass's ``__post_init__`` for one of its fields."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type/range."""

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        where = f"{source}: " if source else ""
        keypart = f"'{key}': " if key else ""
        super().__init__(f"{where}{keypart}{message}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, by field name (inherited ones too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


EXTENDS = "extends"
"""A config file's key naming another YAML (relative to the file's folder) that it starts from."""


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; a malformed file raises ConfigError naming it. A file with
    ``extends: BASE.yaml`` is BASE's mapping with the file's own keys merged in (nested mappings
    key by key, anything else replaced): one file per variant says only what differs."""
    path = Path(path)
    data = _read_mapping(path)
    if EXTENDS not in data:
        return data
    base = data.pop(EXTENDS)
    if not isinstance(base, str) or not base:
        raise ConfigError(str(path), EXTENDS, f"expected the file name of another YAML, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in _seen + (path.resolve(),):
        raise ConfigError(str(path), EXTENDS, f"{base} extends this file again (a cycle)")
    if not base_path.is_file():
        raise ConfigError(str(path), EXTENDS, f"no such file: {base_path}")
    return merged(read_yaml(base_path, _seen + (path.resolve(),)), data)


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``: nested mappings merged key by key, other values replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read config file ({exc.strerror})") from exc
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), "", f"malformed YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at top level, got {type(data).__name__}")
    return data


def load_dataclass(cls: type[T], data: Any, source: str = "", prefix: str = "") -> T:
    """Build ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(source, prefix, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            source, _join(prefix, str(unknown[0])), f"unknown key (known keys: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], source, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(source, key, "missing required key")
    try:
        return cls(**kwargs)
    except FieldError as exc:  # range checks of __post_init__
        raise ConfigError(source, _join(prefix, exc.field), exc.message) from exc


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def with_overrides(obj: T, overrides: dict[str, Any], source: str = "overrides") -> T:
    """A copy of ``obj`` with dotted keys (``costs.terminal.position``) replaced, re-validated."""
    data = to_dict(obj)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(source, dotted, "unknown key")
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(source, dotted, "unknown key")
        node[parts[-1]] = value
    return load_dataclass(type(obj), data, source=source)


def parse_key_values(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``["costs.terminal.position=1e5", ...]`` from a command line -> {dotted key: YAML value}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(option, item, "expected KEY=VALUE")
        try:
            overrides[key] = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ConfigError(option, key, f"malformed value {value!r}") from exc
    return overrides


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if isinstance(value, float) and not math.isfinite(value):  # whatever the options, say what is wrong
            raise ConfigError(source, key, f"expected a finite number, got {value!r}")
        if len(options) == 1:  # X | None: X's own message is the precise one
            return _coerce(value, options[0], source, key)
        for option in options:
            try:
                return _coerce(value, option, source, key)
            except ConfigError:
                pass
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .nan/.inf in YAML: no setting of this project means that
                raise ConfigError(source, key, f"expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {
                _coerce(k, args[0], source, key): _coerce(v, args[1], source, _join(key, str(k)))
                for k, v in value.items()
            }
    else:  # pragma: no cover - a field type this loader was not taught
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")
