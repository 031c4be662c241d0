"""`tsd report` of a segmentation release (tests/support/seg_data.py) and a real segmentation run on it
(`tsd train` then `tsd eval`): the data holds a bounded sample with the teacher's dense summaries and
coloured label layers that exist, fit their image and say what the masks and the stored logits say;
headless Chromium shows the mix cards with their overlays, the class legend, the run's mIoU chart and
per-class IoU rows, and a sample page with every view's labels, with no console error."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from compare_results import write_compare_folder
from PIL import Image
from seg_data import SEG_NUM_CLASSES, build_seg_release
from trainer_data import write_seg_config

from pipeline import cli
from pipeline.contract.layout import INDEX, MANIFEST

pytestmark = pytest.mark.slow
MIXES, PER_CLASS = 4, 2


def report_data(site: Path) -> dict:
    text = (site / "data.js").read_text()
    return json.loads(re.fullmatch(r"window\.TSD_REPORT = (.*);\n", text, re.S).group(1))


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """The tiny segmentation release, a 4-step run of a 1-block ViT student on it (`tsd eval` after),
    and the report of both."""
    from pipeline.contract.configlib import load
    from trainer.config import TrainConfig
    from trainer.train import run_training

    root = tmp_path_factory.mktemp("report-seg")
    release = build_seg_release(root)["out"]
    config = write_seg_config(root / "train.yaml", release, "vit-linear",
                              data={"mix_ratio": 0.25, "batch_size": 8, "workers": 0, "shuffle_buffer": 8},
                              optim={"name": "adamw", "lr": 0.003, "weight_decay": 0.01, "epochs": 2,
                                     "warmup_epochs": 0.5})
    run = root / "run"
    run_training(load(TrainConfig, config), run, overwrite=True)
    assert cli.main(["eval", str(run), str(release), "--workers", "0"]) == 0
    site = root / "site"
    compare = write_compare_folder(root / "compare", {"key": "miou", "label": "mIoU"}, [0.25, 0.31])
    assert cli.main(["report", str(release), str(run), str(compare), "--out", str(site), "--mixes", str(MIXES),
                     "--per-class", str(PER_CLASS)]) == 0
    return {"release": release, "run": run, "site": site, "data": report_data(site),
            "manifest": json.loads((release / MANIFEST).read_text()),
            "index": {r["uid"]: r for r in pq.read_table(release / INDEX).to_pylist()}}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def class_of_colour(layer: np.ndarray, palette: list[str]) -> np.ndarray:
    """Class id per opaque pixel of a label layer (-1 where transparent), from the report's palette."""
    out = np.full(layer.shape[:2], -1)
    for c, colour in enumerate(palette):
        rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        out[(layer[..., :3] == rgb).all(-1) & (layer[..., 3] == 255)] = c
    return out


def test_the_data_holds_a_bounded_sample_with_dense_summaries_and_label_layers(seg):
    data, manifest, index, site = seg["data"], seg["manifest"], seg["index"], seg["site"]
    assert data["release"]["task"] == "segmentation" and data["release"]["verify_quick"]["ok"] is True
    teacher = data["release"]["models"][0]
    assert teacher["val_miou"] == manifest["teacher"]["val_miou"] > 0
    assert len(data["mixes"]) == MIXES < manifest["counts"]["mix/train"]
    entropies = [m["entropy"] for m in data["mixes"]]
    assert entropies == sorted(entropies, reverse=True)
    palette = data["segmentation"]["palette"]
    assert len(palette) == SEG_NUM_CLASSES == len(set(palette))
    for s in data["mixes"] + data["real"] + data["others"]:
        row = index[s["uid"]]
        # the card's dominant class and entropy are the index's dense summary
        assert s["teacher_top1"] == row["teacher_top1"] and abs(s["entropy"] - row["teacher_entropy"]) < 1e-4
        assert 0 < s["confidence"] <= 1 and len(s["views"]) == row["n_views"]
        assert s["shares"] and abs(sum(t["p"] for t in s["shares"]) - 1) < 1e-6   # 5 classes: all are listed
        thumb = Image.open(site / s["thumb"]).size
        names = {"teacher", *(f"view{i}" for i in range(len(s["views"])))} | ({"mask", "mask-page"} if s["kind"] == "real"
                                                                             else set())
        assert set(s["layers"]) == names
        for name, path in s["layers"].items():
            size = Image.open(site / path).size
            assert abs(size[0] / size[1] - s["width"] / s["height"]) < 0.05
            assert size == (thumb if name in ("teacher", "mask") else Image.open(site / s["image"]).size)
        # the first view's layer: opaque inside its box only, coloured by the classes its shares name
        view = png(site / s["layers"]["view0"])
        classes = class_of_colour(view, palette)
        assert ((classes >= 0) == (view[..., 3] == 255)).all()
        h, w = classes.shape
        x, y, bw, bh = s["views"][0]["box"]
        inside = classes[int(y * h) + 1:int((y + bh) * h) - 1, int(x * w) + 1:int((x + bw) * w) - 1]
        assert (inside >= 0).all() and (classes >= 0).sum() <= inside.size * 1.2
        counts = np.bincount(classes[classes >= 0], minlength=SEG_NUM_CLASSES)
        assert [t["c"] for t in s["shares"]] == list(np.argsort(-counts, kind="stable")[:len(s["shares"])])
    per_group = {}
    for s in data["real"]:
        per_group.setdefault(s["teacher_top1"], []).append(s["split"])
        # the mask layer shows the stored mask: its colours in the mask's proportions
        mask = class_of_colour(png(site / s["layers"]["mask-page"]), palette)
        shares = np.bincount(mask[mask >= 0], minlength=SEG_NUM_CLASSES) / max((mask >= 0).sum(), 1)
        assert np.abs(shares - np.array(s["mask_pixels"]) / sum(s["mask_pixels"])).max() < 0.05
    # real images grouped by the teacher's dominant class (a segmentation image has no label), val first
    assert all(len(splits) <= PER_CLASS and splits == sorted(splits, key=lambda v: v != "val")
               for splits in per_group.values())
    assert all(s["label"] == -1 for s in data["real"])
    # the classes' frequency: the pixels of the masks shown, not the release's
    shown = [s for s in data["real"] + data["others"] if s["kind"] == "real"]
    pixels = data["segmentation"]["mask_pixels"]
    assert pixels["images"] == len(shown) < manifest["counts"]["real/train"] + manifest["counts"]["real/val"]
    assert pixels["pixels"] == list(np.sum([s["mask_pixels"] for s in shown], axis=0))


