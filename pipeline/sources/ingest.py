"""`tsd ingest SRC --out DIR`: turn a folder or a list of images into a checked, split index.

Every source file is read once, hashed, and fully decoded by `sources.decode.open_rgb` (the rules
are listed there).
A file is either kept, with a row in `index.parquet`, or rejected, with a row and a reason in
`rejects.parquet`: nothing is dropped silently.

Refusals (one line, exit status 2, nothing written over):
- a source with no usable image (an empty folder, a header-only CSV, only rejects): named, with the
  reject reasons counted (rejects.parquet is still written, so they can be read in full);
- an output folder that holds the index of another source or other settings, without `--overwrite`.
Labels that disagree are rejects, never a silent pick: every row of a path listed with two labels,
and every copy of identical image bytes filed under two labels (the same path listed twice with
one label keeps its first row).

Sources
-------
- An ImageFolder tree: `SRC/<class>/<any nested path>/<file>`. Hidden files and folders (name starts
  with '.') are skipped and counted, except system junk (`.DS_Store`, `Thumbs.db`, `desktop.ini`,
  macOS `._*` files), which is listed as rejected. Every other file is tried, whatever its
  extension. Files directly under SRC are rejected ("not inside a class folder"). The output folder
  is skipped when it lies inside SRC.
- A `.csv` or `.parquet` file with columns `path, label[, split]`. Paths are absolute or relative
  to the file's folder. A label is a class name or an integer. `split`, when the column exists,
  must be 'train' or 'val' on every row.

Outputs (in `--out DIR`)
------------------------
- `index.parquet`: uid, path, relpath, label, class_name, split, sha256, width, height,
  source_mode, sorted by uid. Schema metadata: the class list (`tsdistill.classes`), the
  settings it was made with (`tsdistill.ingest`: min_size, max_pixels, val_fraction, seed), so a
  later `open_rgb` of these files can use the same limits, and its source (`tsdistill.source`).
- `classes.json`: the class list. Classes are the label names of the kept rows, sorted
  (numerically when every name is an integer); a class with no kept image does not exist.
- `rejects.parquet`: path, reason (always written).

Split: with no `split` column, each class's uids are sorted and a seeded permutation picks
round(val_fraction × n) of them (half rounds up) for val: at least one when the class has two or
more images, and never all of them. Each class has its own random stream, derived from (seed,
class name), so adding images to one class does not move the others' splits.
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import posixpath
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..contract import storage
from ..contract.errors import UserError, short_error
from ..contract.files import atomic_write
from ..contract.ids import derive_seed, make_uid, sha256_bytes
from ..contract.layout import SPLITS
from ..contract.progress import Progress
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, ImageRejected, decode_rgb, read_file
from .index import CLASSES_FILE, INDEX_FILE, REJECTS_FILE, index_origin, write_index, write_rejects
from .layouts import Candidate, Options, Scan, resolve_layout, scan_layout

# Files operating systems drop into image folders: listed as rejects without trying to decode them.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "ehthumbs.db", "desktop.ini"})
APPLEDOUBLE_PREFIX = "._"   # macOS resource forks written next to every file on foreign disks


# -- sources → candidate files --------------------------------------------------------------------
def scan_source(src, out_dir=None, layout: str | None = None, options: Options | None = None) -> Scan:
    """Candidate files and early rejections of SRC in `layout` (detected when None: see
    `sources.layouts`); `scan.layout` names the layout, `scan.detected` whether it was detected."""
    if storage.is_url(src):  # a list of files on object storage (its rows may be URLs too)
        suffix = storage.basename(src).rsplit(".", 1)[-1].lower()
        if layout not in (None, "csv") or suffix not in ("csv", "parquet", "pq"):
            raise UserError(f"{src}: on object storage, ingest reads a .csv or .parquet list of files "
                            "(other layouts must be local)")
        if not storage.isfile(src):
            raise UserError(f"{src}: no such file")
        scan = _scan_table(str(src), _read_csv(src) if suffix == "csv" else _read_parquet(src))
        scan.layout, scan.detected = "csv", layout is None
        return scan
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    name, root, detected = resolve_layout(src.absolute(), layout)
    if name == "imagefolder":
        scan = _scan_folder(root, Path(out_dir).absolute() if out_dir else None)
    elif name == "csv":
        scan = _scan_table(root, _read_csv(root) if root.suffix.lower() == ".csv" else _read_parquet(root))
    else:
        if out_dir is None:
            raise UserError(f"{src}: the {name} layout needs a local output folder (its images are extracted there)")
        scan = scan_layout(name, root, Path(out_dir), options or Options())
    scan.layout, scan.detected = name, detected
    return scan


def _is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.startswith(APPLEDOUBLE_PREFIX)


def _scan_folder(root: Path, out_dir: Path | None) -> Scan:
    scan = Scan([], [])
    skip_dir = os.path.realpath(out_dir) if out_dir else None
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise UserError(f"{root}: cannot list folder ({e.strerror or e})") from None
    for entry in entries:
        if _is_junk(entry.name):
            scan.rejects.append((entry.path, "not an image (system file)"))
        elif entry.name.startswith("."):
            scan.skipped_hidden += 1
        elif entry.is_dir():
            if os.path.realpath(entry.path) != skip_dir:
                _scan_class(root, entry, skip_dir, scan)
        else:
            scan.rejects.append((entry.path, "not inside a class folder"))
    return scan


def _scan_class(root: Path, class_dir: os.DirEntry, skip_dir: str | None, scan: Scan) -> None:
    def unreadable(error: OSError) -> None:   # os.walk would otherwise skip it silently
        scan.rejects.append((error.filename, f"unreadable folder ({error.strerror or error})"))

    for folder, dirs, files in os.walk(class_dir.path, onerror=unreadable):
        kept_dirs = [d for d in dirs if not d.startswith(".")
                     and os.path.realpath(os.path.join(folder, d)) != skip_dir]
        scan.skipped_hidden += len(dirs) - len(kept_dirs)
        dirs[:] = sorted(kept_dirs)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if _is_junk(name):
                scan.rejects.append((path, "not an image (system file)"))
            elif name.startswith("."):
                scan.skipped_hidden += 1
            else:
                relpath = Path(os.path.relpath(path, root)).as_posix()
                scan.candidates.append(Candidate(path, relpath, class_dir.name, None))


def _read_csv(path) -> tuple[list[str], list[dict]]:
    try:
        with io.TextIOWrapper(storage.open_read(path), newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    return columns, rows


def _read_parquet(path) -> tuple[list[str], list[dict]]:
    from .index import read_table

    try:
        table = read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise UserError(f"{path}: cannot read Parquet ({short_error(e)})") from None
    wanted = [c for c in ("path", "label", "split") if c in table.column_names]
    return table.column_names, table.select(wanted).to_pylist()


def _scan_table(table_path, columns_rows: tuple[list[str], list[dict]]) -> Scan:
    columns, rows = columns_rows
    for required in ("path", "label"):
        if required not in columns:
            raise UserError(f"{table_path}: missing column {required!r} "
                              f"(columns: {', '.join(columns) or 'none'})")
    has_split = "split" in columns
    base = storage.parent(table_path) if storage.is_url(table_path) else os.path.dirname(table_path)
    labels = [_label_text(r.get("label")) for r in rows]
    integer_labels = all(_is_integer(t) for t in labels if t)
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


def _is_integer(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text))


# -- candidates → decoded facts (runs in worker processes) -------------------------------------
def inspect_file(path: str, min_size: int, max_pixels: int) -> tuple:
    """('ok', sha256, width, height, source_mode) or ('reject', reason) for one file."""
    try:
        data = read_file(path)
        image, source_mode = decode_rgb(data, min_size=min_size, max_pixels=max_pixels)
    except ImageRejected as e:
        return ("reject", e.reason)
    return ("ok", sha256_bytes(data), image.width, image.height, source_mode)


def _inspect_all(paths: list[str], min_size: int, max_pixels: int, workers: int) -> list[tuple]:
    """Results in the order of `paths`, whatever the number of workers."""
    progress = Progress("ingest", len(paths))
    workers = min(workers, len(paths))
    with progress:
        if workers <= 1:
            results = []
            for path in paths:
                results.append(inspect_file(path, min_size, max_pixels))
                progress.update()
            return results
        # spawn: safe whatever the parent already loaded (threads of pyarrow, torch, ray...)
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(32, len(paths) // (4 * workers)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = []
            for result in pool.map(inspect_file, paths, [min_size] * len(paths),
                                   [max_pixels] * len(paths), chunksize=chunk):
                results.append(result)
                progress.update()
            return results


# -- classes, split, output ---------------------------------------------------------------------
def sort_classes(names) -> list[str]:
    """Sorted class names; numerically when every name is an integer ('2' before '10')."""
    names = set(names)
    if names and all(_is_integer(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def assign_splits(uids_by_class: dict, val_fraction: float, seed: int) -> dict:
    """uid → 'train' | 'val': a seeded, stratified pick of round(val_fraction × n) per class."""
    splits = {}
    for class_name, uids in uids_by_class.items():
        uids = sorted(uids)
        n = len(uids)
        n_val = int(math.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)   # every class is evaluated and still trained on
        else:
            n_val = 0 if n < 2 else n_val
        rng = np.random.Generator(np.random.PCG64(derive_seed(seed, class_name, "split")))
        val = {uids[i] for i in rng.permutation(n)[:n_val]}
        splits.update({u: ("val" if u in val else "train") for u in uids})
    return splits


def ingest(src, out_dir, *, val_fraction: float = 0.1, seed: int = 0, min_size: int = DEFAULT_MIN_SIZE,
           max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None, layout: str | None = None,
           options: Options | None = None, overwrite: bool = False) -> dict:
    """Check, decode and split a source; write index.parquet, rejects.parquet, classes.json.

    Returns a summary: kept, rejected, reject_reasons (reason → count), duplicates (rows whose
    bytes repeat an earlier row), duplicates_across_splits, skipped_hidden, classes, splits, and
    the output paths. Refuses (UserError) a source with no usable image, and an output folder
    holding another source's index unless `overwrite`.
    With workers > 1 files are decoded in 'spawn' worker processes (safe whatever the caller has
    loaded), so a calling script needs the usual `if __name__ == "__main__":` guard."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    if min_size < 1:
        raise UserError(f"--min-size: must be >= 1, got {min_size}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    out_dir = storage.location(out_dir)
    settings = dict(min_size=min_size, max_pixels=max_pixels, val_fraction=val_fraction, seed=seed)
    source = storage.absolute(src)
    if not overwrite:
        _check_output(out_dir, source, settings)
    scan = scan_source(src, out_dir if storage.is_local(out_dir) else None, layout,
                       replace(options or Options(), seed=seed))
    results = _inspect_all([c.path for c in scan.candidates], min_size, max_pixels,
                           workers if workers is not None else (os.cpu_count() or 1))
    rows, rejects = [], list(scan.rejects)
    for candidate, result in zip(scan.candidates, results):
        if result[0] == "reject":
            rejects.append((candidate.path, result[1]))
            continue
        _, sha, width, height, source_mode = result
        rows.append(dict(uid=make_uid("real", sha, candidate.relpath), path=candidate.path,
                         relpath=candidate.relpath, class_name=candidate.class_name,
                         split=candidate.split, sha256=sha, width=width, height=height,
                         source_mode=source_mode))
    rows = _drop_conflicting_copies(rows, rejects)
    rejects.sort()
    storage.make_folder(out_dir)
    write_rejects(storage.join(out_dir, REJECTS_FILE), rejects)
    reasons = reject_reasons(rejects)
    if not rows:
        for stale in (INDEX_FILE, CLASSES_FILE):   # this source's older index would contradict its rejects
            storage.remove(storage.join(out_dir, stale))
        found = f"{len(rejects)} file(s) rejected: {_reasons_text(reasons)}; see {storage.join(out_dir, REJECTS_FILE)}" \
            if rejects else ("no image found (expected SRC/<class>/<image files>)" if scan.layout == "imagefolder"
                             else "no rows" if scan.layout == "csv" else f"no image found in its {scan.layout} layout")
        raise UserError(f"{src}: no usable image ({found})")
    classes = sort_classes(r["class_name"] for r in rows)
    _label_and_split(rows, classes, val_fraction, seed)
    rows.sort(key=lambda r: r["uid"])

    atomic_write(storage.join(out_dir, CLASSES_FILE), (json.dumps(classes, ensure_ascii=False) + "\n").encode())
    write_index(storage.join(out_dir, INDEX_FILE), rows, classes, settings, source)
    return {
        "layout": scan.layout,
        "layout_detected": scan.detected,
        "kept": len(rows),
        "rejected": len(rejects),
        "reject_reasons": reasons,
        "duplicates": len(rows) - len({r["sha256"] for r in rows}),
        "duplicates_across_splits": _shared_between_splits(rows),
        "skipped_hidden": scan.skipped_hidden,
        "classes": classes,
        "splits": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
        "index": storage.join(out_dir, INDEX_FILE),
        "rejects": storage.join(out_dir, REJECTS_FILE),
    }


def _check_output(out_dir: str, source: str, settings: dict) -> None:
    """An index already in `out_dir` must come from this source with these settings (a re-ingest),
    or `--overwrite` must say it may be replaced."""
    index = storage.join(out_dir, INDEX_FILE)
    if not storage.exists(index):
        return
    try:
        old_source, old_settings = index_origin(index)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"{index}: already exists and is not a readable index ({short_error(e)}); use --overwrite "
                        "to replace it, or another --out") from None
    if old_source != source:
        made = f"the index of {old_source}" if old_source else "an index of another source"
        raise UserError(f"{out_dir}: holds {made}; use --overwrite to replace it, or another --out")
    changed = [f"{k} {old_settings.get(k)!r} → {v!r}" for k, v in settings.items() if old_settings.get(k) != v]
    if changed:
        raise UserError(f"{out_dir}: holds the index of this source made with other settings ({', '.join(changed)});"
                        " use --overwrite to replace it, or another --out")


