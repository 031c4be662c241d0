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
from pipeline.sources.index import index_classes, index_task
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


# -- the datasets' own layouts ------------------------------------------------------------------------
def test_ade20k_shifts_its_ids_and_ignores_other(tmp_path, capsys):
    root = tmp_path / "ade" / "ADEChallengeData2016"
    for part, count in (("training", 3), ("validation", 2)):
        for i in range(count):
            name = f"ADE_{part[:5]}_{i:08d}"
            write(root / "images" / part / f"{name}.jpg", image_bytes(10 + i + 5 * (part == "validation")))
            write(root / "annotations" / part / f"{name}.png", mask_bytes(stripes([0, 1, 150, 3])))
    layout, rows = run(tmp_path / "ade", tmp_path / "out", capsys)
    assert layout == "ade20k"
    assert [r["split"] for r in rows] == ["train"] * 3 + ["val"] * 2
    check_rows(rows, tmp_path / "out")
    classes = classes_of(tmp_path / "out")
    assert classes == shipped_classes("ade20k") and len(classes) == 150
    assert classes[:5] == ["wall", "building", "sky", "floor", "tree"] and classes[-1] == "flag"
    # 0 "other" → ignored, 1 → 0 (wall), 150 → 149 (flag), 3 → 2 (sky); the copy is beside the index
    assert np.array_equal(read_source_mask(rows[0]["mask_path"]), stripes([IGNORE_INDEX, 0, 149, 2]))
    assert Path(rows[0]["mask_path"]).is_relative_to(tmp_path / "out" / "masks")
    # objectInfo150 in the tree names the classes (first synonym of its Name column)
    info = "Idx\tRatio\tTrain\tVal\tName\n" + "".join(f"{i}\t0.1\t1\t1\tname{i}, synonym\n" for i in range(1, 151))
    write(root / "objectInfo150.txt", info)
    run(tmp_path / "ade", tmp_path / "out2", capsys)
    assert classes_of(tmp_path / "out2")[:2] == ["name1", "name2"]


