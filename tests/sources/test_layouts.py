"""`tsd ingest --layout`: each layout on a tiny tree written here in that layout, detected without
--layout, its official split kept (an official test image never lands in train), its class names
as the dataset spells them."""
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import cli
from pipeline.contract.errors import UserError
from pipeline.sources.ingest import ingest
from pipeline.sources.layouts import EXTRACTED, Options, format_splits, named_split


def jpeg(seed: int, size=(40, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_text if isinstance(data, str) else path.write_bytes)(data)
    return path


def lines(*rows) -> str:
    return "".join(r + "\n" for r in rows)


def index_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "index.parquet").to_pylist()


def splits_by_relpath(out: Path) -> dict:
    return {r["relpath"]: (r["class_name"], r["split"]) for r in index_rows(out)}


def run_ingest(src: Path, out: Path, capsys, *flags) -> str:
    """`tsd ingest SRC --out OUT` without --layout; returns the layout it said it detected."""
    assert cli.main(["ingest", str(src), "--out", str(out), "--workers", "1", *flags]) == 0
    err = capsys.readouterr().err
    return err.split("detected layout ")[1].split()[0]


def test_cub200(tmp_path, capsys):
    root = tmp_path / "cub" / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    images, labels, split = [], [], []
    for i in range(6):
        rel = f"{classes[i % 2]}/{classes[i % 2][4:]}_{i:04d}.jpg"
        write(root / "images" / rel, jpeg(i))
        images.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {i % 2 + 1}")
        split.append(f"{i + 1} {int(i < 4)}")       # images 5 and 6 are the official test set
    write(root / "images.txt", lines(*images))
    write(root / "image_class_labels.txt", lines(*labels))
    write(root / "train_test_split.txt", lines(*split))
    write(root / "classes.txt", lines(*(f"{i + 1} {c}" for i, c in enumerate(classes))))
    assert run_ingest(tmp_path / "cub", tmp_path / "out", capsys) == "cub200"
    got = splits_by_relpath(tmp_path / "out")
    assert len(got) == 6
    assert {rel for rel, (_, s) in got.items() if s == "val"} == {
        f"images/{classes[0]}/Black_footed_Albatross_0004.jpg", f"images/{classes[1]}/Laysan_Albatross_0005.jpg"}
    assert {c for c, _ in got.values()} == set(classes)
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == classes


