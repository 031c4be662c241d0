"""The release tools on a segmentation release (tests/support/seg_data.py): verify checks masks and
dense logits, regenerate rebuilds and compares them, subset keeps them."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.contract.layout import INDEX, MANIFEST
from pipeline.contract.masks import store_mask
from pipeline.contract.samples import M_DENSE_LOGITS, M_JSON, M_MASK, SampleMeta, npy_bytes, npy_load
from pipeline.contract.shards import read_shard, tar_bytes
from pipeline.tools.regenerate import regenerate
from pipeline.tools.subset import make_subset
from pipeline.tools.verify import check_sample, verify_release
from seg_data import build_seg_release, shard_samples as samples


@pytest.fixture(scope="module")
def seg_release(tmp_path_factory):
    return build_seg_release(tmp_path_factory.mktemp("seg-tools"))


def test_verify_names_a_bad_mask_and_a_wrong_grid(seg_release):
    out = seg_release["out"]
    manifest = json.loads((out / MANIFEST).read_text())
    key, members = next(iter(samples(out, "real/train-000000").items()))
    meta = SampleMeta.from_json(members[M_JSON])
    assert check_sample(key, members, manifest, "train", "x") is None
    bad = np.full((meta.height, meta.width), 7, np.uint8)
    assert "mask value 7 is not a class" in check_sample(key, {**members, M_MASK: store_mask(bad, 64)}, manifest,
                                                          "train", "x")
    small = np.zeros((meta.height // 2, meta.width // 2), np.uint8)
    assert "mask" in check_sample(key, {**members, M_MASK: store_mask(small, 16)}, manifest, "train", "x")
    without = {k: v for k, v in members.items() if k != M_MASK}
    assert "no mask.png" in check_sample(key, without, manifest, "train", "x")
    regrid = dict(manifest, dense=dict(manifest["dense"], grid=[8, 8]))
    assert "grid 4x4, manifest says 8x8" in check_sample(key, members, regrid, "train", "x")


def test_regenerate_rebuilds_a_real_and_a_mix_sample_identically(seg_release):
    out = seg_release["out"]
    index = pq.read_table(out / INDEX).to_pylist()
    uids = [next(r["uid"] for r in index if r["kind"] == kind) for kind in ("real", "mix")]
    results = regenerate(out, uids, device="cpu", warn=lambda m: None)
    assert [r.status for r in results] == ["identical", "identical"], [r.line() for r in results]
    assert M_MASK in results[0].identical and M_DENSE_LOGITS in results[1].identical


def test_subset_keeps_masks_and_dense_members(seg_release, tmp_path):
    out = seg_release["out"]
    index = pq.read_table(out / INDEX).to_pylist()
    uids = [index[0]["uid"], next(r["uid"] for r in index if r["kind"] == "mix")]
    manifest = make_subset(out, uids, tmp_path / "subset")
    assert manifest["task"] == "segmentation" and manifest["dense"]["grid"] == [4, 4]
    assert verify_release(tmp_path / "subset") == []


def changed_copy(seg_release, tmp_path, change) -> tuple[Path, str]:
    """A copy of the release with the first real train sample's members changed by `change`."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(seg_release["out"], root)
    path = root / "real/train-000000.tar"
    with open(path, "rb") as f:
        stored = list(read_shard(f))
    uid = stored[0][0]
    path.write_bytes(tar_bytes([(k, change(dict(m)) if k == uid else m) for k, m in stored]))
    return root, uid


def test_regenerate_compares_dense_logits_within_the_logit_tolerance(seg_release, tmp_path, capsys):
    def nudge(members):
        logits = npy_load(members[M_DENSE_LOGITS])
        logits[0, 0, 0, 0] += np.float16(0.125)
        return dict(members, **{M_DENSE_LOGITS: npy_bytes(logits)})

    root, uid = changed_copy(seg_release, tmp_path, nudge)
    assert cli.main(["regenerate", str(root), "--uid", uid, "--device", "cpu"]) == 1
    assert "differs: dense logits max diff 0.125" in capsys.readouterr().out
    assert cli.main(["regenerate", str(root), "--uid", uid, "--device", "cpu", "--logit-tol", "0.2"]) == 0
    assert "within tolerance: dense logits max diff 0.125" in capsys.readouterr().out


def test_regenerate_names_a_changed_mask(seg_release, tmp_path):
    def relabel(members):
        meta = SampleMeta.from_json(members[M_JSON])
        mask = np.zeros((meta.height, meta.width), np.uint8)
        return dict(members, **{M_MASK: store_mask(mask, max(meta.width, meta.height))})

    root, uid = changed_copy(seg_release, tmp_path, relabel)
    [result] = regenerate(root, [uid], device="cpu", warn=lambda m: None)
    assert result.status == "differs" and any(p.startswith(f"{M_MASK} differs in ") for p in result.problems)
    # verify: the shard's bytes no longer match the manifest's sha256
    assert [w for w, _ in verify_release(root)] == ["real/train-000000"]


def test_viz_overlays_and_dense_mixes_draw_a_segmentation_release(seg_release, tmp_path):
    """`tsd viz overlays` (image, mask, the teacher's stored labels) and `tsd viz dense-mixes` (mixes with
    the teacher's labels over them) on the release; a classification-only picture names the task."""
    from PIL import Image

    from pipeline.tools import segviz

    out = seg_release["out"]
    for what, extra in (("overlays", ["--count", "3"]), ("dense-mixes", ["--rows", "2"])):
        png = tmp_path / f"{what}.png"
        assert cli.main(["viz", what, str(out), "--out", str(png), *extra]) == 0
        with Image.open(png) as im:
            assert im.width > 300 and im.height > 200
    # the overlay keeps ignored pixels as they were and colours the others
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 255], [1, 255]], np.uint8)
    drawn = segviz.overlay(image, labels, segviz.palette(2))
    assert (drawn[:, 1] == 100).all() and (drawn[0, 0] != 100).any() and (drawn[0, 0] != drawn[1, 0]).any()
    # the teacher's labels: the argmax of the stored logits, upsampled to the view
    logits = np.zeros((2, 2, 2), np.float32)
    logits[0, :, 0], logits[1, :, 1] = 5.0, 5.0
    assert segviz.dense_labels(logits, 4).tolist() == [[0, 0, 1, 1]] * 4
    # drawn as the metrics label (contract.dense.upsample_logits, then argmax), but for near-ties
    import torch

    from pipeline.contract.dense import upsample_logits

    many = np.random.default_rng(0).standard_normal((150, 16, 16)).astype(np.float16)
    metric = upsample_logits(torch.from_numpy(many.astype(np.float32))[None], (96, 80))[0].argmax(0).numpy()
    assert (segviz.dense_labels(many, (96, 80)) == metric).mean() > 0.999


def test_viz_overlays_refuses_a_classification_release(small_release, tmp_path):
    from pipeline.contract.errors import UserError
    from pipeline.tools.segviz import plot_overlays

    with pytest.raises(UserError, match="a classification release; these pictures are for segmentation"):
        plot_overlays(small_release["root"], [], tmp_path / "x.png")
