"""`bench/gpu.sh --size tiny` on the CPU: the production-path benchmark runs end to end in one
process and prints one JSON with the rates, the sweep of the speed switches and the ratios."""
import json
import os
import subprocess
import sys
from pathlib import Path
from paths import REPO



def test_tiny_gpu_bench_prints_one_json_with_the_ratios():
    # one thread: nothing here asserts a speed, and a single thread is immune to the OpenMP spin-waits
    # that make two threads on an oversubscribed (shared) CPU several times slower
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(REPO / "bench" / "gpu.sh"), "--size", "tiny", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)   # stdout is the JSON and nothing else
    assert (res["size"], res["device"], res["image"], res["scheduler"]) == ("tiny", "cpu", 64, "ldm-ddim")
    for key in ("stock_1_img_per_s", "stock_batched_img_per_s", "worker_img_per_s", "worker_recipe_img_per_s",
                "worker_serial_img_per_s", "worker_vs_stock_1", "worker_vs_stock_batched", "worker_overlap_speedup",
                "sdpa_speedup", "peak_tflops"):
        assert res[key] > 0, key
    assert res["worker_vs_stock_batched"] == res["worker_img_per_s"] / res["stock_batched_img_per_s"]
    assert res["worker_unet_steps"] == 2 and res["mixes"] == 2
    sweep = res["sweep"]   # batch sizes × compile (off only on a CPU), plus the attention and VAE-slice levers
    assert [s["batch_size"] for s in sweep if "attention" not in s and "vae_slice" not in s] == [1, 2]
    assert not any(s["compile"] for s in sweep)
    assert any(s.get("attention") == "classic" for s in sweep) and any("vae_slice" in s for s in sweep)
    assert all(s["img_per_s"] > 0 and s["failed"] == 0 for s in sweep)
    assert res["teacher"]["img_per_s"] > 0
    assert set(res["trainer"]) == {"resnet50", "vit_small_patch16_224"}
    assert all(t["memory_images_per_s"] > 0 and t["ratio"] > 0 for t in res["trainer"].values())
    assert set(res["meets_targets"]) == set(res["targets"]) and "do not apply" in res["note"]
