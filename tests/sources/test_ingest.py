"""`tsd ingest`: real files, built here with PIL, covering every rule of pipeline/sources/ (ingest, scan, lists, split).

| file in the zoo                    | expected                                           |
| ---------------------------------- | -------------------------------------------------- |
| plain RGB JPEG/PNG, nested folders | kept, mode RGB                                     |
| byte copy of another file          | kept (own uid), counted as a duplicate             |
| truncated JPEG                     | rejected "truncated or corrupt"                    |
| zero-byte .jpg                     | rejected "empty file"                              |
| text saved as .jpg, a .txt file    | rejected "not an image"                            |
| EPS (decoded by Ghostscript)       | rejected "unsupported format EPS"                  |
| .DS_Store, Thumbs.db               | rejected "not an image"                            |
| CMYK JPEG                          | kept, RGB by PIL's conversion                      |
| 16-bit grey PNG (I;16) gradient    | kept, 0..65535 → 0..255                            |
| 32-bit int (I) / float (F) TIFF    | kept, 16-bit range / 0..1 scaled to 0..255         |
| LAB TIFF, 1-bit PNG, grey JPEG     | kept                                               |
| palette PNG with transparency      | kept, transparent pixels white                     |
| RGBA PNG, LA PNG                   | kept, composited over white                        |
| EXIF orientation 6 JPEG            | kept, width/height swapped, pixels rotated         |
| animated GIF, multi-page TIFF      | kept, first frame                                  |
| 1×1 PNG                            | rejected "too small"                               |
| PNG header claiming 10000×10000    | rejected "too large (10000×10000 ...)"             |
| PNG header claiming 30000×30000    | rejected "too large" (PIL's own guard)             |
| file directly under SRC            | rejected "not inside a class folder"               |
| hidden file, hidden folder         | skipped (counted), in neither table                |
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import csv
import hashlib
import io
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import cli  # noqa: E402
from pipeline.contract.errors import UserError  # noqa: E402
from pipeline.contract.ids import make_uid
from pipeline.testing.toydata import write_toy_dataset
from pipeline.sources.decode import ImageRejected, open_rgb  # noqa: E402
from pipeline.sources.index import INDEX_COLUMNS  # noqa: E402
from pipeline.sources.ingest import ingest  # noqa: E402
from pipeline.sources.layouts import Options
from pipeline.sources.split import assign_splits, sort_classes  # noqa: E402

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# -- building real files ------------------------------------------------------------------------
def _save(path: Path, image: Image.Image, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _halves(width: int, height: int, left, right, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height), left)
    image.paste(Image.new(mode, (width - width // 2, height), right), (width // 2, 0))
    return image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but whose data is a few bytes: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def _gradient(width: int, height: int, lo: float, hi: float, dtype) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, width), (height, 1)).astype(dtype)


def _build_zoo(root: Path) -> dict:
    """The folder of broken and unusual files; returns {relpath: ('kept', mode) | ('rejected', text)}."""
    expect = {}

    def kept(rel, mode):
        expect[rel] = ("kept", mode)

    def rejected(rel, text):
        expect[rel] = ("rejected", text)

    _save(root / "cats/a.jpg", _noise(40, 30, 1), quality=90); kept("cats/a.jpg", "RGB")
    _save(root / "cats/b.png", _noise(20, 50, 2)); kept("cats/b.png", "RGB")
    _save(root / "cats/sub/deeper/c.jpg", _noise(32, 32, 3)); kept("cats/sub/deeper/c.jpg", "RGB")
    shutil.copy(root / "cats/a.jpg", root / "cats/copy_of_a.jpg"); kept("cats/copy_of_a.jpg", "RGB")

    whole = io.BytesIO()
    _noise(64, 64, 4).save(whole, "JPEG", quality=90)
    _write(root / "odd/truncated.jpg", whole.getvalue()[: len(whole.getvalue()) * 6 // 10])
    rejected("odd/truncated.jpg", "truncated or corrupt")
    _write(root / "odd/empty.jpg", b""); rejected("odd/empty.jpg", "empty file")
    _write(root / "odd/text.jpg", b"hello, I am not a JPEG\n"); rejected("odd/text.jpg", "not an image")
    _write(root / "odd/notes.txt", b"some notes\n"); rejected("odd/notes.txt", "not an image")
    _write(root / "odd/.DS_Store", b"\0\0\0\1Bud1"); rejected("odd/.DS_Store", "not an image")
    _write(root / "odd/Thumbs.db", b"\xd0\xcf\x11\xe0"); rejected("odd/Thumbs.db", "not an image")

    _save(root / "odd/vector.eps", Image.new("RGB", (20, 20), RED))
    rejected("odd/vector.eps", "unsupported format EPS")

    _save(root / "odd/cmyk.jpg", Image.new("CMYK", (24, 24), (0, 255, 255, 0)), quality=95)
    kept("odd/cmyk.jpg", "CMYK")
    _save(root / "odd/grey16.png", Image.fromarray(_gradient(256, 20, 0, 65535, np.uint16)))
    kept("odd/grey16.png", "I;16")
    _save(root / "odd/int32.tiff", Image.fromarray(_gradient(256, 20, 0, 65535, np.int32)))
    kept("odd/int32.tiff", "I")
    _save(root / "odd/float.tiff", Image.fromarray(_gradient(256, 20, -0.5, 1.5, np.float32)))
    kept("odd/float.tiff", "F")
    _save(root / "odd/lab.tiff", Image.new("LAB", (20, 20), (255, 128, 128))); kept("odd/lab.tiff", "LAB")
    _save(root / "odd/bilevel.png", _halves(20, 20, 0, 1, "1")); kept("odd/bilevel.png", "1")
    _save(root / "odd/grey.jpg", Image.new("L", (30, 20), 77)); kept("odd/grey.jpg", "L")

    palette = _halves(32, 20, 0, 1, "P")
    palette.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    _save(root / "odd/palette.png", palette, transparency=0); kept("odd/palette.png", "P")
    rgba = _halves(32, 20, (0, 0, 255, 0), (0, 0, 255, 255), "RGBA")
    rgba.paste(Image.new("RGBA", (2, 20), (0, 0, 255, 128)), (15, 0))
    _save(root / "odd/rgba.png", rgba); kept("odd/rgba.png", "RGBA")
    _save(root / "odd/la.png", _halves(32, 20, (0, 0), (0, 255), "LA")); kept("odd/la.png", "LA")

    exif = Image.Exif()
    exif[0x0112] = 6   # orientation: rotate 90° clockwise to display
    _save(root / "odd/exif6.jpg", _halves(40, 24, RED, BLUE), exif=exif, quality=95)
    kept("odd/exif6.jpg", "RGB")

    frames = [Image.new("RGB", (20, 20), c).convert("P") for c in (RED, (0, 255, 0), BLUE)]
    _save(root / "odd/animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    kept("odd/animated.gif", "P")
    pages = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE)]
    _save(root / "odd/pages.tiff", pages[0], save_all=True, append_images=pages[1:])
    kept("odd/pages.tiff", "RGB")

    _save(root / "odd/tiny.png", Image.new("RGB", (1, 1))); rejected("odd/tiny.png", "too small")
    _write(root / "odd/bomb.png", _png_header_only(10_000, 10_000))
    rejected("odd/bomb.png", "too large (10000×10000 pixels")
    _write(root / "odd/huge_bomb.png", _png_header_only(30_000, 30_000))
    rejected("odd/huge_bomb.png", "too large")

    _write(root / "README.txt", b"about this folder\n"); rejected("README.txt", "not inside a class folder")
    _save(root / "cats/.hidden.jpg", _noise(20, 20, 5))
    _save(root / ".cache/dogs/d.jpg", _noise(20, 20, 6))
    return expect


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The zoo, ingested once: (root, expectations, summary, index rows, reject rows, out dir)."""
    root = tmp_path_factory.mktemp("zoo") / "src"
    expect = _build_zoo(root)
    out = root.parent / "out"
    with pytest.warns(Image.DecompressionBombWarning):   # PIL warns between its limit and twice it
        summary = ingest(root, out, workers=1)
    index = pq.read_table(out / "index.parquet")
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    return root, expect, summary, index, rejects, out


