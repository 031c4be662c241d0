"""The keys of a config, described: type, default, allowed values and the meaning each field carries
in its metadata (`doc`, see `configlib.documented`), section by section. docs/CONFIG.md is generated
from these (`tools.configdoc`); the loader (`configlib`) does not need them."""
from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .configlib import DOC


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str            # dotted, from the top of the config
    type: str
    default: str
    allowed: str
    meaning: str


@dataclasses.dataclass(frozen=True)
class SectionDoc:
    key: str            # dotted; '' for the top level
    summary: str        # the dataclass docstring's first paragraph
    optional: bool      # the whole section may be left out (null)
    keys: list


def describe(cls: type, prefix: str = "", optional: bool = False) -> list[SectionDoc]:
    """Every key of config dataclass `cls` with its type, default, allowed values and meaning (the
    field's metadata `doc`), section by section."""
    hints = get_type_hints(cls)
    rows, sections = [], []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            sections += describe(inner, key, optional=inner is not tp)
            continue
        rows.append(KeyDoc(key, _doc_type(tp), _doc_default(f), _doc_allowed(f, tp), f.metadata.get(DOC, "")))
    doc = inspect.getdoc(cls) or ""
    summary = "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split("\n\n")[0].split())
    return [SectionDoc(prefix, summary, optional, rows)] + sections


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _doc_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _doc_type(a) for a in get_args(tp))
    if origin is Literal:
        return "str"
    if origin is tuple:
        return f"[{', '.join(_doc_type(a) for a in get_args(tp) if a is not Ellipsis)}]"
    if origin is list or tp is list:
        args = get_args(tp)
        return f"list of {_doc_type(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _doc_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_doc_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_doc_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _doc_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _doc_value(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _doc_value(f.default_factory())
    return "required"


def _doc_allowed(f: dataclasses.Field, tp: Any) -> str:
    inner = _strip_optional(tp)
    parts = []
    if get_origin(inner) is Literal:
        parts.append(", ".join(str(a) for a in get_args(inner)))
    elif inner is bool:
        parts.append("true, false")
    if "range" in f.metadata:
        parts.append(str(f.metadata["range"]))
    if "allowed" in f.metadata:
        parts.append(f.metadata["allowed"])
    elif f.metadata.get("path"):
        parts.append("a path (relative to the YAML file) or a URL")
    return "; ".join(parts)

