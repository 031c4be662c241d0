"""The procedural toy dataset of `tsd demo`: deterministic, varied, fast, never blank."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.testing.toydata import CLASS_ORDER, MARKER, write_toy_dataset
from pipeline.sources.ingest import ingest


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "data"
    names = write_toy_dataset(root, num_classes=10, per_class=12, seed=0)
    return root, names


def test_classes_and_layout(toy):
    root, names = toy
    assert names == sorted(CLASS_ORDER[:10]) and len(set(names)) == 10
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == names
    for name in names:
        files = sorted(p.name for p in (root / name).iterdir())
        assert [f.split(".")[0] for f in files] == [f"{i:04d}" for i in range(12)]
    suffixes = [p.suffix for p in root.rglob("*.*") if p.name != MARKER]
    assert suffixes.count(".png") > 0 and suffixes.count(".jpg") > 0.75 * len(suffixes)


def test_sizes_vary_within_the_range(toy):
    root, _ = toy
    sizes = [Image.open(p).size for p in root.rglob("*") if p.suffix in (".jpg", ".png")]
    assert all(48 <= w <= 96 and 48 <= h <= 96 for w, h in sizes)
    assert len(set(sizes)) > 50
    assert sum(w > h for w, h in sizes) > 10 and sum(h > w for w, h in sizes) > 10


def test_images_are_not_blank(toy):
    root, _ = toy
    for path in root.rglob("*"):
        if path.suffix in (".jpg", ".png"):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
            assert pixels.std() > 12, path


def test_deterministic_in_seed(tmp_path, toy):
    root, _ = toy
    again = tmp_path / "again"
    write_toy_dataset(again, num_classes=10, per_class=12, seed=0)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    write_toy_dataset(other, num_classes=10, per_class=12, seed=1)
    first, second = _files(root), _files(other)
    assert not [rel for rel in first if rel != MARKER and first[rel] == second.get(rel)]


def test_an_image_does_not_depend_on_the_dataset_size(tmp_path, toy):
    root, _ = toy
    small = tmp_path / "small"
    write_toy_dataset(small, num_classes=3, per_class=5, seed=0)
    for rel, data in _files(small).items():
        if rel != MARKER:
            assert _files(root)[rel] == data, rel


def test_complete_tree_is_skipped_and_other_parameters_replace_it(tmp_path):
    root = tmp_path / "toy"
    write_toy_dataset(root, num_classes=2, per_class=3)
    marker_time = (root / MARKER).stat().st_mtime_ns
    write_toy_dataset(root, num_classes=2, per_class=3)
    assert (root / MARKER).stat().st_mtime_ns == marker_time
    write_toy_dataset(root, num_classes=3, per_class=2)
    assert json.loads((root / MARKER).read_text())["result"]["per_class"] == 2
    assert sum(1 for p in root.rglob("*") if p.suffix in (".jpg", ".png")) == 6
    assert not list(tmp_path.glob(".toy.partial"))


def test_refuses_to_overwrite_a_folder_that_is_not_a_toy_tree(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a toy dataset"):
        write_toy_dataset(tmp_path / "mine", num_classes=2, per_class=2)
    assert (tmp_path / "mine/precious.txt").read_text() == "keep me"


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        write_toy_dataset(tmp_path / "a", num_classes=len(CLASS_ORDER) + 1)
    with pytest.raises(ValueError, match="per_class"):
        write_toy_dataset(tmp_path / "b", per_class=0)
    with pytest.raises(ValueError, match="size_range"):
        write_toy_dataset(tmp_path / "b", size_range=(8, 4))


def test_default_dataset_is_written_once_and_fully_ingestible(tmp_path):
    # the work counted, not timed (speed belongs in benchmarks): one file per image, then nothing
    # rewritten by a second call
    names = write_toy_dataset(tmp_path / "toy")
    images = sorted(p for p in (tmp_path / "toy").rglob("*") if p.is_file() and p.name != MARKER)
    assert len(images) == 600
    stamps = [p.stat().st_mtime_ns for p in images]
    assert write_toy_dataset(tmp_path / "toy") == names
    assert [p.stat().st_mtime_ns for p in images] == stamps
    summary = ingest(tmp_path / "toy", tmp_path / "out", workers=1)
    assert summary.kept == 600 and summary.rejected == 0 and summary.classes == names
    assert summary.splits == {"train": 540, "val": 60}


# -- segmentation scenes ----------------------------------------------------------------------------
def test_segmentation_scenes_deterministic_with_their_masks(tmp_path):
    from pipeline.testing.toydata import SEG_CLASSES, write_toy_segmentation

    names = write_toy_segmentation(tmp_path / "a", train=24, val=8, seed=3, size=48)
    assert names == list(SEG_CLASSES) and (tmp_path / "a" / "classes.txt").read_text().split("\n")[:5] == names
    write_toy_segmentation(tmp_path / "b", train=24, val=8, seed=3, size=48)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    write_toy_segmentation(tmp_path / "c", train=24, val=8, seed=4, size=48)
    assert _files(tmp_path / "c") != _files(tmp_path / "a")
    seen, edge, inside = set(), [], []
    for mask_path in sorted((tmp_path / "a" / "masks").rglob("*.png")):
        stem = mask_path.relative_to(tmp_path / "a" / "masks").with_suffix("")
        image_path = next((tmp_path / "a" / "images").glob(f"{stem}.*"))
        with Image.open(mask_path) as m:
            assert m.mode == "L" and m.size == (48, 48)
            mask = np.asarray(m)
        pixels = np.asarray(Image.open(image_path).convert("RGB"), np.float32)
        seen |= set(np.unique(mask).tolist())
        # the mask is what was drawn: colour jumps where the class changes far more than inside a region
        jump = np.abs(np.diff(pixels, axis=1)).sum(-1)
        boundary = np.diff(mask.astype(np.int16), axis=1) != 0
        edge += jump[boundary].tolist()
        inside += jump[~boundary].tolist()
    assert seen == set(range(len(SEG_CLASSES)))
    assert np.mean(edge) > 2 * np.mean(inside)
    summary = ingest(tmp_path / "a", tmp_path / "out", workers=1)
    assert summary.task == "segmentation" and summary.classes == names
    assert summary.splits == {"train": 24, "val": 8} and summary.rejected == 0
