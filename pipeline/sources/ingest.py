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
- `classes.json`: the class list. By default the label names of the kept rows, sorted
  (numerically when every name is an integer); a class with no kept image does not exist. A class
  order given (`--classes FILE`) or the source's own (an ImageFolder's `classes.txt`, a ClassLabel's
  names, a segmentation dataset's list) is kept as it is, classes without an image included (a
  warning), and an image of a class it does not name is rejected.
- segmentation sources (`sources.layouts`): the index's task is `segmentation`, each row has
  label -1, class_name "", and its checked mask (`mask_path`, `mask_sha256`; `sources.masks`);
  remapped masks are written to `masks/` beside the index.
- `rejects.parquet`: path, reason (always written).

Split: with no `split` column, each class's uids are sorted and a seeded permutation picks
round(val_fraction × n) of them (half rounds up) for val: at least one when the class has two or
more images, and never all of them. Each class has its own random stream, derived from (seed,
class name), so adding images to one class does not move the others' splits.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from ..contract import storage
from ..contract.errors import UserError, short_error
from ..contract.files import atomic_write
from ..contract.ids import make_uid, sha256_bytes
from ..contract.layout import SPLITS
from ..contract.progress import Progress
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, ImageRejected, decode_rgb, read_file
from ..contract.tasks import CLASSIFICATION, IGNORE_INDEX, SEGMENTATION
from .index import CLASSES_FILE, INDEX_FILE, REJECTS_FILE, index_origin, write_index, write_rejects
from .layouts import Options, read_class_list
from .masks import inspect_mask
from .scan import scan_source
from .split import assign_missing_splits, label_and_split, shared_between_splits, sort_classes


# -- candidates → decoded facts (runs in worker processes) -------------------------------------
def inspect_file(path: str, min_size: int, max_pixels: int) -> tuple:
    """('ok', sha256, width, height, source_mode) or ('reject', reason) for one file."""
    try:
        data = read_file(path)
        image, source_mode = decode_rgb(data, min_size=min_size, max_pixels=max_pixels)
    except ImageRejected as e:
        return ("reject", e.reason)
    return ("ok", sha256_bytes(data), image.width, image.height, source_mode)


@dataclass(frozen=True)
class Checks:
    """What a worker checks every candidate with (picklable, sent once per chunk)."""
    min_size: int
    max_pixels: int
    num_classes: int = 0          # segmentation: mask values must be below it (or the ignore value)
    out: str | None = None        # segmentation: where remapped masks are written


def inspect_candidate(candidate, checks: Checks) -> tuple:
    """`inspect_file`, then for a segmentation candidate its mask (`masks.inspect_mask`): the image's
    facts plus (mask_path, mask_sha256), or ('reject', reason)."""
    result = inspect_file(candidate.path, checks.min_size, checks.max_pixels)
    if result[0] == "reject" or checks.num_classes == 0:
        return result + ((None, None) if result[0] == "ok" else ())
    _, _, width, height, _ = result
    mask = inspect_mask(candidate.mask, width, height, checks.num_classes, candidate.mask_map, checks.out)
    return mask if mask[0] == "reject" else result + mask[1:]


