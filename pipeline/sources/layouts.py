"""Source layouts `tsd ingest` reads: the one registry (`LAYOUTS`), detection, and the listing of each.

A layout turns SRC into candidate files (path, relpath, class, split) for `sources.ingest`, which
decodes, checks and indexes them as for any source. `--layout NAME` picks one; without it the
first layout (in registry order) that recognises SRC is used, and ingest prints which.

Official splits are kept, mapped onto the format's two splits (`train`, `val`). An image of an
official test split always goes to `val`, never to `train` (when a list names a file in both, test
wins). The datasets of the paper's recipes follow the paper (train on train+val, report on test):
- `cub200`: `images.txt`, `image_class_labels.txt`, `train_test_split.txt` (1 → train, 0 → val),
  `classes.txt` (class names such as `001.Black_footed_Albatross`);
- `aircraft`: `data/images_<level>_{train,val,test}.txt`, level `variant` (default), `family` or
  `manufacturer` (`--aircraft-label`); train + val → train, test → val;
- `dtd`: `labels/{train,val,test}N.txt`, N = `--dtd-split` (1-10, default 1); trainN + valN →
  train, testN → val;
- `pets`: `annotations/{trainval,test}.txt` (breed = the image name without `_N`); trainval →
  train, test → val;
- `caltech101`: `101_ObjectCategories/<class>/*.jpg` without `BACKGROUND_Google`; no official
  split: per class, a seeded shuffle (ingest's --seed and the class name) puts
  `--caltech-train` images (default 30, the usual protocol) in train, the rest in val.
Layouts that carry image bytes instead of files:
- `hf-parquet`: Hugging Face `datasets` Parquet files (one file or a folder of them) with an Image
  column (`{bytes, path}`) and a ClassLabel column (names from the file's `huggingface` schema
  metadata; plain integer or string labels work too);
- `webdataset`: tars (one file or a folder) whose samples hold a jpg/jpeg/png/webp member and a
  `cls` (integer) or `json` (`label`/`class`/`cls` key) member.
  Their split comes from the file's name or folder (`train…`, `test…`, `validation…`/`val…`):
  test → val; validation → val when there is no test split, else → train (the paper's protocol);
  anything else is split by ingest's seeded `--val-fraction`. Their image bytes are written once,
  content-addressed, to `OUT/images/<sha256[:2]>/<sha256>.<ext>` beside the index (the index's
  `path` column points there, so every later stage reads plain files); the `relpath` that enters
  the uid is `<file>/<row or key>`, relative to SRC.
- `imagefolder` (`SRC/<class>/…`, or `SRC/<split>/<class>/…` when every top-level folder is a split
  name; a `classes.txt` in SRC is the class order) and `csv` (a .csv/.parquet list
  `path,label[,split]`): read by `sources.scan` and `sources.lists`.
Segmentation layouts (each candidate carries the mask it should have and, where the dataset's values
are not class ids, the `masks.LabelMap` to them; ingest checks and indexes the mask, `sources.masks`):
- `ade20k`: `ADEChallengeData2016/images/{training,validation}/*.jpg` with
  `annotations/<part>/<stem>.png`; training → train, validation → val; 0 ("other") → ignored,
  1..150 → 0..149; names from `objectInfo150.txt`/`.csv` when present, else `classlists/ade20k.txt`;
- `voc2012`: `VOC2012/` (or `VOCdevkit/VOC2012/`): `ImageSets/Segmentation/{train,val}.txt` name the
  images `JPEGImages/<id>.jpg` with `SegmentationClass/<id>.png` (palette indices = class ids; 255 =
  borders, ignored); 21 classes (`classlists/voc2012.txt`);
- `cityscapes`: `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` with
  `gtFine/<split>/<city>/*_gtFine_labelIds.png`, labelIds → the 19 train ids, the rest ignored;
- `pairs`: `images/` and `masks/` with matching stems (optional top-level `train/`, `val/` in both),
  classes from `classes.txt` or `--classes`, unlabelled value `--mask-ignore` (default 255);
- `hf-parquet` with a mask column (see above): segmentation, classes as for `pairs`.
A segmentation layout fixes the class list (`Scan.classes`: value i = class i); `--classes` renames
the classes of the datasets' fixed ids (same count) and names those of `pairs` and `hf-parquet`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract.errors import UserError
from ..contract.files import atomic_write
from ..contract.ids import derive_seed, sha256_bytes
from ..contract.tasks import CLASSIFICATION, IGNORE_INDEX, MAX_SEG_CLASSES, SEGMENTATION
from .masks import ADE20K, CITYSCAPES, LabelMap, ignore_map, shipped_classes, write_mask_file

EXTRACTED = "images"     # OUT/images/: image bytes of the byte-carrying layouts, content-addressed
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Candidate:
    path: str            # absolute
    relpath: str         # POSIX, relative to the source root
    class_name: str      # "" for a segmentation sample (its classes are in its mask)
    split: str | None    # from the source's split; None = assign
    mask: str | None = None              # segmentation: the mask file it should have (may not exist)
    mask_map: LabelMap | None = None     # segmentation: source value → class id, when not already ids


@dataclass
class Scan:
    candidates: list
    rejects: list        # (path, reason)
    skipped_hidden: int = 0
    layout: str = ""     # the layout it was read in
    detected: bool = False
    task: str = CLASSIFICATION
    classes: list | None = None   # the source's own class order (index = class id); None: sorted names
    warnings: list = field(default_factory=list)   # one line each, printed by `tsd ingest`


@dataclass(frozen=True)
class Options:
    """Layout options (the `tsd ingest` flags of the same names)."""
    aircraft_label: str = "variant"
    dtd_split: int = 1
    caltech_train: int = 30
    seed: int = 0
    classes: tuple | None = None     # --classes FILE, read: the class order (index = class id)
    mask_ignore: int = IGNORE_INDEX  # --mask-ignore: the value of unlabelled pixels in pairs / hf-parquet masks


@dataclass(frozen=True)
class Layout:
    name: str
    what: str                                        # one line for --help and the detection note
    find: Callable[[Path], Path | None]              # the layout's root for SRC, or None
    scan: Callable[[Path, Path, Options], Scan] | None = None   # None: scanned by sources.ingest
    task: str = CLASSIFICATION                       # hf-parquet is either: its scan says (Scan.task)


# -- helpers -----------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _need(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: missing (expected in this layout)")
    return path


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _candidate(root: Path, relpath: str, class_name: str, split: str | None) -> Candidate:
    return Candidate(str(root / relpath), relpath, class_name, split)


def _official(root: Path, listed: dict[str, tuple[str, str]]) -> Scan:
    """Candidates from {relpath: (class, split)}, in relpath order."""
    return Scan([_candidate(root, rel, cls, split) for rel, (cls, split) in sorted(listed.items())], [])


def _add(listed: dict, relpath: str, class_name: str, split: str) -> None:
    """Record a listed file; a file an official test list names stays in val whatever else lists it."""
    if listed.get(relpath, (None, None))[1] == "val":
        return
    listed[relpath] = (class_name, split)


# -- cub200 ------------------------------------------------------------------------------------------
def find_cub(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / "CUB_200_2011")
                    if (d / "images.txt").is_file() and (d / "train_test_split.txt").is_file()))


def scan_cub(root: Path, out: Path, options: Options) -> Scan:
    def table(name: str) -> dict[str, str]:
        rows = {}
        for line in _lines(_need(root / name)):
            key, _, value = line.partition(" ")
            rows[key] = value.strip()
        return rows

    images, labels = table("images.txt"), table("image_class_labels.txt")
    is_train, classes = table("train_test_split.txt"), table("classes.txt")
    listed, rejects = {}, []
    for image_id, rel in images.items():
        where = f"{root / 'images.txt'}: image {image_id}"
        if image_id not in labels or labels[image_id] not in classes or image_id not in is_train:
            rejects.append((where, "no class or split in image_class_labels.txt / train_test_split.txt"))
            continue
        _add(listed, f"images/{rel}", classes[labels[image_id]], "train" if is_train[image_id] == "1" else "val")
    scan = _official(root, listed)
    scan.rejects += rejects
    return scan


# -- aircraft ----------------------------------------------------------------------------------------
AIRCRAFT_LEVELS = ("variant", "family", "manufacturer")


def find_aircraft(src: Path) -> Path | None:
    for data in (src / "data", src / "fgvc-aircraft-2013b" / "data", src):
        if (data / "images_variant_test.txt").is_file():
            return data
    return None


def scan_aircraft(root: Path, out: Path, options: Options) -> Scan:
    level = options.aircraft_label
    if level not in AIRCRAFT_LEVELS:
        raise UserError(f"--aircraft-label: {level!r}, expected one of {', '.join(AIRCRAFT_LEVELS)}")
    listed = {}
    for part, split in (("train", "train"), ("val", "train"), ("test", "val")):
        for line in _lines(_need(root / f"images_{level}_{part}.txt")):
            image_id, _, name = line.partition(" ")   # names hold spaces and slashes: 'F/A-18', 'Boeing 707'
            _add(listed, f"images/{image_id}.jpg", name.strip(), split)
    return _official(root, listed)


# -- dtd ---------------------------------------------------------------------------------------------
def find_dtd(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / "dtd") if (d / "labels" / "test1.txt").is_file() and (d / "images").is_dir()))


def scan_dtd(root: Path, out: Path, options: Options) -> Scan:
    n = options.dtd_split
    if not 1 <= n <= 10:
        raise UserError(f"--dtd-split: {n}, DTD has splits 1 to 10")
    listed = {}
    for part, split in (("train", "train"), ("val", "train"), ("test", "val")):
        for rel in _lines(_need(root / "labels" / f"{part}{n}.txt")):
            _add(listed, f"images/{rel}", rel.split("/")[0], split)
    return _official(root, listed)


# -- pets --------------------------------------------------------------------------------------------
def find_pets(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / "oxford-iiit-pet")
                    if (d / "annotations" / "trainval.txt").is_file() and (d / "annotations" / "test.txt").is_file()))


def scan_pets(root: Path, out: Path, options: Options) -> Scan:
    listed = {}
    for part, split in (("trainval", "train"), ("test", "val")):
        for line in _lines(_need(root / "annotations" / f"{part}.txt")):
            name = line.split()[0]                    # 'Abyssinian_100 1 1 1': image, class id, species, breed id
            _add(listed, f"images/{name}.jpg", re.sub(r"_\d+$", "", name), split)
    return _official(root, listed)


# -- caltech101 --------------------------------------------------------------------------------------
CALTECH_FOLDER = "101_ObjectCategories"
CALTECH_EXCLUDED = "BACKGROUND_Google"


def find_caltech(src: Path) -> Path | None:
    for d in (src / CALTECH_FOLDER, src / "caltech-101" / CALTECH_FOLDER, src):
        if d.name == CALTECH_FOLDER and d.is_dir():
            return d
    return None


def scan_caltech(root: Path, out: Path, options: Options) -> Scan:
    if options.caltech_train < 1:
        raise UserError(f"--caltech-train: must be at least 1, got {options.caltech_train}")
    scan = Scan([], [])
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == CALTECH_EXCLUDED:      # clutter, not a class
            continue
        files = sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        n_train = min(options.caltech_train, len(files) - 1) if len(files) > 1 else len(files)
        order = np.random.Generator(np.random.PCG64(derive_seed(options.seed, folder.name, "caltech101-split")))
        train = {files[i] for i in order.permutation(len(files))[:n_train]}
        scan.candidates += [_candidate(root, rel, folder.name, "train" if rel in train else "val") for rel in files]
    return scan


# -- segmentation: shared -----------------------------------------------------------------------------
CLASS_FILE = "classes.txt"   # a class list: one name per line, its line number (from 0) the class id


def read_class_list(path) -> list[str]:
    """A class list file (one name per line; blank lines and '#' lines skipped): the class order."""
    names = _lines(Path(path))
    if not names:
        raise UserError(f"{path}: no class name in it (one name per line)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: class {repeated[0]!r} listed twice")
    return names


def _class_file(src: Path) -> Path | None:
    """A classes.txt in SRC (a folder) or beside it (a file)."""
    path = (src if src.is_dir() else src.parent) / CLASS_FILE
    return path if path.is_file() else None


def _seg_classes(options: Options, default, layout: str, fixed: bool = False) -> list[str]:
    """A segmentation layout's classes: --classes when given, else `default` (a list, or a class
    list file); `fixed` layouts (the datasets' own ids) take only a list of the same length."""
    if isinstance(default, Path) or default is None:
        if default is None and not options.classes:
            raise UserError(f"the {layout} layout needs its class names: a {CLASS_FILE} in SRC (one name per "
                            "line, line N = class id N) or --classes FILE")
        default = read_class_list(default) if default is not None else None
    classes = list(options.classes) if options.classes else default
    if fixed and len(classes) != len(default):
        raise UserError(f"--classes: {len(classes)} names, the {layout} layout has {len(default)} classes")
    if len(classes) > MAX_SEG_CLASSES:
        raise UserError(f"{layout}: {len(classes)} classes, a segmentation mask holds at most {MAX_SEG_CLASSES} "
                        f"(8-bit ids, {IGNORE_INDEX} = ignore)")
    return classes


def _seg_scan(candidates: list, classes: list[str], rejects: list | None = None) -> Scan:
    return Scan(candidates, rejects or [], task=SEGMENTATION, classes=classes)


def _visible(folder: Path) -> list[Path]:
    """Files under `folder` (recursively), hidden ones left out, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# -- pairs: images/ + masks/ -------------------------------------------------------------------------
def find_pairs(src: Path) -> Path | None:
    return src if (src / "images").is_dir() and (src / "masks").is_dir() else None


def scan_pairs(root: Path, out: Path, options: Options) -> Scan:
    """images/<stem>.<jpg|png|webp> with masks/<stem>.png (stems may hold folders); top-level
    train/ and val/ (or test/, validation/) subfolders in both are official splits."""
    classes = _seg_classes(options, _class_file(root), "pairs")
    mapping = ignore_map(options.mask_ignore)
    images, masks = root / "images", root / "masks"
    mask_of = {p.relative_to(masks).with_suffix("").as_posix(): p for p in _visible(masks)}
    files = _visible(images)
    rels = [p.relative_to(images).as_posix() for p in files]
    tops = {r.split("/")[0]: SPLIT_WORDS.get(r.split("/")[0].lower()) if "/" in r else None for r in rels}
    splits = format_splits(tops)
    scan = _seg_scan([], classes)
    paired = set()
    for file, rel in zip(files, rels):
        stem = rel.rsplit(".", 1)[0] if "." in rel.split("/")[-1] else rel
        mask = mask_of.get(stem, masks / f"{stem}.png")
        paired.add(stem)
        scan.candidates.append(Candidate(str(file), f"images/{rel}", "", splits[rel.split("/")[0]], str(mask), mapping))
    scan.rejects += [(str(p), "mask with no image") for stem, p in mask_of.items() if stem not in paired]
    return scan


# -- ade20k ------------------------------------------------------------------------------------------
ADE_FOLDER = "ADEChallengeData2016"
ADE_PARTS = (("training", "train"), ("validation", "val"))


def find_ade20k(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / ADE_FOLDER)
                    if (d / "images" / "training").is_dir() and (d / "annotations" / "training").is_dir()))


def ade20k_classes(root: Path) -> list[str]:
    """The 150 class names: objectInfo150.txt/.csv when the tree has one (first synonym of its Name
    column: 'building, edifice' → building), else the shipped list (the same names, in the same order)."""
    import csv

    for folder in (root, root.parent):
        for name in ("objectInfo150.csv", "objectInfo150.txt"):
            path = folder / name
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            rows = list(csv.DictReader(text.splitlines(), delimiter="," if name.endswith(".csv") else "\t"))
            try:
                names = [re.split(r"[,;]", r["Name"])[0].strip() for r in sorted(rows, key=lambda r: int(r["Idx"]))]
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: expected columns Idx and Name") from None
            if len(names) != 150:
                raise UserError(f"{path}: {len(names)} classes, ADE20K's SceneParsing benchmark has 150")
            return names
    return shipped_classes("ade20k")


def scan_ade20k(root: Path, out: Path, options: Options) -> Scan:
    scan = _seg_scan([], _seg_classes(options, ade20k_classes(root), "ade20k", fixed=True))
    for part, split in ADE_PARTS:
        for file in _visible(root / "images" / part):
            rel = file.relative_to(root).as_posix()
            mask = root / "annotations" / part / file.relative_to(root / "images" / part).with_suffix(".png")
            scan.candidates.append(Candidate(str(file), rel, "", split, str(mask), ADE20K))
    return scan


# -- voc2012 -----------------------------------------------------------------------------------------
def find_voc(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012")
                    if (d / "ImageSets" / "Segmentation" / "train.txt").is_file()
                    and (d / "SegmentationClass").is_dir()))


def scan_voc(root: Path, out: Path, options: Options) -> Scan:
    """The images ImageSets/Segmentation/{train,val}.txt list (the rest of JPEGImages has no mask);
    palette PNG indices are the class ids, 255 (object borders) is the ignore value already."""
    scan = _seg_scan([], _seg_classes(options, shipped_classes("voc2012"), "voc2012", fixed=True))
    listed = {}
    for part in ("train", "val"):
        for image_id in _lines(_need(root / "ImageSets" / "Segmentation" / f"{part}.txt")):
            _add(listed, image_id.split()[0], "", part)
    for image_id, (_, split) in sorted(listed.items()):
        scan.candidates.append(Candidate(str(root / "JPEGImages" / f"{image_id}.jpg"), f"JPEGImages/{image_id}.jpg",
                                         "", split, str(root / "SegmentationClass" / f"{image_id}.png")))
    return scan


# -- cityscapes --------------------------------------------------------------------------------------
CITYSCAPES_IMAGE, CITYSCAPES_MASK = "_leftImg8bit.png", "_gtFine_labelIds.png"


def find_cityscapes(src: Path) -> Path | None:
    return _first(*(d for d in (src, src / "cityscapes") if (d / "leftImg8bit").is_dir() and (d / "gtFine").is_dir()))


def scan_cityscapes(root: Path, out: Path, options: Options) -> Scan:
    """leftImg8bit/{train,val}/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png,
    labelIds → the 19 train ids (the rest ignored); the test split has no public labels."""
    scan = _seg_scan([], _seg_classes(options, shipped_classes("cityscapes"), "cityscapes", fixed=True))
    for split in ("train", "val"):
        folder = root / "leftImg8bit" / split
        for file in _visible(folder):
            if not file.name.endswith(CITYSCAPES_IMAGE):
                continue
            rel = file.relative_to(folder).as_posix()
            mask = root / "gtFine" / split / (rel[: -len(CITYSCAPES_IMAGE)] + CITYSCAPES_MASK)
            scan.candidates.append(Candidate(str(file), f"leftImg8bit/{split}/{rel}", "", split, str(mask), CITYSCAPES))
    return scan


# -- splits told by file names (hf-parquet, webdataset) ----------------------------------------------
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test",
               "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}


def named_split(relpath: str) -> str | None:
    """'train' | 'test' | 'validation' from a file's name (train-00000-of-00002.parquet) or a folder
    of its path (default/test/0000.parquet); None when neither says."""
    parts = relpath.split("/")
    name = re.split(r"[-_.]", parts[-1].lower())[0]
    for word in [name] + [p.lower() for p in reversed(parts[:-1])]:
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return None


def format_splits(named: dict[str, str | None]) -> dict[str, str | None]:
    """file → train | val | None: test → val; validation → val, or train when a test split exists."""
    has_test = "test" in named.values()
    mapping = {"train": "train", "test": "val", "validation": "train" if has_test else "val", None: None}
    return {f: mapping[s] for f, s in named.items()}


def _files(src: Path, suffix: str, out: Path | None = None) -> list[Path]:
    """SRC itself, or its files ending in `suffix` (not hidden, not in the output folder)."""
    if src.is_file():
        return [src]
    skip = os.path.realpath(out) if out else None
    return sorted(p for p in src.rglob(f"*{suffix}") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(src).parts)
        and not (skip and os.path.realpath(p).startswith(skip + os.sep)))


def _rel(src: Path, path: Path) -> str:
    return path.name if src.is_file() else path.relative_to(src).as_posix()


def split_files(src: Path, suffix: str, out: Path) -> list[tuple[Path, str, str | None]]:
    """(file, its path relative to SRC, its format split or None) of every data file of SRC."""
    files = {_rel(src, f): f for f in _files(src, suffix, out)}
    splits = format_splits({rel: named_split(rel) for rel in files})
    return [(files[rel], rel, splits[rel]) for rel in files]


def sniff_ext(data: bytes, name: str | None = None) -> str:
    """A file extension for image bytes (decode does not need it; people reading OUT/images do)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    suffix = Path(name or "").suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "img"


def extract(out: Path, data: bytes, name: str | None = None) -> str:
    """Write image bytes once under OUT/images/, named by their sha256; returns the path."""
    sha = sha256_bytes(data)
    path = out / EXTRACTED / sha[:2] / f"{sha}.{sniff_ext(data, name)}"
    if not path.is_file():
        atomic_write(path, data)
    return str(path)


# -- hf-parquet --------------------------------------------------------------------------------------
def _hf_features(schema) -> dict:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    info = json.loads(meta)
    return (info.get("info") or info).get("features") or {}


MASK_COLUMN_WORDS = ("mask", "annotation", "seg", "label", "gt")   # a mask column's name holds one of these


def _image_columns(schema) -> list[str]:
    """Columns holding images: the `Image` features, else the {bytes, path} structs, in file order."""
    import pyarrow as pa

    features = _hf_features(schema)
    named = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    return named or [field.name for field in schema
                     if pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}]