def _rel(root: Path, path: str) -> str:
    return Path(path).relative_to(root).as_posix()


# -- the zoo: every file kept or rejected by the rules -------------------------------------------
def test_every_file_is_kept_or_rejected_as_the_rules_say(zoo):
    root, expect, summary, index, rejects, _ = zoo
    kept = {r["relpath"]: r for r in index.to_pylist()}
    rejected = {_rel(root, r["path"]): r["reason"] for r in rejects}
    assert not set(kept) & set(rejected)
    for rel, (outcome, detail) in expect.items():
        if outcome == "kept":
            assert rel in kept, f"{rel} not kept: {rejected.get(rel)}"
            assert kept[rel]["source_mode"] == detail, rel
        else:
            assert rel in rejected, f"{rel} not rejected"
            assert detail in rejected[rel], f"{rel}: {rejected[rel]!r} does not say {detail!r}"
    assert set(kept) | set(rejected) == set(expect)   # nothing else, nothing missing
    assert summary.kept == len(kept) and summary.rejected == len(rejected)
    assert summary.skipped_hidden == 2             # cats/.hidden.jpg and the .cache folder


def test_nothing_on_disk_is_missing_from_both_tables(zoo):
    root, _, _, index, rejects, _ = zoo
    listed = set(index.column("path").to_pylist()) | {r["path"] for r in rejects}
    def skipped_as_hidden(path: Path) -> bool:
        return path.name != ".DS_Store" and any(part.startswith(".") for part in path.relative_to(root).parts)
    on_disk = {str(p) for p in root.rglob("*") if p.is_file() and not skipped_as_hidden(p)}
    assert on_disk == listed


