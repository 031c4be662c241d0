"""`tsd plan --dry-run` for the machine at hand, beside the H100: a CPU's time from the job's FLOPs at
a matmul speed measured here, a GPU's from the H100's scaled by peak TFLOP/s; never a bare 0.00."""
from __future__ import annotations

import numpy as np
import pytest

from paths import REPO
from pipeline.config import load_job
from pipeline.contract.configlib import files_optional
from pipeline.contract.weights import safetensors_parameters
from pipeline.stages.estimate import (GPU_PEAK_TFLOPS, estimate, format_estimate, generator_scales,
                                      measure_matmul_gflops, mix_tflop, teacher_tflop)


def recipe(overrides=None):
    with files_optional():   # the paper's recipe, before its data and weights are here
        return load_job(REPO / "manifests" / "cub200.yaml", overrides)


def test_a_cpu_gets_the_jobs_flops_at_its_measured_speed():
    job = recipe()
    est = estimate(job, gpu="", gflops=100.0)
    here = est["here"]
    assert here["kind"] == "cpu" and here["device"].startswith("CPU, ")
    per_view, _ = teacher_tflop(job)
    assert per_view == pytest.approx(0.6, rel=0.05)     # DINOv2 ViT-g/14 at 224 px: 0.6 TFLOP
    mixes = est["counts"]["mix/train"] * mix_tflop(job)
    assert here["seconds"]["mix"] == pytest.approx(mixes * 1e3 / 100.0)
    assert here["seconds"]["teacher"] > 0
    text = format_estimate(job, est)
    assert "this machine: CPU" in text and "extrapolated time (at least)" in text
    assert "given: 100.0 GFLOP/s" in text and "extrapolated: the job's" in text


def test_a_known_gpu_scales_the_h100_estimate_and_an_unknown_one_says_so():
    job = recipe()
    est = estimate(job, gpu="NVIDIA A100-SXM4-80GB")
    scale = 989.0 / GPU_PEAK_TFLOPS["A100"]
    assert est["here"]["seconds"]["mix"] == pytest.approx(est["gpu_seconds"]["target"]["mix"] * scale)
    assert "extrapolated: the H100 estimate" in format_estimate(job, est)
    h100 = estimate(job, gpu="NVIDIA H100 80GB HBM3")["here"]["seconds"]
    assert h100["mix"] == pytest.approx(est["gpu_seconds"]["target"]["mix"])
    odd = estimate(job, gpu="Some Future GPU")
    assert odd["here"]["seconds"] is None and "no estimate" in format_estimate(job, odd)


def test_a_cpu_job_without_gpu_work_still_shows_its_time():
    # pixel-space mixes and a tiny teacher: the H100 table rounds to 0.00 hours, this machine's does not
    job = recipe({"generator": {"kind": "mixup", "path": None}, "teacher": {"weights": None,
                  "arch": "vit_small_patch14_dinov2", "img_size": 56,
                  "model_kwargs": {"embed_dim": 192, "depth": 2, "num_heads": 3}}})
    est = estimate(job, gpu="", gflops=5.0)
    text = format_estimate(job, est)
    assert f"{est['gpu_hours']['target']:.2f}" == "0.00"
    line = next(l for l in text.splitlines() if l.startswith("extrapolated time"))
    assert line.split()[-1] not in ("0.0s", "0s")
    assert est["here"]["seconds"]["mix"] == 0.0


def test_the_matmul_speed_is_measured():
    assert measure_matmul_gflops(seconds=0.05, n=128) > 0.01


def test_a_small_generator_folder_scales_its_flops(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "unet").mkdir()
    save_file({"w": np.zeros((100, 10), np.float32), "b": np.zeros(10, np.float32)},
              str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert safetensors_parameters(str(tmp_path / "unet")) == 1010
    job = recipe({"generator": {"path": str(tmp_path)}})
    scales, note = generator_scales(job)
    assert scales["unet"] == pytest.approx(1010 / 859.52e6) and scales["vae"] == 1.0
    assert "unet 0.00101 M / 860 M" in note
    assert mix_tflop(job, scales) < mix_tflop(job) / 10
