"""Typed configuration I/O: nested dicts / YAML <-> frozen dataclasses, dotted overrides, strict keys.

Every config section is a frozen dataclass whose fields carry their documentation in
``field(metadata={"help": ...})`` (the one place a field is documented). ``from_dict`` builds a section from
a plain dict and rejects unknown keys naming the valid ones::

    ConfigError: unknown key 'rollout.temprature'; valid keys of 'rollout': n, temperature, top_p, ...

A field may be a *polymorphic* section: its dataclass is picked by the section's ``name`` key through a
resolver (used for ``method``, whose parameters differ per method).

Overrides use dotted paths with YAML-typed values: ``["rollout.n=8", "method.tau=0.5"]``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from opdkit.core.fields import Bounds, doc, section  # noqa: F401  (re-exported: the config helpers)


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the valid choices."""


def field_of(cls: type, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of ``cls`` (to check a value against its declared bounds elsewhere)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise ``ConfigError`` naming ``key`` when ``value`` breaks the field's declared bounds or check."""
    bounds, check = f.metadata.get("bounds"), f.metadata.get("check")
    problem = bounds.problem(value) if bounds is not None else None  # "must be >= 1, got 0"
    if problem is None and check is not None and value is not None:
        problem = check(value)
        problem = None if problem is None else f": {problem}"  # "unknown task 'foo'; valid tasks: ..."
    if problem is not None:
        raise ConfigError(f"{key}{'' if problem.startswith(':') else ' '}{problem}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert a YAML value to the annotated type; error names the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue  # the next member may fit; the error names the whole union
        raise ConfigError(f"{path}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple, Sequence) or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, raw: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``; an unknown key raises ``ConfigError`` naming the valid keys."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"'{path}'" if path else "the top level"
        full = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"unknown key '{full}'; valid keys of {where}: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        f = fields[name]
        key = f"{path}.{name}" if path else name
        sub_cls = _section_type(f, hints[name], value)
        if sub_cls is not None:
            kwargs[name] = from_dict(sub_cls, value, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
            check_field(f, kwargs[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its key
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _section_type(f: dataclasses.Field, hint: Any, value: Any) -> type | None:
    resolver = f.metadata.get("resolver")
    if resolver is not None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"section '{f.name}' must be a mapping, got {value!r}")
        return resolver(value)
    return hint if dataclasses.is_dataclass(hint) else None


def to_dict(obj: Any) -> Any:
    """The plain nested dict of a config (tuples become lists), suitable for YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    out = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{k}' is not a section")
        node[keys[-1]] = yaml.safe_load(text) if text.strip() else ""
    return out


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for nested mappings."""
    out = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (YAML would keep the last)."""


def _unique_keys_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def load_yaml(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; a parse error names the file.

    A top-level ``base: other.yaml`` (relative to this file) is loaded first and this file's keys override it,
    so presets share their common settings instead of repeating them.
    """
    import os

    if os.path.abspath(path) in _seen:
        raise ConfigError(f"{path}: 'base' files form a cycle: {' -> '.join(_seen)}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if data is None:  # an empty file would silently train with every default
        raise ConfigError(f"{path}: the file is empty; give at least one setting (or base: a preset)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("base", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {parent!r}")
    parent_path = os.path.join(os.path.dirname(path), parent)
    return deep_merge(load_yaml(parent_path, (*_seen, os.path.abspath(path))), data)


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field: ``key = default  # help``; for ``opdkit train --help-config``."""
    lines = []
    instance = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{key}:  # {f.metadata.get('help', '')}")
            lines.extend(describe(type(value), prefix=f"{key}."))
        else:
            bounds = f.metadata.get("bounds")
            valid = f" [{bounds.describe()}]" if bounds is not None else ""
            lines.append(f"{key} = {value!r}  # {f.metadata.get('help', '')}{valid}")
    return lines