def _inspect_all(candidates: list, checks: Checks, workers: int) -> list[tuple]:
    """Results in the order of `candidates`, whatever the number of workers."""
    progress = Progress("ingest", len(candidates))
    workers = min(workers, len(candidates))
    with progress:
        if workers <= 1:
            results = []
            for candidate in candidates:
                results.append(inspect_candidate(candidate, checks))
                progress.update()
            return results
        # spawn: safe whatever the parent already loaded (threads of pyarrow, torch, ray...)
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(32, len(candidates) // (4 * workers)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = []
            for result in pool.map(inspect_candidate, candidates, [checks] * len(candidates), chunksize=chunk):
                results.append(result)
                progress.update()
            return results


# -- ingest ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IngestResult:
    """What `ingest` kept, rejected and wrote."""
    layout: str                      # the source's layout (see sources.layouts)
    layout_detected: bool            # detected, not given with --layout
    kept: int
    rejected: int
    reject_reasons: dict             # reason → count, most frequent first
    duplicates: int                  # kept rows whose bytes repeat an earlier row
    duplicates_across_splits: int    # distinct contents present in both train and val
    skipped_hidden: int
    classes: list
    splits: dict                     # split → kept rows
    index: str                       # the written index.parquet
    rejects: str                     # the written rejects.parquet
    task: str = CLASSIFICATION       # contract/tasks.py: segmentation for the layouts with masks
    warnings: list = field(default_factory=list)   # one line each (split folders, empty classes)

    def to_json(self) -> dict:
        return asdict(self)


def ingest(src, out_dir, *, val_fraction: float = 0.1, seed: int = 0, min_size: int = DEFAULT_MIN_SIZE,
           max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None, layout: str | None = None,
           options: Options | None = None, overwrite: bool = False) -> IngestResult:
    """Check, decode and split a source; write index.parquet, rejects.parquet, classes.json; say
    what was kept and rejected (`IngestResult`). Refuses (UserError) a source with no usable image, and an output folder
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
    options = replace(options or Options(), seed=seed)
    scan = scan_source(src, out_dir if storage.is_local(out_dir) else None, layout, options)
    segmentation = scan.task == SEGMENTATION
    checks = Checks(min_size, max_pixels, len(scan.classes) if segmentation else 0,
                    str(out_dir) if segmentation else None)
    results = _inspect_all(scan.candidates, checks, workers if workers is not None else (os.cpu_count() or 1))
    rows, rejects = [], list(scan.rejects)
    for candidate, result in zip(scan.candidates, results):
        if result[0] == "reject":
            rejects.append((candidate.path, result[1]))
            continue
        _, sha, width, height, source_mode, mask_path, mask_sha = result
        rows.append(dict(uid=make_uid("real", sha, candidate.relpath), path=candidate.path,
                         relpath=candidate.relpath, class_name=candidate.class_name,
                         split=candidate.split, sha256=sha, width=width, height=height,
                         mask_path=mask_path, mask_sha256=mask_sha, source_mode=source_mode))
    rows = _drop_conflicting_copies(rows, rejects)
    order = list(scan.classes) if segmentation else _class_order(options, scan, rows, rejects)
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
    classes = order or sort_classes(r["class_name"] for r in rows)
    warnings = list(scan.warnings)
    if segmentation:
        for row in rows:
            row["label"] = -1                  # a segmentation sample's classes are in its mask
        assign_missing_splits(rows, val_fraction, seed)
    else:
        label_and_split(rows, classes, val_fraction, seed)
        present = {r["class_name"] for r in rows}
        empty = [c for c in classes if c not in present]
        if empty:
            warnings.append(f"{len(empty)} class(es) of the class list have no image: "
                            + ", ".join(map(repr, empty[:5])) + (", …" if len(empty) > 5 else ""))
    rows.sort(key=lambda r: r["uid"])

    atomic_write(storage.join(out_dir, CLASSES_FILE), (json.dumps(classes, ensure_ascii=False) + "\n").encode())
    write_index(storage.join(out_dir, INDEX_FILE), rows, classes, settings, source, task=scan.task)
    return IngestResult(
        layout=scan.layout,
        layout_detected=scan.detected,
        kept=len(rows),
        rejected=len(rejects),
        reject_reasons=reasons,
        duplicates=len(rows) - len({r["sha256"] for r in rows}),
        duplicates_across_splits=shared_between_splits(rows),
        skipped_hidden=scan.skipped_hidden,
        classes=classes,
        splits={s: sum(r["split"] == s for r in rows) for s in SPLITS},
        index=storage.join(out_dir, INDEX_FILE),
        rejects=storage.join(out_dir, REJECTS_FILE),
        task=scan.task,
        warnings=warnings,
    )


def _class_order(options: Options, scan, rows: list[dict], rejects: list) -> list[str] | None:
    """The class order of a classification source: --classes, else the source's own (an
    ImageFolder's classes.txt, a ClassLabel's names), else None (sorted names). With a list, a row of
    a class it does not name is rejected (moved from `rows` to `rejects`)."""
    order = list(options.classes) if options.classes else scan.classes
    if order is None:
        return None
    known = set(order)
    where = "--classes" if options.classes else "the source's class list"
    for row in [r for r in rows if r["class_name"] not in known]:
        rows.remove(row)
        rejects.append((row["path"], f"class not in {where} ({row['class_name']!r})"))
    return order


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
    p.add_argument("--classes", metavar="FILE", default=None,
                   help="a class list, one name per line, line N = class id N: the class order (default: the "
                        "dataset's own list where it has one, else names sorted); for pairs and hf-parquet masks "
                        "the names of the mask values (default: SRC/classes.txt)")
    p.add_argument("--mask-ignore", type=int, default=IGNORE_INDEX,
                   help=f"pairs, hf-parquet masks: the mask value of unlabelled pixels (default {IGNORE_INDEX}); "
                        f"it becomes {IGNORE_INDEX}, the index's ignore value")
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
    if not 0 <= args.mask_ignore <= 255:
        raise UserError(f"--mask-ignore: a mask value is 0..255, got {args.mask_ignore}")
    classes = tuple(read_class_list(args.classes)) if args.classes else None
    options = Options(aircraft_label=args.aircraft_label, dtd_split=args.dtd_split, caltech_train=args.caltech_train,
                      classes=classes, mask_ignore=args.mask_ignore)
    summary = ingest(args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                     min_size=args.min_size, workers=args.workers, layout=args.layout, options=options,
                     overwrite=args.overwrite)
    if summary.layout_detected:
        print(f"ingest: {args.src}: detected layout {summary.layout} (--layout to choose another)", file=sys.stderr)
    rejected = f"rejected {summary.rejected}"
    if summary.rejected:
        rejected += f" ({_reasons_text(summary.reject_reasons)}; see {summary.rejects})"
    for warning in summary.warnings:
        print(f"ingest: warning: {warning}", file=sys.stderr)
    task = "segmentation, " if summary.task == SEGMENTATION else ""
    print(f"ingest: kept {summary.kept}, {rejected}; {task}{len(summary.classes)} classes; "
          f"train {summary.splits['train']}, val {summary.splits['val']}"
          + _leak_note(summary.duplicates_across_splits) + _no_val_note(summary.splits["val"]))
    return 0


def _leak_note(shared: int) -> str:
    return f"; warning: {shared} val image(s) also in train (same bytes)" if shared else ""


def _no_val_note(n_val: int) -> str:
    return "; warning: no validation image (a class needs 2 images to lend one to val)" if n_val == 0 else ""