def test_index_schema_classes_and_rows(zoo):
    root, _, summary, index, _, out = zoo
    assert tuple(index.column_names) == INDEX_COLUMNS
    types = {f.name: f.type for f in index.schema}
    assert types["label"] == types["width"] == types["height"] == pa.int32()
    classes = json.loads(index.schema.metadata[b"tsdistill.classes"])
    assert classes == ["cats", "odd"] == summary.classes
    assert json.loads((out / "classes.json").read_text()) == classes
    assert json.loads(index.schema.metadata[b"tsdistill.ingest"]) == {
        "min_size": 16, "max_pixels": 89_478_485, "val_fraction": 0.1, "seed": 0}
    rows = index.to_pylist()
    assert [r["uid"] for r in rows] == sorted(r["uid"] for r in rows)
    for r in rows:
        data = Path(r["path"]).read_bytes()
        assert Path(r["path"]).is_absolute() and Path(r["path"]) == root / r["relpath"]
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["uid"] == make_uid("real", r["sha256"], r["relpath"])
        assert classes[r["label"]] == r["class_name"] == r["relpath"].split("/")[0]
        assert r["split"] in ("train", "val")


def test_duplicate_files_are_separate_rows_and_counted(zoo):
    _, _, summary, index, _, _ = zoo
    rows = {r["relpath"]: r for r in index.to_pylist()}
    a, copy = rows["cats/a.jpg"], rows["cats/copy_of_a.jpg"]
    assert a["sha256"] == copy["sha256"] and a["uid"] != copy["uid"]
    assert summary.duplicates == 1
    assert summary.duplicates_across_splits == (a["split"] != copy["split"])


def test_exif_orientation_swaps_size_and_rotates_pixels(zoo):
    root, _, _, index, _, _ = zoo
    row = next(r for r in index.to_pylist() if r["relpath"] == "odd/exif6.jpg")
    assert (row["width"], row["height"]) == (24, 40)
    pixels = np.asarray(open_rgb(root / "odd/exif6.jpg")).astype(int)
    # stored left half (red) is the displayed top once turned 90° clockwise
    assert np.abs(pixels[5, 12] - RED).max() < 40 and np.abs(pixels[34, 12] - BLUE).max() < 40


def test_sixteen_bit_and_float_grey_are_scaled_to_the_full_8_bit_range(zoo):
    root = zoo[0]
    for name in ("grey16.png", "int32.tiff", "float.tiff"):
        image = open_rgb(root / "odd" / name)
        assert image.mode == "RGB"
        row = np.asarray(image)[10].astype(int)
        assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all(), name
        assert row[0, 0] <= 1 and row[-1, 0] >= 254, name
        assert (np.diff(row[:, 0]) >= 0).all(), name
    mid = np.asarray(open_rgb(root / "odd/grey16.png"))[10, 128, 0]
    assert 125 <= mid <= 130   # halfway up the 16-bit ramp is halfway up the 8-bit one


