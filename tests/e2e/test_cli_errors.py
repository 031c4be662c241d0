"""A corpus of bad inputs through the real CLI: each is exactly one line on stderr,
`tsd <command>: error: …`, with exit status 2 (bad input), never a traceback, a hang or a
progress bar in the way.

The cases run in one subprocess (`tsd` entry point called per case, each with its own stderr and
stdout captured at the file-descriptor level), so the corpus costs one interpreter start."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
from paths import REPO


DRIVER = textwrap.dedent("""
    import json, os, signal, sys, tempfile, traceback
    from pipeline import cli

    def timeout(signum, frame):
        raise TimeoutError("case took over 120 s")

    signal.signal(signal.SIGALRM, timeout)
    results = []
    for argv in json.load(open(sys.argv[1])):
        with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
            saved = os.dup(1), os.dup(2)
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            escaped = None
            signal.alarm(120)
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException:
                rc, escaped = None, traceback.format_exc()
            finally:
                signal.alarm(0)
                sys.stdout.flush(); sys.stderr.flush()
                os.dup2(saved[0], 1); os.dup2(saved[1], 2)
                os.close(saved[0]); os.close(saved[1])
            err.seek(0); out.seek(0)
            results.append({"argv": argv, "rc": rc, "stderr": err.read().decode(errors="replace"),
                            "stdout": out.read().decode(errors="replace"), "escaped": escaped})
    print(json.dumps(results))
