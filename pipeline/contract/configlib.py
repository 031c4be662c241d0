"""Plain YAML validated into dataclasses: one strict loader for every config of the project.

Light on purpose (stdlib + PyYAML): the trainer uses it too, and must not pull in the heavy side.
Errors are one line that names the file and the dotted key, raised before any model loads.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from . import storage
from .errors import ConfigError, UserError, first_line
from .weights import weights_problem


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric key allows: bounds (each inclusive or exclusive, or absent), an optional
    step (`multiple_of`), and for a [min, max] pair (`ordered`) each item in range and min <= max.

    Declared on the field (`ranged`), checked by `build` before the dataclass's own `check()`, and
    printed in docs/CONFIG.md: one declaration, so the check and its documentation cannot drift."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    ordered: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(self.contains(v) for v in value) and (not self.ordered or list(value) == sorted(value))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True                       # another branch of a Union (e.g. pool_size '2x'): check() decides
        if math.isnan(value):
            return False
        if self.ge is not None and value < self.ge or self.gt is not None and value <= self.gt:
            return False
        if self.le is not None and value > self.le or self.lt is not None and value >= self.lt:
            return False
        return not self.multiple_of or value % self.multiple_of == 0

    def __str__(self) -> str:
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}") \
            if self.ge is not None or self.gt is not None else None
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})") \
            if self.le is not None or self.lt is not None else None
        if low and high:
            text = f"in {low}, {high}"
        elif low:
            text = f">= {low[1:]}" if self.ge is not None else f"> {low[1:]}"
        elif high:
            text = f"<= {high[:-1]}" if self.le is not None else f"< {high[:-1]}"
        else:
            text = "any number"
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        if self.ordered:
            text = f"[min, max], each {text}, min <= max"
        return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def ranged(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, multiple_of=None,
           ordered: bool = False, allowed: str | None = None, path: bool = False, doc: str | None = None) -> Any:
    """A config field with its allowed range (see `Range`), checked by `build`. `allowed` describes,
    for the documentation, what a `check()` enforces beyond the range (e.g. 'a timm model name');
    `path` marks a path field (see `path_field`); `doc` is the key's meaning (see `documented`)."""
    metadata = {DOC: doc} if doc else {}
    if any(v is not None for v in (ge, gt, le, lt, multiple_of)) or ordered:
        metadata["range"] = Range(ge, gt, le, lt, multiple_of, ordered)
    if allowed:
        metadata["allowed"] = allowed
    if path:
        metadata["path"] = True
    return dataclasses.field(default=default, metadata=metadata)


DOC = "doc"   # the field metadata key of a config key's meaning, as docs/CONFIG.md prints it (contract.fielddoc)


