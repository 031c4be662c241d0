"""`tsd ingest` on segmentation layouts: tiny trees written here in each dataset's official layout
(ADE20K, Pascal VOC 2012, Cityscapes), the generic pairs layout and a Hugging Face Parquet export
with a mask column, through the real CLI: detection, official splits, the class mapping (pixel values
checked after it), the ignore value, and every kind of broken mask rejected with its reason."""
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import cli
from pipeline.contract.tasks import IGNORE_INDEX
from pipeline.sources.index import index_task
from pipeline.sources.layouts import Options
from pipeline.sources.masks import CITYSCAPES_TRAIN_IDS, read_source_mask, shipped_classes
from pipeline.sources.ingest import ingest

W, H = 32, 24


def image_bytes(seed: int, fmt: str = "JPEG", size=(W, H)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def mask_bytes(values: np.ndarray, mode: str = "L", palette: bool = False) -> bytes:
    im = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im.frombytes(values.astype(np.uint8).tobytes())   # convert() may renumber: put the ids back
    elif mode != "L":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def stripes(values, size=(W, H)) -> np.ndarray:
    """A mask of vertical stripes, one per value, left to right."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    for i, v in enumerate(values):
        mask[:, i * size[0] // len(values):(i + 1) * size[0] // len(values)] = v
    return mask


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_text if isinstance(data, str) else path.write_bytes)(data)
    return path


def run(src: Path, out: Path, capsys, *flags) -> tuple[str, list[dict]]:
    """`tsd ingest SRC --out OUT`: (the layout it detected, the index rows by relpath order)."""
    assert cli.main(["ingest", str(src), "--out", str(out), "--workers", "1", *flags]) == 0
    err = capsys.readouterr().err
    layout = err.split("detected layout ")[1].split()[0] if "detected layout " in err else None
    rows = sorted(pq.read_table(out / "index.parquet").to_pylist(), key=lambda r: r["relpath"])
    return layout, rows


def rejects(out: Path) -> dict:
    return {Path(r["path"]).name: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}


def classes_of(out: Path) -> list[str]:
    import json

    return json.loads((out / "classes.json").read_text())


def check_rows(rows: list[dict], out: Path) -> None:
    """Every row of a segmentation index: label -1, no class name, its mask readable at its size."""
    import hashlib

    assert index_task(out / "index.parquet") == "segmentation"
    for r in rows:
        assert r["label"] == -1 and r["class_name"] == ""
        assert Path(r["mask_path"]).is_absolute()
        assert hashlib.sha256(Path(r["mask_path"]).read_bytes()).hexdigest() == r["mask_sha256"]
        assert read_source_mask(r["mask_path"]).shape == (r["height"], r["width"])


# -- the pairs layout ---------------------------------------------------------------------------------
def pairs_tree(root: Path, splits: bool = True) -> None:
    write(root / "classes.txt", "sky\nroad\ncar\n")
    for i in range(4):
        part = ("train/" if i < 3 else "val/") if splits else ""
        write(root / "images" / f"{part}{i:02d}.{'jpg' if i % 2 else 'png'}", image_bytes(i, "JPEG" if i % 2 else "PNG"))
        write(root / "masks" / f"{part}{i:02d}.png", mask_bytes(stripes([0, 1, 2, IGNORE_INDEX])))


def test_pairs_with_official_splits(tmp_path, capsys):
    pairs_tree(tmp_path / "src")
    layout, rows = run(tmp_path / "src", tmp_path / "out", capsys)
    assert layout == "pairs" and classes_of(tmp_path / "out") == ["sky", "road", "car"]
    assert [(r["relpath"], r["split"]) for r in rows] == [
        ("images/train/00.png", "train"), ("images/train/01.jpg", "train"), ("images/train/02.png", "train"),
        ("images/val/03.jpg", "val")]
    check_rows(rows, tmp_path / "out")
    # a mask already in class ids is indexed where it is, untouched
    assert rows[0]["mask_path"] == str(tmp_path / "src" / "masks" / "train" / "00.png")
    assert np.array_equal(read_source_mask(rows[0]["mask_path"]), stripes([0, 1, 2, IGNORE_INDEX]))


def test_pairs_without_splits_a_class_file_and_an_ignore_value(tmp_path, capsys):
    root = tmp_path / "src"
    pairs_tree(root, splits=False)
    (root / "classes.txt").unlink()
    for i in range(4):   # this user's masks mark unlabelled pixels with 0 and classes with 1..3
        write(root / "masks" / f"{i:02d}.png", mask_bytes(stripes([1, 2, 3, 0])))
    assert cli.main(["ingest", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    assert "classes.txt" in capsys.readouterr().err
    write(tmp_path / "names.txt", "unused\nsky\nroad\ncar\n")
    _, rows = run(root, tmp_path / "out", capsys, "--classes", str(tmp_path / "names.txt"), "--mask-ignore", "0",
                  "--val-fraction", "0.25")
    assert sorted(r["split"] for r in rows) == ["train"] * 3 + ["val"]
    check_rows(rows, tmp_path / "out")
    assert classes_of(tmp_path / "out") == ["unused", "sky", "road", "car"]
    mask = read_source_mask(rows[0]["mask_path"])      # the remapped copy beside the index
    assert Path(rows[0]["mask_path"]).is_relative_to(tmp_path / "out" / "masks")
    assert np.array_equal(mask, stripes([1, 2, 3, IGNORE_INDEX]))


def test_every_broken_mask_is_a_rejection_with_its_reason(tmp_path, capsys):
    root = tmp_path / "src"
    write(root / "classes.txt", "a\nb\nc\n")
    cases = {   # image stem → its mask file's bytes (None: no mask)
        "ok": mask_bytes(stripes([0, 1, 2, IGNORE_INDEX])),
        "palette": mask_bytes(stripes([2, 1, 0, IGNORE_INDEX]), palette=True),
        "missing": None,
        "unreadable": b"\x89PNG\r\n\x1a\n not really",
        "rgb": mask_bytes(stripes([0, 1, 2, 0]), mode="RGB"),
        "sixteen": None,
        "jpeg": None,
        "size": mask_bytes(stripes([0, 1, 2, 0], size=(W, H + 2))),
        "values": mask_bytes(stripes([0, 1, 7, 9])),
    }
    for i, (stem, data) in enumerate(cases.items()):
        write(root / "images" / f"{stem}.png", image_bytes(i, "PNG"))
        if data is not None:
            write(root / "masks" / f"{stem}.png", data)
    Image.fromarray(stripes([0, 1, 2, 0]).astype(np.uint16) * 300).save(root / "masks" / "sixteen.png")
    Image.fromarray(stripes([0, 1, 2, 0])).save(root / "masks" / "jpeg.jpg", "JPEG")
    write(root / "masks" / "orphan.png", mask_bytes(stripes([0])))
    write(root / "images" / "notimage.png", b"text")
    write(root / "masks" / "notimage.png", mask_bytes(stripes([0])))
    _, rows = run(root, tmp_path / "out", capsys)
    assert sorted(Path(r["path"]).stem for r in rows) == ["ok", "palette"]
    assert np.array_equal(read_source_mask(rows[1]["mask_path"]), stripes([2, 1, 0, IGNORE_INDEX]))
    got = rejects(tmp_path / "out")
    assert got.pop("missing.png").startswith("mask missing (")
    assert got.pop("unreadable.png").startswith("mask unreadable (")
    assert got.pop("rgb.png") == "mask not 8-bit single channel (mode RGB)"
    assert got.pop("sixteen.png").startswith("mask not 8-bit single channel (mode I")
    assert got.pop("jpeg.png") == "mask not a PNG (JPEG)"
    assert got.pop("size.png") == f"mask size differs from its image ({W}×{H + 2} against {W}×{H})"
    assert got.pop("values.png") == f"mask values outside 0..2 (7, 9; ignore value {IGNORE_INDEX})"
    assert got.pop("orphan.png") == "mask with no image"
    assert got.pop("notimage.png").startswith("not an image")      # the image's own checks still apply
    assert got == {}