def test_the_run_brings_its_miou_curve_and_per_class_iou(seg):
    run = seg["data"]["runs"][0]
    metrics = json.loads((seg["run"] / "metrics.json").read_text())["val"]
    assert run["metrics"]["miou"] == metrics["miou"] and seg["data"]["segmentation"]["headline"]["key"] == "miou"
    assert [e["miou"] for e in run["val"]][-1] == metrics["miou"]
    rows = run["per_class_iou"]
    assert [r["class"] for r in rows] == seg["manifest"]["classes"]
    assert np.allclose([r["iou"] for r in rows], metrics["per_class_iou"], atol=1e-4)
    assert np.allclose([r["teacher_iou"] for r in rows], metrics["teacher_per_class_iou"], atol=1e-4)
    assert "confusion" not in run


def loaded(browser, selector: str) -> None:
    """Wait until every image `selector` finds has loaded (or failed: the count below then says so)."""
    browser.eval(f"Promise.all([...document.querySelectorAll('{selector}')].map(i => i.decode().catch(() => 0)))"
                 ".then(() => 0)")


def test_the_site_shows_overlays_legend_miou_and_a_sample_page(seg, browser):
    data, site = seg["data"], seg["site"]
    browser.open((site / "index.html").as_uri())
    loaded(browser, "img")
    shown = "[...document.querySelectorAll('%s')].filter(i => getComputedStyle(i).display !== 'none' && i.complete " \
            "&& i.naturalWidth > 0).length"
    assert browser.eval("document.querySelectorAll('.mix-card').length") == MIXES
    # each mix drawn with the teacher's labels over it; the parents with theirs
    assert browser.eval(shown % ".mix-card figure.mix img.layer-teacher") == MIXES
    assert browser.eval(shown % ".mix-card figure:not(.mix) img.layer-teacher") == 2 * MIXES
    assert browser.eval(shown % ".real-card img.layer-mask") == 0
    assert browser.eval("document.querySelector('.class-legend').querySelectorAll('.legend-item').length") == \
        SEG_NUM_CLASSES
    # the overlay control: the stored masks over the real images instead
    browser.eval("const o = document.querySelector('.overlay-mode'); o.value = 'mask';"
                 "o.dispatchEvent(new Event('input')); 0")
    assert browser.eval(shown % ".real-card img.layer-mask") == len(data["real"])
    assert browser.eval(shown % ".real-card img.layer-teacher") == 0
    assert browser.eval(shown % ".mix-card figure.mix img.layer-teacher") == MIXES
    # sorting and the dominant-class filter still work
    browser.eval("const s = document.getElementById('mix-sort'); s.value = 'confidence-desc';"
                 "s.dispatchEvent(new Event('input')); 0")
    order = browser.eval("[...document.querySelectorAll('.mix-card')].map(c => c.dataset.uid)")
    assert order == [m["uid"] for m in sorted(data["mixes"], key=lambda m: (-m["confidence"], m["uid"]))]
    top = data["mixes"][0]["teacher_top1"]
    browser.eval(f"const t = document.getElementById('mix-teacher'); t.value = '{top}';"
                 "t.dispatchEvent(new Event('input')); 0")
    assert browser.eval("document.querySelectorAll('.mix-card').length") == \
        sum(m["teacher_top1"] == top for m in data["mixes"])
    run = data["runs"][0]
    # the run's val mIoU at each validation, and the teacher's on the same views
    assert browser.eval("document.querySelectorAll('#run-headline-chart circle.pt').length") == 2 * len(run["val"])
    assert browser.eval("document.querySelectorAll('table.per-class-iou tr').length") == SEG_NUM_CLASSES + 1
    # a segmentation compare's table: its rows' mIoU and their seeds' range
    assert browser.eval("[...document.querySelectorAll('table.compare-table th')].map(h => h.textContent)")[2] == \
        "val mIoU (%)"
    assert browser.eval("document.querySelector('table.compare-table tr:nth-child(2)').textContent").count(
        "[25.0, 31.0]") == 1
    real = data["real"][0]
    browser.eval(f"location.hash = '#sample/{real['uid']}'; 0")
    browser.eval("new Promise(ok => { const poll = () => document.getElementById('sample-page').hidden ? "
                 "setTimeout(poll, 20) : ok(0); poll(); })")   # the page is drawn on hashchange
    loaded(browser, "#seg-panels img")
    # image, mask, then each view with its label map and box
    assert browser.eval("document.querySelectorAll('#seg-panels figure.panel').length") == 2 + len(real["views"])
    assert browser.eval("document.querySelectorAll('#seg-panels .vbox').length") == len(real["views"])
    assert browser.eval("[...document.querySelectorAll('#seg-panels img')].every(i => i.complete && i.naturalWidth > 0)")
    assert browser.eval("document.getElementById('sample-page').textContent.includes('null')") is False
    assert browser.errors() == []