""")


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture(scope="module")
def corpus(small_release, tmp_path_factory):
    """(cases, folder): (argv, expected exit code, a phrase the line must hold) over damaged copies of
    the small release, its job, a training config on it, a student, checkpoints and sources."""
    from pipeline.demo.runner import SIZES, train_config
    from pipeline.sources.ingest import ingest
    from trainer.students import build_student, mean_std, save_student

    root = Path(small_release["root"])
    job = small_release["job_path"]
    d = tmp_path_factory.mktemp("bad-inputs")
    models = small_release["models"]
    train = _yaml(d / "train.yaml", train_config(str(root), models, "distill", SIZES["small"]))
    classes = small_release["manifest"]["classes"]

    # damaged files
    junk_weights = d / "junk.safetensors"
    junk_weights.write_bytes(b"\x00" * 64)
    cut_weights = _truncated(Path(models["student"]), d / "cut.safetensors")
    mixer = d / "mixer"
    shutil.copytree(models["image-mixer"], mixer)
    unet = mixer / "unet" / "diffusion_pytorch_model.safetensors"
    _truncated(unet, unet)
    cut_index = _truncated(root / "work" / "ingest" / "index.parquet", d / "cut-index.parquet")
    bad_yaml = d / "bad.yaml"
    bad_yaml.write_text("data: {index: [unclosed\n")
    manifest = json.loads((root / "manifest.json").read_text())
    releases = {}
    for name, text in {"cut-manifest": (root / "manifest.json").read_text()[:200],
                       "no-image": json.dumps({k: v for k, v in manifest.items() if k != "image"}),
                       "future": json.dumps(dict(manifest, format_version=99)),
                       "not-object": "[1, 2, 3]"}.items():
        (d / name).mkdir()
        (d / name / "manifest.json").write_text(text)
        releases[name] = d / name

    # job folders in odd states
    empty_out = d / "job-empty"
    empty_out.mkdir()
    planned = d / "job-planned"
    (planned / "work").mkdir(parents=True)
    shutil.copy(root / "work" / "plan.parquet", planned / "work" / "plan.parquet")
    cut_plan = d / "job-cut-plan"
    _truncated(root / "work" / "plan.parquet", cut_plan / "work" / "plan.parquet")
    shutil.copytree(root / "teacher", cut_plan / "teacher")

    # a student (as `tsd train` writes one), runs and checkpoints
    net = build_student("resnet10t", len(classes))
    mean, std = mean_std(net)
    student = d / "student-run"
    save_student(net, student, {"arch": "resnet10t", "num_classes": len(classes), "img_size": 48, "mean": mean,
                                "std": std, "classes": classes, "model_kwargs": {}})
    junk_student = d / "junk-student"
    junk_student.mkdir()
    shutil.copy(student / "student.json", junk_student / "student.json")
    _truncated(student / "student.safetensors", junk_student / "student.safetensors")
    finished = d / "finished-run"
    finished.mkdir()
    (finished / "log.jsonl").write_text('{"step": 1}\n')
    (finished / "config.yaml").write_text("releases: []\n")
    shards_only = d / "generated-not-released"        # generate's shards, no manifest yet
    (shards_only / "real").mkdir(parents=True)
    broken_ckpt = d / "broken-ckpt-run"
    step = broken_ckpt / "checkpoints" / "step-00000004"
    step.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(step / "model.safetensors"))
    (step / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    (step / "checksums.json").write_text(json.dumps({"model.safetensors": "0" * 64, "state.pt": "0" * 64}))

    # sources
    (d / "empty-src").mkdir()
    header_only = d / "header-only.csv"
    header_only.write_text("path,label\n")
    (d / "bad-src" / "cat").mkdir(parents=True)
    (d / "bad-src" / "cat" / "a.jpg").write_bytes(b"")
    (d / "bad-src" / "cat" / "b.jpg").write_bytes(b"GIF89a nope")
    other_index = d / "other-ingest"
    ingest(root / "work" / "source", other_index, workers=1)
    (d / "another-src" / "dog").mkdir(parents=True)
    shutil.copy(next((root / "work" / "source").rglob("*.jpg")), d / "another-src" / "dog" / "x.jpg")

    # compare configs: the training settings of `train` with teachers instead of releases
    settings = {k: v for k, v in yaml.safe_load(train.read_text()).items() if k != "releases"}
    compare = _yaml(d / "compare.yaml", {**settings, "teachers": [{"name": "probed", "releases": [str(root)]}]})
    no_teacher = _yaml(d / "compare-no-teacher.yaml", {**settings, "teachers": []})
    twice = _yaml(d / "compare-twice.yaml", {**settings, "teachers": [{"name": "a", "releases": [str(root)]},
                                                                       {"name": "a", "releases": [str(root)]}]})

    j, t, out = str(job), str(train), str(d / "out")
    cases = [
        # the job's keys, validated before anything loads
        (["generate", j, "--out", out, "--set", "generate.workers=-2"], "generate.workers: must be >= 1, got -2"),
        (["probe", j, "--out", out, "--set", "probe.batch_size=0"], "probe.batch_size: must be >= 1, got 0"),
        (["probe", j, "--out", out, "--set", "probe.lr=-1"], "probe.lr: must be > 0, got -1.0"),
        (["probe", j, "--out", out, "--set", "teacher.arch=not_a_model"], "teacher.arch: unknown timm model"),
        (["probe", j, "--out", out, "--set", "teacher.batch_size=-1"], "teacher.batch_size: must be >= 1"),
        (["probe", j, "--out", out, "--set", "probe.hidden=-5"], "probe.hidden: must be >= 1, got -5"),
        (["generate", j, "--out", out, "--set", "generate.max_retries=-1"], "generate.max_retries: must be >= 0"),
        (["generate", j, "--out", out, "--set", "generate.cpus_per_worker=-1"], "generate.cpus_per_worker: must be > 0"),
        (["plan", j, "--out", out, "--set", "plan.weight_range=[0.9,0.1]"], "plan.weight_range: must be [min, max]"),
        (["plan", j, "--dry-run", "--set", "views.k=0"], "views.k: must be >= 1, got 0"),
        (["plan", j, "--out", out, "--set", "generate.logits=some"], "generate.logits: 'some' is not one of"),
        (["probe", j, "--out", out, "--set", "teacher.pretrained=true"], "teacher.pretrained: unknown key"),
        (["probe", j, "--out", out, "--set", f"teacher.weights={junk_weights}"], "not a safetensors file"),
        (["probe", j, "--out", out, "--set", f"teacher.weights={cut_weights}"], "truncated or damaged safetensors"),
        (["generate", j, "--out", out, "--set", f"generator.path={mixer}"], "generator.path: "),
        (["probe", j, "--out", out, "--set", f"data.index={cut_index}"], "not a readable index"),
        (["plan", j, "--out", out, "--set", f"data.index={d / 'missing.parquet'}"], "data.index: file not found"),
        (["probe", str(d / "missing.yaml"), "--out", out], "config file not found"),
        (["probe", str(bad_yaml), "--out", out], "not valid YAML"),
        # job folders: stages out of order, damaged plan
        (["release", j, "--out", str(empty_out)], "no plan (run `tsd plan` first)"),
        (["release", j, "--out", str(planned)], "run `tsd generate` first"),
        (["generate", j, "--out", str(planned)], "no teacher head (run `tsd probe` first)"),
        (["generate", j, "--out", str(cut_plan)], "not a readable plan"),
        # releases: missing, damaged, foreign, unknown URL schemes
        (["verify", str(d / "no-such-release")], "not a release (no manifest.json)"),
        (["verify", str(releases["cut-manifest"])], "not valid JSON"),
        (["verify", str(releases["no-image"])], "image.format is missing"),
        (["verify", str(releases["future"])], "format_version 99"),
        (["verify", str(releases["not-object"])], "expected a JSON object"),
        (["verify", "foo://bucket/release"], "unknown storage scheme"),
        (["verify", "hdfs://namenode/release"], "cannot open this storage"),   # no JVM here: the store cannot start
        # training
        (["train", t, "--out", str(finished)], "already holds a run"),
        (["train", t, "--out", str(broken_ckpt), "--resume"], "no readable checkpoint to resume from"),
        (["train", t, "--out", out, "--resume", "--overwrite"], "exclude each other"),
        (["train", t, "--out", out, "--set", f"releases=[{d / 'no-such-release'}]"], "not a release"),
        (["train", t, "--out", out, "--set", f"releases=[{shards_only}]"],
         f"not a release (no manifest.json); it holds shards (mix/, real/): once `tsd generate` has made them all, "
         f"`tsd release JOB --out {shards_only}` writes the manifest"),
        (["train", t, "--out", out, "--set", "releases=[foo://bucket/release]"], "unknown storage scheme"),
        (["train", t, "--out", out, "--set", f"releases=[{releases['cut-manifest']}]"], "not valid JSON"),
        (["train", t, "--out", out, "--set", "student.arch=resnet_9000"], "student.arch: unknown timm model"),
        (["train", t, "--out", out, "--set", f"student.weights={junk_weights}"], "not a safetensors file"),
        (["train", t, "--out", out, "--set", "optim.lr=0"], "optim.lr: must be > 0, got 0.0"),
        (["train", t, "--out", out, "--set", "data.on_corrupt=ignore"], "data.on_corrupt: 'ignore' is not one of"),
        (["train", t, "--out", out, "--set", "runtime.checkpoint_minutes=-1"], "must be >= 0"),
        (["train", t, "--out", out, "--set", "optim.steps=0"], "optim.steps: must be >= 1, got 0"),
        # compare
        (["compare", str(compare), "--out", out, "--set", "seeds=0"], "seeds: must be >= 1, got 0"),
        (["compare", str(no_teacher), "--out", out], "teachers: at least one"),
        (["compare", str(twice), "--out", out], "teachers: names must differ"),
        (["compare", str(compare), "--out", out, "--set", "rows=[kd,kd]"], "rows: listed twice"),
        (["compare", str(compare), "--out", out, "--set", f"teachers=[{{name: p, releases: [{d / 'no-such-release'}]}}]"],
         "not a release"),
        (["compare", str(d / "missing.yaml"), "--out", out], "config file not found"),
        # the teacher's adaptation and the generator family
        (["probe", j, "--out", out, "--set", "probe.mode=finetune", "--set", "probe.layer_decay=0"],
         "probe.layer_decay: must be"),
        (["plan", j, "--out", out, "--set", "generator.kinds=[cutmix]"], "generator.kinds: must list"),
        # evaluation
        (["eval", str(root / "manifest.json"), str(root)], "not a student"),
        (["eval", str(junk_student), str(root)], "truncated or damaged safetensors"),
        (["eval", str(d / "no-such-run"), str(root)], "not found"),
        (["eval", str(student), "foo://bucket/release"], "unknown storage scheme"),
        (["eval", str(student), str(releases["cut-manifest"])], "not valid JSON"),
        (["export", str(d / "no-such-run"), "--out", str(d / "exported")], "not a finished run folder"),
        (["export", str(junk_student), "--out", str(d / "exported")], "truncated or damaged safetensors"),
        # ingest
        (["ingest", str(d / "empty-src"), "--out", str(d / "i1"), "--workers", "1"], "no usable image"),
        (["ingest", str(header_only), "--out", str(d / "i2"), "--workers", "1"], "no usable image (no rows)"),
        (["ingest", str(d / "bad-src"), "--out", str(d / "i3"), "--workers", "1"], "2 file(s) rejected"),
        (["ingest", str(d / "missing-src"), "--out", str(d / "i4")], "no such file or folder"),
        (["ingest", str(d / "another-src"), "--out", str(other_index), "--workers", "1"], "holds the index of"),
        # tools
        (["subset", str(root), "--uids", str(d / "missing.txt"), "--out", str(d / "sub")], "uid file not found"),
        (["convert", str(junk_weights), "--out", str(d / "conv")], "not a safetensors file"),
        (["regenerate", str(root), "--uid", "0" * 32], "no sample"),
        (["viz", "curves", str(d / "no-such-run"), "--out", str(d / "c.png")], "not found"),
    ]
    return cases, d


def test_every_bad_input_is_one_line(corpus):
    cases, folder = corpus
    argvs = [argv for argv, _ in cases]
    (folder / "cases.json").write_text(json.dumps(argvs))
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(folder),
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(folder / "cases.json")], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = []
    for (argv, phrase), r in zip(cases, results):
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        prefix = f"tsd {argv[0]}: error: "
        ok = (r["escaped"] is None and r["rc"] == 2 and len(lines) == 1 and lines[0].startswith(prefix)
              and phrase in lines[0] and "Traceback" not in r["stderr"] + r["stdout"])
        if not ok:
            bad.append(f"{' '.join(argv[:2])} … → rc {r['rc']}, stderr {r['stderr'][-600:]!r}"
                       + (f", escaped {r['escaped'][-600:]}" if r["escaped"] else ""))
    assert not bad, "\n".join(bad)
    assert len(results) == len(cases) >= 50


def test_an_error_gets_a_line_of_its_own_below_a_progress_line(capsys):
    """A progress line redrawn in place on a terminal is ended before the error is printed."""
    import io

    from pipeline import cli
    from pipeline.contract.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = Progress("train", 10, unit="steps", stream=screen)
    bar.update(3)
    bar._emit()
    assert not screen.getvalue().endswith("\n")              # mid-line, as a failure would leave it
    assert cli.fail("tsd train", "something went\nwrong", 1) == 1
    assert screen.getvalue().endswith("\n")
    assert capsys.readouterr().err == "tsd train: error: something went wrong\n"
