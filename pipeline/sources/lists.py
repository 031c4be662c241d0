"""A list of files (`.csv` or `.parquet`, columns `path, label[, split]`) → candidates, by the list
rules: paths relative to the list's folder unless absolute or URLs; a label is a class name or an
integer; `split`, when the column exists, 'train' or 'val' on every row; a path listed twice with one
label keeps its first row, a path listed with two labels is rejected on every row."""
from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from pathlib import Path

from ..contract import storage
from ..contract.errors import UserError, short_error
from ..contract.layout import SPLITS
from .layouts import Candidate, Scan


def read_csv(path) -> tuple[list[str], list[dict]]:
    try:
        with io.TextIOWrapper(storage.open_read(path), newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    return columns, rows


def read_parquet(path) -> tuple[list[str], list[dict]]:
    from .index import read_table

    try:
        table = read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise UserError(f"{path}: cannot read Parquet ({short_error(e)})") from None
    wanted = [c for c in ("path", "label", "split") if c in table.column_names]
    return table.column_names, table.select(wanted).to_pylist()


def scan_table(table_path, columns_rows: tuple[list[str], list[dict]]) -> Scan:
    columns, rows = columns_rows
    for required in ("path", "label"):
        if required not in columns:
            raise UserError(f"{table_path}: missing column {required!r} "
                              f"(columns: {', '.join(columns) or 'none'})")
    has_split = "split" in columns
    base = storage.parent(table_path) if storage.is_url(table_path) else os.path.dirname(table_path)
    labels = [_label_text(r.get("label")) for r in rows]
    integer_labels = all(is_integer(t) for t in labels if t)
    scan = Scan([], [])
    first_row_of = {}      # path → (row number, label, its candidate)
    conflicting = {}       # path → the labels it was listed with
    for number, (row, label) in enumerate(zip(rows, labels), start=1):
        raw_path = "" if row.get("path") is None else str(row["path"]).strip()
        where = f"{table_path}:row {number}"
        if not raw_path:
            scan.rejects.append((where, f"row {number}: missing path"))
            continue
        path, relpath = _row_path(base, raw_path)
        split = None
        if has_split:
            split = "" if row.get("split") is None else str(row["split"]).strip()
        problem = _row_problem(label, split, has_split)
        class_name = str(int(label)) if integer_labels else label
        if problem is None and path in first_row_of:
            first, first_label, _ = first_row_of[path]
            if class_name == first_label and path not in conflicting:
                problem = f"listed twice (first at row {first})"
            else:
                seen = conflicting.setdefault(path, [first_label])
                if class_name not in seen:
                    seen.append(class_name)
                problem = f"conflicting labels for one path ({', '.join(map(repr, seen))})"
        if problem:
            scan.rejects.append((path, f"row {number}: {problem}"))
            continue
        candidate = Candidate(path, relpath, class_name, split)
        first_row_of[path] = (number, class_name, candidate)
        scan.candidates.append(candidate)
    for path, labels_seen in conflicting.items():   # the first row of a conflicting path is no better
        number, _, candidate = first_row_of[path]
        scan.candidates.remove(candidate)
        scan.rejects.append((path, f"row {number}: conflicting labels for one path "
                                   f"({', '.join(map(repr, labels_seen))})"))
    return scan


def _row_path(base: str, raw_path: str) -> tuple[str, str]:
    """(path, relpath) of a listed file: relative to the list's folder unless absolute or a URL; a
    URL's scheme is checked here, so one that cannot be read is one error, not a reject per row."""
    if storage.is_url(raw_path) or storage.is_url(base):
        path = raw_path if "://" in raw_path else storage.join(base, raw_path)
        storage.filesystem(path)
        prefix = base.rstrip("/") + "/"
        return path, posixpath.normpath(path[len(prefix):]) if path.startswith(prefix) else path
    path = os.path.normpath(os.path.join(base, raw_path))
    return path, posixpath.normpath(Path(os.path.relpath(path, base)).as_posix())


def _row_problem(label: str, split: str | None, has_split: bool) -> str | None:
    if not label:
        return "missing label"
    if has_split and split not in SPLITS:
        return f"bad split {split!r} (expected 'train' or 'val')"
    return None


def _label_text(value) -> str:
    """A label cell as text: integers (and integral floats, as pandas writes them) canonical."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def is_integer(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text))
