"""`bench/gpu.sh --size tiny` on the CPU: the device check runs its sections as separate processes,
appends every result to the JSON-lines file the moment it is measured, writes one status line per
section, and its budget stops starting a section whose estimate no longer fits. Ray is made
unimportable: the check must run where Ray's wheel cannot travel."""
import json
import os
import subprocess
import sys

from paths import REPO


def test_tiny_device_check_writes_each_section_and_keeps_to_its_budget(tmp_path):
    from pipeline.bench.gpu import ESTIMATE_S

    no_ray = tmp_path / "no-ray"
    (no_ray / "ray").mkdir(parents=True)
    (no_ray / "ray" / "__init__.py").write_text("raise ImportError('ray does not travel to the GPU machine')\n")
    out = tmp_path / "check.jsonl"
    budget = 55
    sections = ["env", "syncs", "decode_race", "trainer", "compile"]
    assert ESTIMATE_S["tiny"]["trainer"] > budget   # so the budget stops it, whatever the machine's speed
    # one thread: nothing here asserts a speed, and one thread is immune to OpenMP spin-waits on a shared CPU
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(no_ray)}
    proc = subprocess.run([str(REPO / "bench" / "gpu.sh"), "--size", "tiny", "--device", "cpu", "--budget", str(budget),
                           "--sections", *sections, "--out", str(out)], capture_output=True, text=True, timeout=400,
                          env=env)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    statuses = [line for line in lines if "status" in line]
    assert [s["section"] for s in statuses] == sections, proc.stderr[-3000:]
    state = {s["section"]: s["status"] for s in statuses}
    assert state["env"] == "done" and state["trainer"] == "not started", (state, proc.stderr[-3000:])
    for status in statuses:   # a finished section's results come before its status line; one not started has none
        results = [line for line in lines[:lines.index(status)] if line["section"] == status["section"]
                   and "status" not in line]
        if status["status"] == "done":
            assert results, status
        if status["status"] == "not started":
            assert not results, (status, results)
    env_line = next(line for line in lines if line["section"] == "env" and "status" not in line)
    assert env_line["transformers_sees_torch"] is True and env_line["clip_vision_real"] is True
    assert env_line["gcc"] and env_line["python_h"] is True
    if state["syncs"] == "done":
        syncs = next(line for line in lines if line["section"] == "syncs" and "status" not in line)
        assert syncs["loop"] == [] and syncs["whole_mix"]
    if state["decode_race"] == "done":
        assert any(line.get("skipped") == "needs CUDA" for line in lines if line["section"] == "decode_race")
    assert proc.returncode == 0, proc.stderr[-3000:]
