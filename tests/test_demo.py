"""`tsd demo` end to end through the CLI, on the 'small' size: every stage, the summary, the pictures;
then the same command again reuses the finished work."""
import shutil
import subprocess
import sys
import time


def run_demo(out):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out), "--size", "small"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, time.time() - t0


def test_demo_runs_every_stage_then_reuses_them(small_release, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(small_release["root"], out)  # the release stages are done: the demo adds train, eval, pictures
    first, first_s = run_demo(out)
    for line in ("real/train", "real/val", "mix/train", "teacher (probed)", "student, finetuned",
                 "student, distilled", "train (distill)", "eval", "pictures"):
        assert line in first, line
    assert "0 shards made" in first and "(reused)" in first
    for png in ("mixes.png", "pca.png", "curves.png"):
        assert (out / "pictures" / png).stat().st_size > 10_000
    for mode in ("finetune", "distill"):
        assert (out / "runs" / mode / "student.safetensors").is_file()
    verify = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout

    second, second_s = run_demo(out)
    assert second_s < first_s / 2, (first_s, second_s)
    assert second.count("(reused)") >= 2