def _drop_conflicting_copies(rows: list[dict], rejects: list) -> list[dict]:
    """Identical image bytes filed under two labels: every copy is a reject (no label is trusted)."""
    labels_of: dict[str, set] = {}
    for r in rows:
        labels_of.setdefault(r["sha256"], set()).add(r["class_name"])
    kept = []
    for r in rows:
        labels = labels_of[r["sha256"]]
        if len(labels) > 1:
            others = ", ".join(repr(c) for c in sorted(labels))
            rejects.append((r["path"], f"conflicting labels for identical images ({others}; sha256 {r['sha256'][:12]})"))
        else:
            kept.append(r)
    return kept


def reject_reasons(rejects: list) -> dict[str, int]:
    """Reject reasons grouped and counted, most frequent first: the reason without its row number and
    its parenthesised detail ('row 4: bad split …' and 'truncated or corrupt (…)' → their kind)."""
    counts: dict[str, int] = {}
    for _, reason in rejects:
        kind = re.sub(r"^row \d+: ", "", reason)
        kind = re.sub(r" \(.*\)$", "", kind).strip() or reason
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _reasons_text(reasons: dict[str, int], limit: int = 6) -> str:
    items = [f"{n} {kind}" for kind, n in reasons.items()]
    return ", ".join(items[:limit] + ([f"{len(items) - limit} other reason(s)"] if len(items) > limit else []))