def test_transparency_is_composited_over_white(zoo):
    root = zoo[0]
    palette = np.asarray(open_rgb(root / "odd/palette.png")).astype(int)
    assert tuple(palette[10, 2]) == WHITE and tuple(palette[10, 30]) == RED
    rgba = np.asarray(open_rgb(root / "odd/rgba.png")).astype(int)
    assert tuple(rgba[10, 2]) == WHITE and tuple(rgba[10, 30]) == BLUE
    assert np.abs(rgba[10, 15] - (127, 127, 255)).max() <= 1   # half-transparent blue on white
    la = np.asarray(open_rgb(root / "odd/la.png")).astype(int)
    assert tuple(la[10, 2]) == WHITE and tuple(la[10, 30]) == (0, 0, 0)


def test_other_modes_convert_to_the_expected_colours(zoo):
    root = zoo[0]
    def colour(name, x=5, y=5):
        return np.asarray(open_rgb(root / "odd" / name)).astype(int)[y, x]
    assert np.abs(colour("cmyk.jpg") - RED).max() < 10
    assert np.abs(colour("lab.tiff") - WHITE).max() <= 2
    assert tuple(colour("bilevel.png", x=2)) == (0, 0, 0) and tuple(colour("bilevel.png", x=15)) == WHITE
    assert np.abs(colour("grey.jpg") - 77).max() <= 2
    assert tuple(colour("animated.gif")) == RED   # the first frame
    assert tuple(colour("pages.tiff")) == RED


# -- open_rgb on its own -------------------------------------------------------------------------
def test_open_rgb_rejects_by_header_size_before_decoding(tmp_path):
    path = _save(tmp_path / "x.png", _noise(64, 64, 0))
    with pytest.raises(ImageRejected, match=r"too large \(64×64 pixels, limit 100\)"):
        open_rgb(path, max_pixels=100)
    with pytest.raises(ImageRejected, match="too small"):
        open_rgb(path, min_size=65)
    assert open_rgb(path).size == (64, 64)


def test_open_rgb_is_deterministic_and_detached(tmp_path):
    path = _save(tmp_path / "x.jpg", _noise(50, 40, 0), quality=85)
    first, second = open_rgb(path), open_rgb(path)
    path.unlink()   # the image must not depend on the file any more
    assert first.mode == "RGB" and first.tobytes() == second.tobytes()


def test_open_rgb_missing_file(tmp_path):
    with pytest.raises(ImageRejected, match="file not found") as info:
        open_rgb(tmp_path / "nope.jpg")
    assert info.value.reason == "file not found"