def _image_and_mask_columns(schema) -> tuple[str | None, str | None]:
    """(image column, mask column or None): the mask is the image column whose name says so
    (mask, annotation, segmentation, label, gt); the image is the first other one."""
    columns = _image_columns(schema)
    mask = next((c for c in columns if any(w in c.lower() for w in MASK_COLUMN_WORDS)), None) \
        if len(columns) > 1 else None
    return next((c for c in columns if c != mask), None), mask


def _image_column(schema) -> str | None:
    return _image_and_mask_columns(schema)[0]


def find_hf_parquet(src: Path) -> Path | None:
    import pyarrow.parquet as pq

    files = _files(src, ".parquet") if src.is_dir() or src.suffix.lower() in (".parquet", ".pq") else []
    if not files:
        return None
    try:
        return src if _image_column(pq.read_schema(files[0])) else None
    except Exception:  # noqa: BLE001 - not a readable Parquet file: not this layout
        return None


def _row_file(out: Path, parquet_path: Path, cell, write) -> str | None:
    """An image struct {bytes, path} → a file: its bytes written by `write`, or its path next to the
    Parquet file; None when it has neither."""
    if cell and cell.get("bytes"):
        return write(cell)
    if cell and cell.get("path"):
        return str((parquet_path.parent / cell["path"]).resolve())
    return None