def _shared_between_splits(rows: list[dict]) -> int:
    """Distinct file contents present in both train and val: a leak the user should know about."""
    by_split = {s: {r["sha256"] for r in rows if r["split"] == s} for s in SPLITS}
    return len(by_split["train"] & by_split["val"])


def _label_and_split(rows: list[dict], classes: list[str], val_fraction: float, seed: int) -> None:
    label_of = {name: i for i, name in enumerate(classes)}
    unassigned = {}
    for row in rows:
        row["label"] = label_of[row["class_name"]]
        if row["split"] is None:
            unassigned.setdefault(row["class_name"], []).append(row["uid"])
    splits = assign_splits(unassigned, val_fraction, seed)
    for row in rows:
        if row["split"] is None:
            row["split"] = splits[row["uid"]]


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    from .layouts import AIRCRAFT_LEVELS, LAYOUTS

    p.add_argument("src", help="the dataset as downloaded (see --layout), an ImageFolder root, or a .csv/.parquet "
                               "file with columns path,label[,split]")
    p.add_argument("--out", required=True, help="output folder for index.parquet and rejects.parquet")
    p.add_argument("--layout", choices=list(LAYOUTS), default=None,
                   help="how SRC is laid out (default: detected, and printed): " +
                        "; ".join(f"{n}: {layout.what}" for n, layout in LAYOUTS.items()))
    p.add_argument("--aircraft-label", choices=AIRCRAFT_LEVELS, default="variant",
                   help="aircraft: the label level (default variant, 100 classes)")
    p.add_argument("--dtd-split", type=int, default=1, help="dtd: which of the 10 official splits (default 1)")
    p.add_argument("--caltech-train", type=int, default=30,
                   help="caltech101: training images per class, picked with --seed (default 30)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out share per class when SRC has no split (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic stratified split")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help="reject images with a side shorter than this (px)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an index of another source (or other settings) already in --out")