# -- table sources --------------------------------------------------------------------------------
def _images(folder: Path, names, size=(24, 24)) -> None:
    """Distinct noise images (seeded by folder and name: no accidental duplicates)."""
    for name in names:
        _save(folder / name, _noise(*size, seed=zlib.crc32(f"{folder.name}/{name}".encode())))


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_source_with_splits_bad_values_missing_files_and_absolute_paths(tmp_path):
    _images(tmp_path / "imgs", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    table = _write_csv(tmp_path / "list.csv", ["path", "label", "split"], [
        ["imgs/a.jpg", "cat", "train"],
        ["imgs/b.jpg", "dog", "val"],
        ["imgs/missing.jpg", "cat", "train"],
        ["imgs/c.jpg", "dog", "test"],
        [str(tmp_path / "imgs/d.jpg"), "cat", "val"],
        ["imgs/a.jpg", "dog", "train"],
        ["imgs/b.jpg", "", "train"],
        ["imgs/d.jpg", "cat", "val"],
    ])
    summary = ingest(table, tmp_path / "out", workers=1)
    rows = {r["relpath"]: r for r in pq.read_table(tmp_path / "out/index.parquet").to_pylist()}
    reasons = {r["reason"] for r in pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()}
    assert {rel: (r["class_name"], r["label"], r["split"]) for rel, r in rows.items()} == {
        "imgs/b.jpg": ("dog", 1, "val"), "imgs/d.jpg": ("cat", 0, "val")}
    assert rows["imgs/d.jpg"]["uid"] == make_uid("real", rows["imgs/d.jpg"]["sha256"], "imgs/d.jpg")
    assert "file not found" in reasons
    assert "row 4: bad split 'test' (expected 'train' or 'val')" in reasons
    # one path, two labels: neither row is trusted; one path, one label twice: the first row stays
    assert "row 1: conflicting labels for one path ('cat', 'dog')" in reasons
    assert "row 6: conflicting labels for one path ('cat', 'dog')" in reasons
    assert "row 8: listed twice (first at row 5)" in reasons
    assert "row 7: missing label" in reasons
    assert summary.splits == {"train": 0, "val": 2} and summary.rejected == 6
    assert summary.reject_reasons == {"conflicting labels for one path": 2, "bad split 'test'": 1,
                                         "file not found": 1, "listed twice": 1, "missing label": 1}


def test_identical_images_under_two_labels_are_all_rejected(tmp_path, capsys):
    _images(tmp_path / "src/cat", ["a.png", "b.png", "c.png"])
    _images(tmp_path / "src/dog", ["d.png", "e.png"])
    shutil.copy(tmp_path / "src/cat/a.png", tmp_path / "src/dog/same_as_a.png")
    shutil.copy(tmp_path / "src/cat/b.png", tmp_path / "src/cat/copy_of_b.png")   # same label: a duplicate, kept
    assert main(tmp_path / "src", tmp_path / "out") == 0
    rejects = pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()
    assert sorted(_rel(tmp_path / "src", r["path"]) for r in rejects) == ["cat/a.png", "dog/same_as_a.png"]
    assert all(r["reason"].startswith("conflicting labels for identical images ('cat', 'dog'; sha256 ")
               for r in rejects)
    out = capsys.readouterr().out
    assert "kept 5, rejected 2 (2 conflicting labels for identical images; see" in out


def test_integer_labels_sort_numerically_and_keep_their_values(tmp_path):
    names = [f"{i}.png" for i in range(8)]
    _images(tmp_path, names)
    labels = ["0", "1", "2", "10", "0", "1", "2", "10"]
    table = _write_csv(tmp_path / "list.csv", ["path", "label"], list(zip(names, labels)))
    summary = ingest(table, tmp_path / "out", workers=1)
    assert summary.classes == ["0", "1", "2", "10"]
    rows = pq.read_table(tmp_path / "out/index.parquet").to_pylist()
    assert all(r["label"] == summary.classes.index(r["class_name"]) for r in rows)
    assert {r["label"] for r in rows if r["class_name"] in ("0", "1", "2")} == {0, 1, 2}


def test_parquet_source_with_integer_labels_and_a_bad_split(tmp_path):
    _images(tmp_path / "x", ["a.png", "b.png", "c.png"])
    source = pa.table({"path": ["x/a.png", "x/b.png", "x/c.png"], "label": [1, 0, 1],
                       "split": ["train", "val", "holdout"], "extra": [1, 2, 3]})
    pq.write_table(source, tmp_path / "list.parquet")
    summary = ingest(tmp_path / "list.parquet", tmp_path / "out", workers=1)
    rows = {r["relpath"]: r for r in pq.read_table(tmp_path / "out/index.parquet").to_pylist()}
    assert {k: (r["label"], r["split"]) for k, r in rows.items()} == {"x/a.png": (1, "train"),
                                                                     "x/b.png": (0, "val")}
    rejects = pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == ["row 3: bad split 'holdout' (expected 'train' or 'val')"]
    assert summary.classes == ["0", "1"]


def test_missing_column_names_the_column_and_the_file(tmp_path):
    table = _write_csv(tmp_path / "list.csv", ["path", "class"], [["a.jpg", "cat"]])
    with pytest.raises(UserError, match=r"list\.csv: missing column 'label'"):
        ingest(table, tmp_path / "out", workers=1)


# -- split --------------------------------------------------------------------------------------
def test_assign_splits_is_stratified_and_keeps_a_train_image():
    uids = {name: [make_uid(name, i) for i in range(n)]
            for name, n in {"one": 1, "two": 2, "three": 3, "ten": 10, "twentyfive": 25}.items()}
    splits = assign_splits(uids, 0.1, seed=0)
    val = {name: sum(splits[u] == "val" for u in us) for name, us in uids.items()}
    assert val == {"one": 0, "two": 1, "three": 1, "ten": 1, "twentyfive": 3}   # 2.5 rounds up
    assert all(v == "train" for v in assign_splits(uids, 0.0, seed=0).values())
    assert assign_splits(uids, 0.1, seed=0) == splits
    assert assign_splits(uids, 0.5, seed=1) != assign_splits(uids, 0.5, seed=2)


def test_a_class_split_does_not_move_when_another_class_grows():
    small = {"a": [make_uid("a", i) for i in range(20)], "b": [make_uid("b", i) for i in range(5)]}
    grown = dict(small, b=small["b"] + [make_uid("b", i) for i in range(5, 30)])
    first, second = assign_splits(small, 0.2, 0), assign_splits(grown, 0.2, 0)
    assert {u: first[u] for u in small["a"]} == {u: second[u] for u in small["a"]}


def test_every_class_with_two_images_gets_a_val_image(tmp_path):
    for name, n in {"solo": 1, "pair": 2, "many": 12}.items():
        _images(tmp_path / "src" / name, [f"{i}.png" for i in range(n)], size=(16, 16))
    ingest(tmp_path / "src", tmp_path / "out", val_fraction=0.1, workers=1)
    rows = pq.read_table(tmp_path / "out/index.parquet").to_pylist()
    val = {name: sum(r["split"] == "val" for r in rows if r["class_name"] == name) for name in ("solo", "pair", "many")}
    assert val == {"solo": 0, "pair": 1, "many": 1}


def test_sort_classes():
    assert sort_classes(["b", "a", "B"]) == ["B", "a", "b"]
    assert sort_classes(["10", "9", "0"]) == ["0", "9", "10"]


# -- determinism ----------------------------------------------------------------------------------
def _outputs(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in ("index.parquet", "rejects.parquet", "classes.json")}


def test_byte_identical_across_runs_and_worker_counts(tmp_path):
    src = tmp_path / "toy"
    write_toy_dataset(src, num_classes=4, per_class=12)
    _write(src / "circle/broken.jpg", b"\xff\xd8\xff\xe0 not really")
    runs = {}
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        summary = ingest(src, tmp_path / name, seed=3, workers=workers)
        runs[name] = _outputs(tmp_path / name)
    assert runs["a"] == runs["b"] == runs["c"]
    assert summary.kept == 48 and summary.rejected == 1 and summary.skipped_hidden == 1
    other_seed = ingest(src, tmp_path / "d", seed=4, workers=1)
    assert other_seed.kept == 48 and _outputs(tmp_path / "d")["index.parquet"] != runs["a"]["index.parquet"]


def test_output_folder_inside_the_source_is_not_ingested(tmp_path):
    _images(tmp_path / "src/cat", ["a.png", "b.png"])
    first = ingest(tmp_path / "src", tmp_path / "src/_ingest", workers=1)
    again = ingest(tmp_path / "src", tmp_path / "src/_ingest", workers=1)
    assert first == again and again.rejected == 0 and again.classes == ["cat"]
    assert type(again)(**json.loads(json.dumps(again.to_json()))) == again   # a typed record, JSON both ways


def test_empty_rejects_table_still_has_its_schema(tmp_path):
    _images(tmp_path / "src/cat", ["a.png"])
    ingest(tmp_path / "src", tmp_path / "out", workers=1)
    rejects = pq.read_table(tmp_path / "out/rejects.parquet")
    assert rejects.num_rows == 0 and rejects.column_names == ["path", "reason"]


# -- CLI ----------------------------------------------------------------------------------------
def main(src, out) -> int:
    return cli.main(["ingest", str(src), "--out", str(out), "--workers", "1"])


def test_main_prints_one_summary_line(tmp_path, capsys):
    _images(tmp_path / "src/cat", [f"{i}.png" for i in range(10)])
    _images(tmp_path / "src/dog", [f"{i}.png" for i in range(10)])
    _write(tmp_path / "src/dog/bad.jpg", b"")
    assert main(tmp_path / "src", tmp_path / "out") == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"ingest: kept 20, rejected 1 (1 empty file; see {tmp_path / 'out' / 'rejects.parquet'}); "
                    f"2 classes; train 18, val 2")