def documented(default: Any = dataclasses.MISSING, *, doc: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A plain config field with its meaning: the one place a key is explained (docs/CONFIG.md is
    generated from it). `ranged` and `path_field` take the same `doc`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={DOC: doc})


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    spec = f.metadata.get("range")
    if spec is not None and value is not None and not spec.contains(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{key}: must be {spec}, got {shown!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp) if a is not Ellipsis)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, base: Path | None = None) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists→tuples, dicts→dataclasses)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp in (dict, list):  # bare annotations: any contents
        tp = dict[str, Any] if tp is dict else list[Any]
        origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be empty (expected {_type_name(tp)})")
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error is the precise one
            return _coerce(value, options[0], where, base)
        for arg in options:
            try:
                return _coerce(value, arg, where, base)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {type(value).__name__}")
        return build(tp, value, where, base)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]", base) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]", base) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}", base) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls: type, data: dict, where: str = "", base: Path | None = None) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types.

    Path fields (see `path_field`) resolve against `base` before the dataclass's own `check()`
    runs, so checks such as "weight file exists" see the real location."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key (expected one of: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            value = _coerce(data[name], hints[name], key, base)
            _check_range(f, value, key)
            if f.metadata.get("path") and base is not None:
                try:
                    value = _resolve_any(value, base)
                except UserError as e:  # e.g. 's3:/bucket', a URL with a slash missing
                    raise ConfigError(f"{key}: {e}") from None
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing required key")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}" if where else str(e)) from None
    return obj


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {first_line(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load(cls: type, path: str | os.PathLike, overrides: dict | None = None) -> Any:
    """Load YAML `path` into dataclass `cls`; relative paths in it resolve against the file's folder."""
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    try:
        obj = build(cls, data, base=Path(path).resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return obj


def merge(base: dict, over: dict) -> dict:
    """Deep-merge mapping `over` into a copy of `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """['optim.lr=0.1', 'data.generators=[mixup]'] → nested dict; values are YAML scalars/lists."""
    out: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item}: expected key=value, e.g. optim.lr=0.001")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: value is not valid YAML") from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {part} is set both as a value and a section")
        node[leaf] = parsed
    return out


def path_field(*, doc: str | None = None, **kw):
    """A dataclass field holding a filesystem path, resolved relative to the YAML file; `doc` is its
    meaning (see `documented`)."""
    return dataclasses.field(metadata={"path": True, **({DOC: doc} if doc else {})}, **kw)


def _resolve_any(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        return _resolve(value, base)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, base) for v in value)
    return value


def _resolve(value: str, base: Path) -> str:
    if storage.is_url(value) or value.startswith("file://") or os.path.isabs(value):
        return value
    return str((base / os.path.expanduser(value)).resolve())


def to_dict(obj: Any, paths: bool = True) -> Any:
    """The plain-data form of a config (for manifests and fingerprints). With `paths=False`, path
    fields are left out: a fingerprint then follows the files' contents (hashed separately), not
    where they are, so a moved or copied job folder reuses its finished work."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), paths) for f in dataclasses.fields(obj)
                if paths or not f.metadata.get("path")}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, paths) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, paths) for k, v in obj.items()}
    return obj


def dump(obj: Any, path: str | os.PathLike) -> Path:
    """A config (a dataclass or plain data) as YAML at `path`, keys in their order; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path


_FILES_REQUIRED = contextvars.ContextVar("tsdistill_files_required", default=True)


@contextlib.contextmanager
def files_optional():
    """Validate configs without requiring their files to exist: `tsd plan --dry-run` estimates a
    recipe before its data and weights are downloaded."""
    token = _FILES_REQUIRED.set(False)
    try:
        yield
    finally:
        _FILES_REQUIRED.reset(token)


def require_file(path: str | None, key: str) -> None:
    """Fail with the key's name when a configured file (a path or a URL) is missing, or its URL's
    scheme cannot be read here (before any model loads)."""
    if path is None:
        return
    try:
        if storage.is_url(path):
            storage.filesystem(path)  # an unknown or uninstalled scheme, even in a dry run
        if _FILES_REQUIRED.get() and not storage.exists(path):
            raise ConfigError(f"{key}: file not found: {path}")
    except ConfigError:
        raise
    except UserError as e:
        raise ConfigError(f"{key}: {e}") from None


def require_weights(weights: str | None, expected_sha256: str | None = None) -> None:
    """A weight file exists; a weight URL comes with the sha256 its download is checked against
    (keys `weights` and `weights_sha256`); a local file's header is sound (`check_weights_header`)."""
    require_file(weights, "weights")
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise ConfigError(f"weights_sha256: expected 64 hex digits, got {expected_sha256!r}")
    if weights is not None and storage.is_url(weights) and expected_sha256 is None:
        raise ConfigError(f"weights_sha256: required when weights is a URL ({weights}): each node downloads "
                          "the file once and checks it against this digest")
    check_weights_header(weights, "weights")


def check_weights_header(path: str | None, key: str) -> None:
    """A local weight file (or a folder's safetensors files) whose header is unreadable or says it
    is truncated: one line naming the key, before any model is built (no tensor is loaded)."""
    if path is None or storage.is_url(path) or not os.path.exists(path):
        return
    problem = weights_problem(path)
    if problem:
        raise ConfigError(f"{key}: {problem}")


__all__ = ["UserError", "ConfigError", "Range", "DOC", "build", "documented", "load", "load_yaml", "merge", "path_field", "ranged",
           "to_dict", "dump", "require_file", "require_weights", "check_weights_header", "files_optional",
           "parse_overrides"]