def run(args) -> int:
    """`tsd ingest`: 0 when the index is written (rejected images are not errors)."""
    options = Options(aircraft_label=args.aircraft_label, dtd_split=args.dtd_split, caltech_train=args.caltech_train)
    summary = ingest(args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                     min_size=args.min_size, workers=args.workers, layout=args.layout, options=options,
                     overwrite=args.overwrite)
    if summary["layout_detected"]:
        print(f"ingest: {args.src}: detected layout {summary['layout']} (--layout to choose another)", file=sys.stderr)
    rejected = f"rejected {summary['rejected']}"
    if summary["rejected"]:
        rejected += f" ({_reasons_text(summary['reject_reasons'])}; see {summary['rejects']})"
    print(f"ingest: kept {summary['kept']}, {rejected}; {len(summary['classes'])} classes; "
          f"train {summary['splits']['train']}, val {summary['splits']['val']}"
          + _leak_note(summary["duplicates_across_splits"]) + _no_val_note(summary["splits"]["val"]))
    return 0


def _leak_note(shared: int) -> str:
    return f"; warning: {shared} val image(s) also in train (same bytes)" if shared else ""


def _no_val_note(n_val: int) -> str:
    return "; warning: no validation image (a class needs 2 images to lend one to val)" if n_val == 0 else ""