def test_main_warns_about_identical_files_in_train_and_val(tmp_path, capsys):
    _images(tmp_path / "src/cat", ["a.png"])
    shutil.copy(tmp_path / "src/cat/a.png", tmp_path / "src/cat/b.png")   # 2 images: 1 train, 1 val
    assert main(tmp_path / "src", tmp_path / "out") == 0
    assert capsys.readouterr().out.strip().endswith(
        "train 1, val 1; warning: 1 val image(s) also in train (same bytes)")


def test_a_source_with_nothing_usable_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(tmp_path / "empty", tmp_path / "out") == 2
    assert capsys.readouterr().err == (f"tsd ingest: error: {tmp_path / 'empty'}: no usable image (no image found "
                                       "(expected SRC/<class>/<image files>))\n")
    _write(tmp_path / "only-bad/cat/a.jpg", b"")
    _write(tmp_path / "only-bad/cat/b.jpg", b"not an image")
    assert main(tmp_path / "only-bad", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == (f"tsd ingest: error: {tmp_path / 'only-bad'}: no usable image (2 file(s) rejected: 1 empty file, "
                   f"1 not an image; see {tmp_path / 'out' / 'rejects.parquet'})\n")
    assert not (tmp_path / "out" / "index.parquet").exists()
    header_only = _write(tmp_path / "list.csv", b"path,label\n")
    assert main(header_only, tmp_path / "out2") == 2
    assert capsys.readouterr().err == f"tsd ingest: error: {header_only}: no usable image (no rows)\n"


def test_an_index_of_another_source_is_not_replaced_without_overwrite(tmp_path, capsys):
    _images(tmp_path / "a/cat", ["1.png", "2.png"])
    _images(tmp_path / "b/dog", ["1.png", "2.png"])
    out = tmp_path / "out"
    assert main(tmp_path / "a", out) == 0 and main(tmp_path / "a", out) == 0      # a re-ingest is fine
    before = (out / "index.parquet").read_bytes()
    capsys.readouterr()
    assert main(tmp_path / "b", out) == 2
    assert capsys.readouterr().err == (f"tsd ingest: error: {out}: holds the index of {tmp_path / 'a'}; use "
                                       "--overwrite to replace it, or another --out\n")
    assert cli.main(["ingest", str(tmp_path / "a"), "--out", str(out), "--workers", "1", "--seed", "5"]) == 2
    assert "made with other settings (seed 0 → 5)" in capsys.readouterr().err
    assert (out / "index.parquet").read_bytes() == before
    assert cli.main(["ingest", str(tmp_path / "b"), "--out", str(out), "--workers", "1", "--overwrite"]) == 0
    assert json.loads((out / "classes.json").read_text()) == ["dog"]


@pytest.mark.parametrize("make_src, message", [
    (lambda d: d / "nothing-here", r"no such file or folder"),
    (lambda d: _write(d / "list.txt", b"path,label\n"), r"list\.txt: not a folder, \.csv or \.parquet file"),
    (lambda d: _write(d / "list.csv", b"file,label\na.jpg,cat\n"), r"list\.csv: missing column 'path'"),
    (lambda d: _write(d / "list.csv", b"path,split\na.jpg,train\n"), r"list\.csv: missing column 'label'"),
])
def test_main_exits_2_with_a_one_line_error(tmp_path, capsys, make_src, message):
    src = make_src(tmp_path)
    assert main(src, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tsd ingest: error: ") and re.search(message, err)


def test_reading_an_index_exits_cleanly_every_time(tmp_path):
    """pq.read_table on a file object aborted the interpreter at exit about one run in six
    (pyarrow 26, exit 134 after the work was done); the index reader must not."""
    import subprocess
    import sys

    path = tmp_path / "t.parquet"
    n = 240
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(n)], "parents": [["a", "b"]] * n,
                             "label": pa.array(range(n), pa.int32()), "weight": [1.0] * n}), path)
    code = f"from pipeline.sources.index import read_table; assert read_table({str(path)!r}).num_rows == {n}"
    # one at a time: the abort is a race at exit that a loaded machine hides
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, check=False) for _ in range(20)]
    assert [(r.returncode, r.stderr.decode()[-200:]) for r in runs if r.returncode] == []


