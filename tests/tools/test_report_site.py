"""`tsd report`: the static site of a release and a run, opened from file:// in headless Chromium
(no console errors, every mix card the build wrote, a sort control that reorders them, a sample page
with its views, a chart with points), and built from a release on the S3 test server."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.tools.report import build_report

pytestmark = pytest.mark.slow
MIXES = 12


def report_data(site: Path) -> dict:
    text = (site / "data.js").read_text()
    return json.loads(re.fullmatch(r"window\.TSD_REPORT = (.*);\n", text, re.S).group(1))


@pytest.fixture(scope="module")
def trained_run(small_release, tmp_path_factory):
    """A real `tsd train` run on the small release (a few steps) and its eval predictions."""
    from pipeline.contract.configlib import load
    from pipeline.demo.runner import SIZES, train_config
    from trainer.config import TrainConfig
    from trainer.evaluate import evaluate_checkpoint
    from trainer.train import run_training
    import yaml

    folder = tmp_path_factory.mktemp("report-run")
    config = train_config(str(small_release["root"]), small_release["models"], "distill", SIZES["small"])
    config["optim"] = dict(config["optim"], epochs=1)
    config["runtime"] = dict(config.get("runtime", {}), log_every=1, device="cpu")
    (folder / "train.yaml").write_text(yaml.safe_dump(config))
    run = folder / "distill"
    run_training(load(TrainConfig, folder / "train.yaml"), run, overwrite=True)
    metrics, _ = evaluate_checkpoint(run, str(small_release["root"]), workers=1, predictions=True)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics["predictions"]))
    return run


@pytest.fixture(scope="module")
def site(small_release, trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-site")
    assert cli.main(["report", str(small_release["root"]), str(trained_run), "--out", str(out),
                     "--mixes", str(MIXES), "--per-class", "3"]) == 0
    return out


def test_the_report_holds_a_bounded_sample_with_teacher_outputs(site, small_release):
    data = report_data(site)
    manifest = small_release["manifest"]
    assert data["release"]["verify_quick"]["ok"] is True
    assert data["release"]["counts"] == manifest["counts"]
    assert len(data["mixes"]) == MIXES < manifest["counts"]["mix/train"]
    entropies = [m["entropy"] for m in data["mixes"]]
    assert entropies == sorted(entropies, reverse=True)       # the highest-entropy mixes
    shown = {s["uid"] for s in data["mixes"] + data["real"] + data["others"]}
    for m in data["mixes"]:
        assert len(m["top5"]) == 5 and abs(sum(t["p"] for t in m["top5"])) <= 1 + 1e-6
        assert m["top5"][0]["p"] >= m["top5"][-1]["p"] and set(m["parents"]) <= shown
        assert len(m["views"]) == manifest["views"]["k"]
        assert all(0 <= v["box"][0] < 1 and 0 < v["box"][2] <= 1 for v in m["views"])
        assert (site / m["thumb"]).stat().st_size > 0
    per_class = {}
    for s in data["real"]:
        per_class[s["label"]] = per_class.get(s["label"], 0) + 1
    assert set(per_class.values()) == {3} and len(per_class) == manifest["num_classes"]
    nodes = data["generation"]["nodes"]
    assert sum(n["shards"] for n in nodes) == len(manifest["shards"])
    run = data["runs"][0]
    assert [e["step"] for e in run["train"]] == list(range(1, len(run["train"]) + 1))
    assert sum(map(sum, run["confusion"])) == manifest["counts"]["real/val"]


def test_the_site_works_in_headless_chromium(site, browser, tmp_path_factory):
    data = report_data(site)
    # kept as artefacts: pytest's tmp folder (its last 3 sessions), or $TSD_TEST_ARTEFACTS/report-screenshots
    keep = os.environ.get("TSD_TEST_ARTEFACTS")
    shots = Path(keep) / "report-screenshots" if keep else tmp_path_factory.mktemp("report-screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    browser.open((site / "index.html").as_uri())
    assert browser.eval("document.querySelectorAll('.mix-card').length") == len(data["mixes"]) == MIXES
    assert browser.eval("document.getElementById('verify').textContent") == "passed"
    before = browser.eval("[...document.querySelectorAll('.mix-card')].map(c => c.dataset.uid)")
    assert before == [m["uid"] for m in data["mixes"]]          # entropy, highest first
    browser.eval("const s = document.getElementById('mix-sort'); s.value = 'confidence-desc';"
                 "s.dispatchEvent(new Event('input')); 0")
    after = browser.eval("[...document.querySelectorAll('.mix-card')].map(c => c.dataset.uid)")
    want = sorted(data["mixes"], key=lambda m: (-m["confidence"], m["uid"]))
    assert after == [m["uid"] for m in want] and after != before
    # a filter by the teacher's class keeps exactly the mixes of that class
    top = data["mixes"][0]["teacher_top1"]
    browser.eval(f"const t = document.getElementById('mix-teacher'); t.value = '{top}';"
                 "t.dispatchEvent(new Event('input')); 0")
    assert browser.eval("document.querySelectorAll('.mix-card').length") == \
        sum(m["teacher_top1"] == top for m in data["mixes"])
    points = browser.eval("document.querySelectorAll('#run-chart circle.pt').length")
    assert points == len(data["runs"][0]["train"])
    assert browser.eval("document.querySelectorAll('#generation-chart circle.pt').length") == \
        len(data["generation"]["shards"])
    browser.screenshot(shots / "index.png")
    mix = data["mixes"][0]
    browser.eval(f"location.hash = '#sample/{mix['uid']}'; 0")
    assert browser.eval("document.getElementById('sample-page').hidden") is False
    assert browser.eval("document.querySelectorAll('#viewer .vbox').length") == len(mix["views"])
    assert browser.eval("document.querySelector('#sample-page h2').textContent") == f"Sample {mix['uid']}"
    assert browser.eval("[...document.querySelectorAll('#viewer img')].every(i => i.complete && i.naturalWidth > 0)")
    browser.screenshot(shots / "sample.png")
    assert browser.errors() == []
    print(f"report screenshots: {shots}")


def test_a_report_of_a_release_on_s3(small_release, s3_bucket, tmp_path, site):
    import fsspec

    url = f"{s3_bucket}/release"
    fs = fsspec.filesystem("s3")
    root = Path(small_release["root"])
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] in ("real", "mix", "teacher") or rel.parts == (rel.name,) and path.is_file():
            fs.put_file(str(path), f"{url[5:]}/{rel.as_posix()}")
    done = build_report(url, [], tmp_path / "site", mixes=MIXES, per_class=3)
    remote, local = report_data(tmp_path / "site"), report_data(site)
    assert done["mixes"] == MIXES and remote["release"]["root"] == url
    assert remote["release"]["verify_quick"]["ok"] is True
    assert [m["uid"] for m in remote["mixes"]] == [m["uid"] for m in local["mixes"]]
    assert [m["top5"] for m in remote["mixes"]] == [m["top5"] for m in local["mixes"]]


def test_a_missing_release_is_one_line(tmp_path, capsys):
    code = cli.main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "site")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nowhere" in err[0]


def test_serve_serves_the_site_on_loopback(small_release, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(cli.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "report", str(small_release["root"]), "--out",
                             str(tmp_path / "site"), "--mixes", "2", "--per-class", "1", "--serve", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 180, None
        while page is None and time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                    page = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None and '<script src="data.js"></script>' in page, proc.poll()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data.js", timeout=5) as r:
            assert r.read().startswith(b"window.TSD_REPORT = ")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and f"http://127.0.0.1:{port}/" in out