def aircraft_tree(root: Path) -> dict:
    """data/ with variant, family and manufacturer lists; ids 0-5 (train 0-1, val 2-3, test 4-5)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variant = ["707-320", "F/A-18", "707-320", "F/A-18", "707-320", "F/A-18"]
    family = ["Boeing 707", "F/A-18", "Boeing 707", "F/A-18", "Boeing 707", "F/A-18"]
    maker = ["Boeing", "McDonnell Douglas", "Boeing", "McDonnell Douglas", "Boeing", "McDonnell Douglas"]
    for i in range(6):
        write(data / "images" / f"{1000000 + i}.jpg", jpeg(10 + i))
    for level, names in (("variant", variant), ("family", family), ("manufacturer", maker)):
        for part, ids in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
            write(data / f"images_{level}_{part}.txt", lines(*(f"{1000000 + i} {names[i]}" for i in ids)))
    return {"variant": variant, "family": family, "manufacturer": maker}


def test_aircraft_variant_family_manufacturer(tmp_path, capsys):
    names = aircraft_tree(tmp_path / "air")
    assert run_ingest(tmp_path / "air", tmp_path / "out", capsys) == "aircraft"
    got = splits_by_relpath(tmp_path / "out")
    assert {rel: s for rel, (_, s) in got.items()} == {
        f"images/{1000000 + i}.jpg": "val" if i >= 4 else "train" for i in range(6)}   # trainval / test
    assert {got[f"images/{1000000 + i}.jpg"][0] for i in range(6)} == set(names["variant"])
    for level in ("family", "manufacturer"):
        out = tmp_path / f"out-{level}"
        assert cli.main(["ingest", str(tmp_path / "air"), "--out", str(out), "--layout", "aircraft",
                         "--aircraft-label", level, "--workers", "1"]) == 0
        assert sorted({c for c, _ in splits_by_relpath(out).values()}) == sorted(set(names[level]))


def test_dtd_split_option(tmp_path, capsys):
    root = tmp_path / "dtd-r1.0.1" / "dtd"
    files = [f"{c}/{c}_{i:04d}.jpg" for c in ("banded", "zigzagged") for i in range(3)]
    for n, rel in enumerate(files):
        write(root / "images" / rel, jpeg(20 + n))
    for n in (1, 2):    # split 1 tests image 0002 of each class, split 2 image 0000
        test = [f for f in files if f.endswith(f"_{2 if n == 1 else 0:04d}.jpg")]
        rest = [f for f in files if f not in test]
        write(root / "labels" / f"train{n}.txt", lines(*rest[::2]))
        write(root / "labels" / f"val{n}.txt", lines(*rest[1::2]))
        write(root / "labels" / f"test{n}.txt", lines(*test))
    assert run_ingest(tmp_path / "dtd-r1.0.1", tmp_path / "out", capsys) == "dtd"
    got = splits_by_relpath(tmp_path / "out")
    assert sorted(r for r, (_, s) in got.items() if s == "val") == ["images/banded/banded_0002.jpg",
                                                                   "images/zigzagged/zigzagged_0002.jpg"]
    assert {c for c, _ in got.values()} == {"banded", "zigzagged"}
    ingest(root, tmp_path / "out2", layout="dtd", options=Options(dtd_split=2), workers=1)
    assert sorted(r for r, (_, s) in splits_by_relpath(tmp_path / "out2").items() if s == "val") == [
        "images/banded/banded_0000.jpg", "images/zigzagged/zigzagged_0000.jpg"]
    with pytest.raises(UserError, match="--dtd-split: 11"):
        ingest(root, tmp_path / "out3", layout="dtd", options=Options(dtd_split=11), workers=1)


def test_pets(tmp_path, capsys):
    root = tmp_path / "pets"
    names = ["Abyssinian_1", "Abyssinian_2", "american_bulldog_10", "american_bulldog_11"]
    for i, n in enumerate(names):
        write(root / "images" / f"{n}.jpg", jpeg(30 + i))
    header = "#Image CLASS-ID SPECIES BREED ID"
    write(root / "annotations" / "trainval.txt", lines(header, "Abyssinian_1 1 1 1", "american_bulldog_10 2 2 1"))
    write(root / "annotations" / "test.txt", lines(header, "Abyssinian_2 1 1 1", "american_bulldog_11 2 2 1"))
    assert run_ingest(root, tmp_path / "out", capsys) == "pets"
    assert splits_by_relpath(tmp_path / "out") == {
        "images/Abyssinian_1.jpg": ("Abyssinian", "train"), "images/american_bulldog_10.jpg": ("american_bulldog", "train"),
        "images/Abyssinian_2.jpg": ("Abyssinian", "val"), "images/american_bulldog_11.jpg": ("american_bulldog", "val")}


def test_caltech101_leaves_out_the_background_and_splits_by_seed(tmp_path, capsys):
    root = tmp_path / "caltech-101" / "101_ObjectCategories"
    for c, cls in enumerate(("BACKGROUND_Google", "accordion", "airplanes")):
        for i in range(5):
            write(root / cls / f"image_{i:04d}.jpg", jpeg(40 + 5 * c + i))
    assert run_ingest(tmp_path / "caltech-101", tmp_path / "out", capsys, "--caltech-train", "2") == "caltech101"
    got = splits_by_relpath(tmp_path / "out")
    assert {c for c, _ in got.values()} == {"accordion", "airplanes"}
    for cls in ("accordion", "airplanes"):
        assert sorted(s for c, s in got.values() if c == cls) == ["train"] * 2 + ["val"] * 3
    ingest(root, tmp_path / "again", layout="caltech101", options=Options(caltech_train=2), workers=1)
    assert splits_by_relpath(tmp_path / "again") == got                      # the same seed, the same split
    ingest(root, tmp_path / "seed1", layout="caltech101", options=Options(caltech_train=2), seed=1, workers=1)
    assert splits_by_relpath(tmp_path / "seed1") != got


def test_hf_parquet_extracts_the_images_beside_the_index(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    root = tmp_path / "hf" / "data"
    for split, seeds in (("train", range(4)), ("validation", range(4, 6)), ("test", range(6, 8))):
        rows = {"image": [{"bytes": jpeg(50 + s), "path": f"{s}.jpg"} for s in seeds],
                "label": [s % 2 for s in seeds]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    assert run_ingest(tmp_path / "hf", tmp_path / "out", capsys) == "hf-parquet"
    rows = index_rows(tmp_path / "out")
    assert len(rows) == 8 and {r["class_name"] for r in rows} == {"cat", "dog"}
    # test → val; validation → train, since a test split exists (the paper's trainval/test protocol)
    assert sorted(r["relpath"] for r in rows if r["split"] == "val") == [
        "data/test-00000-of-00001.parquet/0", "data/test-00000-of-00001.parquet/1"]
    for r in rows:   # the bytes are extracted, content-addressed, beside the index
        path = Path(r["path"])
        assert path.parent.parent == tmp_path / "out" / EXTRACTED and path.stem == r["sha256"]
        assert path.suffix == ".jpg" and path.is_file()
    ingest(tmp_path / "hf", tmp_path / "out", workers=1)       # a rerun into the same folder
    assert index_rows(tmp_path / "out") == rows


def test_webdataset_tars_with_cls_or_json(tmp_path, capsys):
    import webdataset as wds

    root = tmp_path / "wds"
    root.mkdir()
    for name, seeds in (("train-000000.tar", range(4)), ("val-000000.tar", range(4, 6))):
        with wds.TarWriter(str(root / name)) as sink:
            for s in seeds:
                sample = {"__key__": f"dir/sample{s:03d}", "png" if s % 2 else "jpg": jpeg(60 + s)}
                sample.update({"cls": str(s % 2)} if s < 3 else {"json": {"label": s % 2, "caption": "x"}})
                sink.write(sample)
            sink.write({"__key__": "dir/nolabel", "jpg": jpeg(99)})
    assert run_ingest(root, tmp_path / "out", capsys) == "webdataset"
    rows = index_rows(tmp_path / "out")
    assert sorted(r["relpath"] for r in rows if r["split"] == "val") == ["val-000000.tar/dir/sample004",
                                                                         "val-000000.tar/dir/sample005"]
    assert len(rows) == 6 and {r["class_name"] for r in rows} == {"0", "1"}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["no cls or json label"] * 2


def test_the_historical_sources_are_still_detected(tmp_path, capsys):
    for cls in ("a", "b"):
        for i in range(2):
            write(tmp_path / "tree" / cls / f"{i}.jpg", jpeg(70 + i + 2 * (cls == "b")))
    assert run_ingest(tmp_path / "tree", tmp_path / "out", capsys) == "imagefolder"
    write(tmp_path / "list.csv", lines("path,label,split", "tree/a/0.jpg,a,train", "tree/b/0.jpg,b,val"))
    assert run_ingest(tmp_path / "list.csv", tmp_path / "out2", capsys) == "csv"
    assert len(index_rows(tmp_path / "out2")) == 2


def test_a_layout_asked_for_that_src_is_not_in(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--layout", "cub200"]) == 2
    assert "not in the cub200 layout" in capsys.readouterr().err


def test_split_names_from_file_names():
    assert named_split("train-00000-of-00002.parquet") == "train"
    assert named_split("default/test/0000.parquet") == "test"
    assert named_split("valid_000.tar") == "validation" and named_split("shard-000.tar") is None
    assert format_splits({"a": "train", "b": "validation"}) == {"a": "train", "b": "val"}
    assert format_splits({"a": "train", "b": "validation", "c": "test"}) == {"a": "train", "b": "train", "c": "val"}


def test_hf_parquet_keeps_the_class_label_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["T-shirt/top", "Trouser", "Bag"]     # the dataset's own order, not alphabetical
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {"image": [{"bytes": jpeg(80 + s), "path": None} for s in range(4)], "label": [2, 0, 2, 0]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "hf" / "train.parquet"))
    summary = ingest(tmp_path / "hf", tmp_path / "out", workers=1)
    assert summary.classes == names and summary.warnings == ["1 class(es) of the class list have no image: 'Trouser'"]
    assert {(r["class_name"], r["label"]) for r in index_rows(tmp_path / "out")} == {("Bag", 2), ("T-shirt/top", 0)}