def test_voc2012_palette_masks_and_official_lists(tmp_path, capsys):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = ["2007_000032", "2007_000033", "2007_000039", "2007_000042"]
    for i, image_id in enumerate(ids):
        write(root / "JPEGImages" / f"{image_id}.jpg", image_bytes(20 + i))
        if image_id != "2007_000042":
            write(root / "SegmentationClass" / f"{image_id}.png",
                  mask_bytes(stripes([0, 15, 20, IGNORE_INDEX]), palette=True))
    write(root / "JPEGImages" / "2008_000001.jpg", image_bytes(29))   # no mask, in no list: not a sample
    write(root / "ImageSets" / "Segmentation" / "train.txt", "2007_000032\n2007_000039\n")
    write(root / "ImageSets" / "Segmentation" / "val.txt", "2007_000033\n2007_000042\n")
    layout, rows = run(tmp_path / "VOCdevkit", tmp_path / "out", capsys)
    assert layout == "voc2012"
    assert [(r["relpath"], r["split"]) for r in rows] == [
        ("JPEGImages/2007_000032.jpg", "train"), ("JPEGImages/2007_000033.jpg", "val"),
        ("JPEGImages/2007_000039.jpg", "train")]
    check_rows(rows, tmp_path / "out")
    classes = classes_of(tmp_path / "out")
    assert len(classes) == 21 and classes[0] == "background" and classes[15] == "person" and classes[20] == "tvmonitor"
    assert rows[0]["mask_path"] == str(root / "SegmentationClass" / "2007_000032.png")   # already class ids
    assert np.array_equal(read_source_mask(rows[0]["mask_path"]), stripes([0, 15, 20, IGNORE_INDEX]))
    assert rejects(tmp_path / "out")["2007_000042.jpg"].startswith("mask missing (")


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    for split, city, count in (("train", "aachen", 2), ("val", "frankfurt", 1), ("test", "berlin", 1)):
        for i in range(count):
            name = f"{city}_000000_{i:06d}"
            write(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", image_bytes(30 + i, "PNG"))
            write(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png",
                  mask_bytes(stripes([7, 26, 33, 0, 1, 6, 9, 34])))
            write(root / "gtFine" / split / city / f"{name}_gtFine_color.png", image_bytes(0, "PNG"))
    layout, rows = run(root, tmp_path / "out", capsys)
    assert layout == "cityscapes"
    assert [(r["relpath"], r["split"]) for r in rows] == [
        ("leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png", "train"),
        ("leftImg8bit/train/aachen/aachen_000000_000001_leftImg8bit.png", "train"),
        ("leftImg8bit/val/frankfurt/frankfurt_000000_000000_leftImg8bit.png", "val")]   # test: no public labels
    check_rows(rows, tmp_path / "out")
    classes = classes_of(tmp_path / "out")
    assert len(classes) == 19 and classes[0] == "road" and classes[13] == "car" and classes[18] == "bicycle"
    # road 7 → 0, car 26 → 13, bicycle 33 → 18; unlabeled 0, ego vehicle 1, ground 6, parking 9 and 34 → ignored
    assert np.array_equal(read_source_mask(rows[0]["mask_path"]), stripes([0, 13, 18] + [IGNORE_INDEX] * 5))
    assert len(CITYSCAPES_TRAIN_IDS) == 19 and sorted(CITYSCAPES_TRAIN_IDS.values()) == list(range(19))


def test_hf_parquet_with_a_mask_column(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    root = tmp_path / "hf"
    for split, seeds in (("train", range(3)), ("validation", range(3, 5))):
        rows = {"image": [{"bytes": image_bytes(40 + s), "path": f"{s}.jpg"} for s in seeds],
                "annotation": [{"bytes": mask_bytes(stripes([0, 1, 2, 3 if s == 4 else 1])), "path": None}
                               for s in seeds]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    assert cli.main(["ingest", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    assert "classes.txt" in capsys.readouterr().err
    write(root / "classes.txt", "bg\nfg\nedge\n")
    layout, rows = run(root, tmp_path / "out", capsys, "--mask-ignore", "0")
    assert layout == "hf-parquet" and classes_of(tmp_path / "out") == ["bg", "fg", "edge"]
    assert [(r["relpath"], r["split"]) for r in rows] == [
        (f"data/train-00000-of-00001.parquet/{i}", "train") for i in range(3)] + [
        ("data/validation-00000-of-00001.parquet/0", "val")]
    check_rows(rows, tmp_path / "out")
    assert np.array_equal(read_source_mask(rows[0]["mask_path"]), stripes([IGNORE_INDEX, 1, 2, 1]))
    assert list(rejects(tmp_path / "out").values()) == [
        f"mask values outside 0..2 (3 after the ignore=0 mapping; ignore value {IGNORE_INDEX})"]


def test_ingest_entry_point_and_a_fixed_class_count(tmp_path):
    root = tmp_path / "VOC2012"
    write(root / "JPEGImages" / "a.jpg", image_bytes(1))
    write(root / "SegmentationClass" / "a.png", mask_bytes(stripes([0, 1])))
    write(root / "ImageSets" / "Segmentation" / "train.txt", "a\n")
    write(root / "ImageSets" / "Segmentation" / "val.txt", "")
    summary = ingest(root, tmp_path / "out", workers=1, options=Options(classes=tuple("abcdefghijklmnopqrstu")))
    assert summary.task == "segmentation" and summary.classes[:2] == ["a", "b"] and summary.splits["train"] == 1
    from pipeline.contract.errors import UserError

    with pytest.raises(UserError, match="--classes: 2 names, the voc2012 layout has 21 classes"):
        ingest(root, tmp_path / "out2", workers=1, options=Options(classes=("a", "b")))


def test_a_segmentation_index_is_read_whole_and_refuses_a_class_filter(tmp_path, capsys):
    from types import SimpleNamespace

    from pipeline.contract.errors import ConfigError
    from pipeline.sources.index import read_source_index

    pairs_tree(tmp_path / "src")
    assert cli.main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "; segmentation, 3 classes; train 3, val 1" in capsys.readouterr().out
    index = read_source_index(SimpleNamespace(index=str(tmp_path / "out" / "index.parquet"), classes=[]))
    assert index.task == "segmentation" and index.classes == ["sky", "road", "car"] and len(index.rows) == 4
    assert all(r["mask_path"] and r["label"] == -1 for r in index.rows)
    with pytest.raises(ConfigError, match="is a segmentation index"):
        read_source_index(SimpleNamespace(index=str(tmp_path / "out" / "index.parquet"), classes=["sky"]))
    with pytest.raises(ConfigError, match="is a segmentation index"):
        index_classes(str(tmp_path / "out" / "index.parquet"))     # what the job's class check reads