# -- class order and split folders (issue 22) -----------------------------------------------------
def test_class_order_alphabetical_by_default_or_from_a_class_list(tmp_path, capsys):
    for cls in ("dog", "ant", "cat"):
        _images(tmp_path / "src" / cls, ["0.png", "1.png"])
    assert main(tmp_path / "src", tmp_path / "out") == 0
    assert json.loads((tmp_path / "out/classes.json").read_text()) == ["ant", "cat", "dog"]
    _write(tmp_path / "order.txt", b"dog\ncat\n# a comment line\nant\nbee\n")
    assert cli.main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out2"), "--workers", "1",
                     "--classes", str(tmp_path / "order.txt")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "1 class(es) of the class list have no image: 'bee'" in err
    table = pq.read_table(tmp_path / "out2/index.parquet")
    assert json.loads(table.schema.metadata[b"tsdistill.classes"]) == ["dog", "cat", "ant", "bee"]
    assert {(r["class_name"], r["label"]) for r in table.to_pylist()} == {("dog", 0), ("cat", 1), ("ant", 2)}
    # a class the list does not name: its images are rejects, with the reason
    _write(tmp_path / "two.txt", b"cat\ndog\n")
    summary = ingest(tmp_path / "src", tmp_path / "out3", workers=1,
                     options=Options(classes=("cat", "dog")))
    assert summary.classes == ["cat", "dog"] and summary.kept == 4
    assert summary.reject_reasons == {"class not in --classes": 2}
    # an ImageFolder's own classes.txt is its order (not a file outside a class folder)
    _write(tmp_path / "src/classes.txt", b"cat\nant\ndog\n")
    summary = ingest(tmp_path / "src", tmp_path / "out4", workers=1)
    assert summary.classes == ["cat", "ant", "dog"] and summary.rejected == 0
    _write(tmp_path / "twice.txt", b"cat\ncat\n")
    assert cli.main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out5"),
                     "--classes", str(tmp_path / "twice.txt")]) == 2
    assert "class 'cat' listed twice" in capsys.readouterr().err