def scan_hf_parquet(src: Path, out: Path, options: Options) -> Scan:
    """An image column and a ClassLabel (or plain) label column: classification; an image column and
    a mask column (another image column named mask/annotation/segmentation/label): segmentation,
    classes from --classes or a classes.txt beside the files (`datasets` features name no pixel classes)."""
    import pyarrow.parquet as pq

    scan = Scan([], [])
    mapping = None
    for path, rel, split in split_files(src, ".parquet", out):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise UserError(f"{path}: cannot read Parquet ({e})") from None
        image_col, mask_col = _image_and_mask_columns(parquet.schema_arrow)
        features = _hf_features(parquet.schema_arrow)
        label_col = mask_col or next(
            (n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"),
            "label" if "label" in parquet.schema_arrow.names else None)
        if image_col is None or label_col is None:
            raise UserError(f"{path}: expected an Image column ({{bytes, path}}) and a ClassLabel or 'label' "
                            f"column, or a mask column (columns: {', '.join(parquet.schema_arrow.names)})")
        if mask_col and scan.task != SEGMENTATION:
            scan.task, mapping = SEGMENTATION, ignore_map(options.mask_ignore)
            scan.classes = _seg_classes(options, _class_file(src), "hf-parquet")
        names = (features.get(label_col) or {}).get("names")
        row = 0
        for batch in parquet.iter_batches(batch_size=256, columns=[image_col, label_col]):
            for image, label in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                where = f"{rel}/{row}"
                row += 1
                file = _row_file(out, path, image, lambda c: extract(out, c["bytes"], c.get("path")))
                if file is None:
                    scan.rejects.append((f"{path}:row {row - 1}", "no image bytes or path"))
                    continue
                if mask_col:
                    mask = _row_file(out, path, label, lambda c: write_mask_file(out, c["bytes"]))
                    scan.candidates.append(Candidate(file, where, "", split, mask, mapping))
                    continue
                if label is None or isinstance(label, int) and label < 0:
                    scan.rejects.append((f"{path}:row {row - 1}", "no label"))
                    continue
                class_name = names[label] if names and isinstance(label, int) and label < len(names) else str(label)
                if names and scan.classes is None:
                    scan.classes = list(names)     # the dataset's own class order
                scan.candidates.append(Candidate(file, where, class_name, split))
    return scan


# -- webdataset --------------------------------------------------------------------------------------
JSON_LABEL_KEYS = ("label", "class", "cls", "class_name")


def find_webdataset(src: Path) -> Path | None:
    if src.is_file():
        return src if src.suffix.lower() == ".tar" else None
    return src if any(p.suffix.lower() == ".tar" for p in src.iterdir() if p.is_file()) else None


def _wds_label(sample: dict) -> str | None:
    if "cls" in sample:
        return sample["cls"].decode("utf-8", "replace").strip() or None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return None
        value = next((meta[k] for k in JSON_LABEL_KEYS if isinstance(meta, dict) and k in meta), None)
        return None if value is None else str(value)
    return None


def scan_webdataset(src: Path, out: Path, options: Options) -> Scan:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    scan = Scan([], [])
    for path, rel, split in split_files(src, ".tar", out):
        try:
            with open(path, "rb") as f:   # members are read into memory, never extracted by name
                members = ({**m, "__url__": rel} for m in tar_file_iterator(f))
                for sample in group_by_keys(members):
                    key = sample["__key__"]
                    ext = next((e for e in IMAGE_EXTS if e in sample), None)
                    label = _wds_label(sample)
                    if ext is None or label is None:
                        what = "no jpg/jpeg/png/webp member" if ext is None else "no cls or json label"
                        scan.rejects.append((f"{path}:{key}", what))
                        continue
                    scan.candidates.append(Candidate(extract(out, sample[ext], f"x.{ext}"), f"{rel}/{key}",
                                                     label, split))
        except (OSError, ValueError, EOFError) as e:
            scan.rejects.append((str(path), f"unreadable tar ({e})"))
        except Exception as e:  # noqa: BLE001 - tarfile.ReadError and friends
            scan.rejects.append((str(path), f"unreadable tar ({type(e).__name__}: {e})"))
    return scan


# -- the registry --------------------------------------------------------------------------------------
def _is_table(src: Path) -> Path | None:
    return src if src.is_file() and src.suffix.lower() in (".csv", ".parquet", ".pq") else None


LAYOUTS = {layout.name: layout for layout in (   # detection order: most specific first
    Layout("ade20k", "ADE20K SceneParsing (ADEChallengeData2016/: images/, annotations/{training,validation})",
           find_ade20k, scan_ade20k, SEGMENTATION),
    Layout("voc2012", "Pascal VOC 2012 segmentation (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
           find_voc, scan_voc, SEGMENTATION),
    Layout("cityscapes", "Cityscapes (leftImg8bit/{train,val}/<city>/, gtFine/…_labelIds.png → 19 train ids)",
           find_cityscapes, scan_cityscapes, SEGMENTATION),
    Layout("pairs", "segmentation pairs: images/ and masks/ (matching stems, optional train/ val/), classes.txt",
           find_pairs, scan_pairs, SEGMENTATION),
    Layout("cub200", "CUB-200-2011 (images.txt, image_class_labels.txt, train_test_split.txt, classes.txt)",
           find_cub, scan_cub),
    Layout("aircraft", "FGVC-Aircraft (data/images_<level>_{train,val,test}.txt)", find_aircraft, scan_aircraft),
    Layout("dtd", "DTD (labels/{train,val,test}N.txt, images/)", find_dtd, scan_dtd),
    Layout("pets", "Oxford-IIIT Pets (annotations/{trainval,test}.txt, images/)", find_pets, scan_pets),
    Layout("caltech101", "Caltech-101 (101_ObjectCategories/, BACKGROUND_Google left out)", find_caltech,
           scan_caltech),
    Layout("webdataset", "WebDataset tars (jpg/png/webp + cls or json)", find_webdataset, scan_webdataset),
    Layout("hf-parquet", "Hugging Face datasets Parquet (Image column + ClassLabel, or + a mask column)", find_hf_parquet,
           scan_hf_parquet),
    Layout("csv", "a .csv or .parquet list with columns path,label[,split]", _is_table),
    Layout("imagefolder", "an ImageFolder tree SRC/<class>/…", lambda src: src if src.is_dir() else None),
)}


def resolve_layout(src: Path, name: str | None) -> tuple[str, Path, bool]:
    """(layout name, its root, detected?) for SRC: `name` checked, or the first layout that recognises SRC."""
    if name is not None:
        if name not in LAYOUTS:
            raise UserError(f"--layout: unknown layout {name!r} (known: {', '.join(LAYOUTS)})")
        root = LAYOUTS[name].find(src)
        if root is None:
            raise UserError(f"{src}: not in the {name} layout: {LAYOUTS[name].what}")
        return name, root, False
    for layout in LAYOUTS.values():
        root = layout.find(src)
        if root is not None:
            return layout.name, root, True
    raise UserError(f"{src}: not a folder, .csv or .parquet file (nor a webdataset .tar)")


def scan_layout(name: str, root: Path, out: Path, options: Options) -> Scan:
    return LAYOUTS[name].scan(root, Path(os.path.abspath(out)), options)
