"""Sources → candidate files: what `tsd ingest` will decode, and what it rejects before decoding.

An ImageFolder tree is walked here (hidden files skipped and counted, system junk rejected, files
outside a class folder rejected); a `.csv`/`.parquet` list is read by `sources.lists`; the
datasets' own layouts by `sources.layouts`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..contract import storage
from ..contract.errors import UserError
from .layouts import (CLASS_FILE, Candidate, Options, Scan, SPLIT_WORDS, format_splits, read_class_list,
                      resolve_layout, scan_layout)
from .lists import read_csv, read_parquet, scan_table

# Files operating systems drop into image folders: listed as rejects without trying to decode them.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "ehthumbs.db", "desktop.ini"})
APPLEDOUBLE_PREFIX = "._"   # macOS resource forks written next to every file on foreign disks


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
        scan = scan_table(str(src), read_csv(src) if suffix == "csv" else read_parquet(src))
        scan.layout, scan.detected = "csv", layout is None
        return scan
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    name, root, detected = resolve_layout(src.absolute(), layout)
    if name == "imagefolder":
        scan = _scan_folder(root, Path(out_dir).absolute() if out_dir else None)
    elif name == "csv":
        scan = scan_table(root, read_csv(root) if root.suffix.lower() == ".csv" else read_parquet(root))
    else:
        if out_dir is None:
            raise UserError(f"{src}: the {name} layout needs a local output folder (its images are extracted there)")
        scan = scan_layout(name, root, Path(out_dir), options or Options())
    scan.layout, scan.detected = name, detected
    return scan


def _is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.startswith(APPLEDOUBLE_PREFIX)


def _scan_folder(root: Path, out_dir: Path | None) -> Scan:
    """SRC/<class>/…, or SRC/<split>/<class>/… when every top-level folder is a split's name (train,
    val, test, valid, validation); a classes.txt in SRC is the class order."""
    scan = Scan([], [])
    skip_dir = os.path.realpath(out_dir) if out_dir else None
    entries = _entries(root)
    folders = [e for e in entries if e.is_dir() and not e.name.startswith(".") and not _is_junk(e.name)
               and os.path.realpath(e.path) != skip_dir]
    split_of = {e.name: SPLIT_WORDS.get(e.name.lower()) for e in folders}   # the whole name, not a prefix
    if folders and all(split_of.values()):
        splits = format_splits(split_of)
        for folder in folders:
            _scan_classes(root, Path(folder.path), skip_dir, scan, splits[folder.name])
        entries = [e for e in entries if e not in folders]
    elif any(split_of.values()):
        named = sorted(n for n, s in split_of.items() if s)
        others = sorted(n for n, s in split_of.items() if not s)
        scan.warnings.append(f"{root}: {'/, '.join(named)}/ named like split folders beside {others[0]}/"
                             f"{' and others' if len(others) > 1 else ''}: all read as classes (put every class "
                             "folder inside train/ and val/ to keep that split)")
    _scan_classes(root, root, skip_dir, scan, None, entries)
    return scan


def _entries(folder: Path) -> list:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise UserError(f"{folder}: cannot list folder ({e.strerror or e})") from None


def _scan_classes(root: Path, folder: Path, skip_dir: str | None, scan: Scan, split: str | None,
                  entries: list | None = None) -> None:
    """The class folders of `folder` (SRC or one of its split folders)."""
    for entry in _entries(folder) if entries is None else entries:
        if _is_junk(entry.name):
            scan.rejects.append((entry.path, "not an image (system file)"))
        elif entry.name.startswith("."):
            scan.skipped_hidden += 1
        elif entry.is_dir():
            if os.path.realpath(entry.path) != skip_dir:
                _scan_class(root, entry, skip_dir, scan, split)
        elif folder == root and entry.name == CLASS_FILE:
            scan.classes = read_class_list(entry.path)
        else:
            scan.rejects.append((entry.path, "not inside a class folder"))


def _scan_class(root: Path, class_dir: os.DirEntry, skip_dir: str | None, scan: Scan, split: str | None) -> None:
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
                scan.candidates.append(Candidate(path, relpath, class_dir.name, split))