def test_split_folders_are_splits_not_classes(tmp_path, capsys):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            _images(tmp_path / "src" / split / cls, [f"{i}.png" for i in range(n)])
    _write(tmp_path / "src/train/stray.jpg", b"x")
    assert main(tmp_path / "src", tmp_path / "out") == 0
    assert "warning" not in capsys.readouterr().err
    rows = pq.read_table(tmp_path / "out/index.parquet").to_pylist()
    assert json.loads((tmp_path / "out/classes.json").read_text()) == ["cat", "dog"]
    assert sorted((r["relpath"].split("/")[0], r["split"]) for r in rows) == [("train", "train")] * 6 + [("val", "val")] * 4
    assert all(r["class_name"] == r["relpath"].split("/")[1] for r in rows)
    reasons = pq.read_table(tmp_path / "out/rejects.parquet").column("reason").to_pylist()
    assert reasons == ["not inside a class folder"]
    # test/ beside train/ and validation/: test → val, validation → train (the paper's protocol)
    _images(tmp_path / "src3/train/cat", ["0.png"])
    _images(tmp_path / "src3/validation/cat", ["1.png"])
    _images(tmp_path / "src3/test/cat", ["2.png"])
    ingest(tmp_path / "src3", tmp_path / "out3", workers=1)
    rows = pq.read_table(tmp_path / "out3/index.parquet").to_pylist()
    assert {r["relpath"].split("/")[0]: r["split"] for r in rows} == {"train": "train", "validation": "train",
                                                                     "test": "val"}
    # ambiguous: one split folder beside class folders is read as a class, with one warning line
    _images(tmp_path / "src2/train/cat", ["0.png", "1.png"])
    _images(tmp_path / "src2/dog", ["0.png", "1.png"])
    assert main(tmp_path / "src2", tmp_path / "out2") == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "src2: train/ named like split folders beside dog/: all read as classes" in err
    assert json.loads((tmp_path / "out2/classes.json").read_text()) == ["dog", "train"]
