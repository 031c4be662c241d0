"""The manifests/ folder: every job and train manifest loads with the real loaders, the demo files
equal what `tsd demo` runs, `tsd plan --dry-run` estimates each recipe, the RayJob is well formed."""
import re

import pytest
import yaml

from paths import MANIFESTS
from recipes import localise, write_yaml

from pipeline import cli
from pipeline.config import load_job
from pipeline.contract.configlib import ConfigError, load
from pipeline.stages.estimate import (JPEG_ANCHOR, STOCK_IMG_S, estimate, format_estimate, mix_seconds_model,
                                     natural_test_image)

RECIPES = ["cub200", "aircraft", "dtd", "pets", "caltech101"]
TRAIN_CONFIGS = ["train-resnet50", "train-vit-s16", "train-vit-s14-dinov2"]


def raw(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_the_papers_setup_and_validates(name, tmp_path):
    data = raw(name)
    assert data["data"]["index"] == f"/data/{name}/ingest/index.parquet"
    assert data["teacher"]["weights"].startswith("/data/models/")
    job = load_job(write_yaml(tmp_path / "job.yaml", localise(data, tmp_path)))
    t, g = job.teacher, job.generator
    assert (t.arch, t.img_size, t.dtype) == ("vit_giant_patch14_dinov2", 224, "bf16")
    assert (g.kind, g.size, g.scheduler, g.steps, g.guidance, g.dtype, g.tokens) == \
        ("image-mixer", 640, "ldm-ddim", 30, 3.0, "fp16", 5)
    assert g.path and data["generator"]["path"] == "/data/models/image-mixer-diffusers"
    assert (job.data.store_size, job.data.image_format) == (256, "jpg")
    assert job.views.k > 1 and job.probe.head == "linear"
    assert job.expected_counts.train > 0 and job.expected_counts.val > 0 and job.expected_counts.classes > 1


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_documents_sizes_source_and_ingest(name):
    text = (MANIFESTS / f"{name}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    counts = raw(name)["expected_counts"]
    assert f"{counts['train']:,}" in header and f"{counts['val']:,}" in header
    assert "https://" in header
    assert "tsd ingest " in header and f"--out /data/{name}/ingest" in header
    assert f"--layout {name}" in header and "awk" not in header   # the official files, as downloaded
    assert f"tsd plan manifests/{name}.yaml --dry-run" in header


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_prints_counts_shards_disk_and_gpu_hours(name, tmp_path, capsys):
    path = write_yaml(tmp_path / "job.yaml", localise(raw(name), tmp_path))
    assert cli.main(["plan", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"real/train\s+12\s+1\s+10", out), out   # 12 train images in the stand-in index
    assert re.search(r"real/val\s+4\s+1\s+1", out), out
    assert re.search(r"mix/train\s+12\s+1\s+10", out), out
    assert re.search(r"total\s+28\s+3\s+.*[KM]B", out), out
    assert "at the stock-pipeline speed" in out and "at the fused-worker target" in out
    assert "assumptions:" in out
    assert not (tmp_path / "work").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_works_before_the_data_and_weights_are_downloaded(name, capsys):
    assert cli.main(["plan", str(MANIFESTS / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    counts = raw(name)["expected_counts"]
    assert f"index not found: /data/{name}/ingest/index.parquet" in out
    assert re.search(rf"real/train\s+{counts['train']:,}\s", out) and re.search(rf"real/val\s+{counts['val']:,}\s", out)
    assert f"{counts['classes']} classes" in out and "GPU-hours" in out


def cub_without_index(tmp_path):
    job = load_job(write_yaml(tmp_path / "job.yaml", localise(raw("cub200"), tmp_path)))
    job.data.index = str(tmp_path / "not-ingested-yet" / "index.parquet")
    return job


def test_estimate_before_ingest_uses_the_expected_counts(tmp_path):
    job = cub_without_index(tmp_path)
    est = estimate(job)
    assert est["counts"] == {"real/train": 5994, "real/val": 5794, "mix/train": 5994}
    assert est["shards"] == {"real/train": 24, "real/val": 23, "mix/train": 24}
    assert est["num_classes"] == 200 and "expected_counts" in est["counts_from"]
    # a 256 px JPEG, 10 views × 200 classes of float16 logits: tens of KB per sample
    assert 20e3 < est["bytes_per_sample"]["real/train"] < 80e3
    assert 300e6 < est["disk_total"] < 2e9
    # 5,994 mixes at 2.6 img/s (stock) and 5 img/s (target), plus ~140k teacher passes at 707 img/s
    assert est["gpu_hours"]["stock"] == pytest.approx(5994 / STOCK_IMG_S[8] / 3600 + 0.06, rel=0.1)
    assert est["gpu_hours"]["target"] == pytest.approx(5994 / 5.0 / 3600 + 0.06, rel=0.1)
    text = format_estimate(job, est)
    assert "17,782" in text and "GPU-hours" in text


def test_estimate_scales_with_the_generator_settings(tmp_path):
    job = cub_without_index(tmp_path)
    ldm = estimate(job)["seconds_per_mix"]["target"]   # the recipe's ldm-ddim: S=30 runs 31 UNet steps
    job.generator.scheduler = "ddim"
    base = estimate(job)["seconds_per_mix"]["target"]
    assert ldm / base == pytest.approx(31 / 30, rel=0.01)
    job.generator.steps = 15
    assert estimate(job)["seconds_per_mix"]["target"] == pytest.approx(base / 2, rel=0.1)
    job.generator.steps, job.generator.size = 30, 320
    assert estimate(job)["seconds_per_mix"]["target"] == pytest.approx(base / 4, rel=0.03)


def test_estimate_counts_can_be_given(tmp_path):
    est = estimate(cub_without_index(tmp_path), n_train=1000, n_val=100)
    assert est["counts"] == {"real/train": 1000, "real/val": 100, "mix/train": 1000}
    assert est["num_classes"] == 200 and est["counts_from"].startswith("arguments")


def test_estimate_without_index_or_counts_asks_for_counts(tmp_path):
    job = cub_without_index(tmp_path)
    job.expected_counts = None
    with pytest.raises(ConfigError, match="index not found.*give counts"):
        estimate(job)


def test_compute_model_agrees_with_the_measured_stock_pipeline():
    # 60 UNet passes at the measured UNet throughput + the VAE decode ≈ the stock pipeline at 8 per call
    assert mix_seconds_model(640, 30, True, 8) == pytest.approx(1 / STOCK_IMG_S[8], rel=0.15)


def test_disk_test_image_is_calibrated_on_the_anchor_photo():
    import io

    from PIL import Image

    width, height, quality, anchor_bytes = JPEG_ANCHOR
    buf = io.BytesIO()
    Image.fromarray(natural_test_image(width, height)).save(buf, format="JPEG", quality=quality)
    assert len(buf.getvalue()) == pytest.approx(anchor_bytes, rel=0.15)


def demo_paths(work: str) -> tuple[dict, str]:
    models = {"teacher": f"{work}/models/teacher/model.safetensors",
              "student": f"{work}/models/student/model.safetensors",
              "image-mixer": f"{work}/models/image-mixer"}
    return models, f"{work}/ingest/index.parquet"


def test_demo_manifest_is_what_the_demo_runs(tmp_path):
    from pipeline.demo.runner import SIZES, job_config

    models, index = demo_paths("../demo-out/work")
    assert raw("demo") == job_config(models, index, SIZES["demo"])
    load_job(write_yaml(tmp_path / "job.yaml", localise(raw("demo"), tmp_path)))


def test_train_demo_is_what_the_demo_trains(tmp_path):
    from pipeline.demo.runner import SIZES, train_config
    from trainer.config import TrainConfig

    models, _ = demo_paths("../demo-out/work")
    assert raw("train-demo") == train_config("../demo-out", models, "distill", SIZES["demo"])
    load(TrainConfig, write_yaml(tmp_path / "train.yaml", localise(raw("train-demo"), tmp_path)))


@pytest.mark.parametrize("name,arch", [("train-resnet50", "resnet50"), ("train-vit-s16", "vit_small_patch16_224"),
                                       ("train-vit-s14-dinov2", "vit_small_patch14_dinov2")])
def test_train_configs_validate(name, arch, tmp_path):
    from trainer.config import TrainConfig

    config = load(TrainConfig, write_yaml(tmp_path / "train.yaml", localise(raw(name), tmp_path)))
    assert (config.student.arch, config.student.img_size) == (arch, 224)
    assert (config.runtime.precision, config.runtime.channels_last) == ("bf16", True)
    assert config.releases == ["/data/releases/cub200"]
    assert config.loss.mode == "distill" and config.data.mix_ratio > 0
    header = (MANIFESTS / f"{name}.yaml").read_text()
    assert "--set 'releases=[/data/releases/" in header   # the release is an override


def test_unknown_keys_are_rejected_with_the_key_named(tmp_path):
    from trainer.config import TrainConfig

    data = localise(raw("cub200"), tmp_path)
    data["generator"]["stepz"] = 30
    with pytest.raises(ConfigError, match=r"generator\.stepz: unknown key"):
        load_job(write_yaml(tmp_path / "job.yaml", data))
    train = localise(raw("train-resnet50"), tmp_path)
    train["optim"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key"):
        load(TrainConfig, write_yaml(tmp_path / "train.yaml", train))


def test_rayjob_generate_structure():
    job = raw("rayjob-generate")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    for stage in ("plan", "generate", "release"):  # into object storage
        assert f"tsd {stage} /job/job.yaml --out s3://" in spec["entrypoint"]
    assert "tsd verify s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    head = head_pod["containers"][0]
    assert "tsdistill-worker" in head["image"]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    (group,) = cluster["workerGroupSpecs"]
    worker_pod = group["template"]["spec"]
    worker = worker_pod["containers"][0]
    assert "tsdistill-worker" in worker["image"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "/job" in {m["mountPath"] for m in worker["volumeMounts"]}
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in (head_pod, worker_pod):  # no shared volume: every pod has its own disk and the bucket
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert {"secretRef": {"name": "aws-creds"}} in pod["containers"][0]["envFrom"]


def test_the_rayjob_runs_the_ray_of_pyproject():
    import re
    import tomllib

    pipeline = tomllib.loads((MANIFESTS.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipeline"]
    (pin,) = [re.fullmatch(r"ray(\[[^]]*\])?==([\w.]+)", d.split(";")[0].strip()) for d in pipeline
              if d.startswith("ray")]
    assert pin, "pyproject.toml must pin one Ray version (every node and driver runs the same)"
    assert raw("rayjob-generate")["spec"]["rayClusterSpec"]["rayVersion"] == pin.group(2)


# -- segmentation -------------------------------------------------------------------------------------
SEG_RECIPES = {"ade20k": (20210, 2000, 150), "voc2012": (1464, 1449, 21)}
SEG_TRAIN_CONFIGS = {"train-seg-vit-s14-dinov2": ("vit_small_patch14_dinov2", "linear"),
                     "train-seg-deeplabv3plus-r50": ("resnet50", "DeepLabV3Plus")}


@pytest.mark.parametrize("name", SEG_RECIPES)
def test_segmentation_recipe_validates_and_says_what_is_ours(name, tmp_path):
    data = raw(name)
    job = load_job(write_yaml(tmp_path / "job.yaml", localise(data, tmp_path)))
    assert (job.teacher.arch, job.generator.kind, job.plan.pairing) == ("vit_giant_patch14_dinov2", "image-mixer", "any")
    assert job.teacher.img_size % 14 == 0 and job.expected_counts.task == "segmentation"
    assert (job.expected_counts.train, job.expected_counts.val, job.expected_counts.classes) == SEG_RECIPES[name]
    header = "\n".join(line for line in (MANIFESTS / f"{name}.yaml").read_text().splitlines() if line.startswith("#"))
    assert "our choice" in header and "DINOv2" in header and "http" in header
    assert f"--layout {name}" in header and f"tsd plan manifests/{name}.yaml --dry-run" in header


@pytest.mark.parametrize("name", SEG_RECIPES)
def test_segmentation_dry_run_estimates_dense_outputs_before_download(name, capsys, tmp_path):
    assert cli.main(["plan", str(MANIFESTS / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    train, val, classes = SEG_RECIPES[name]
    assert re.search(rf"real/train\s+{train:,}\s", out) and re.search(rf"real/val\s+{val:,}\s", out)
    assert f"{classes} classes" in out and "GPU-hours" in out
    job = load_job(write_yaml(tmp_path / "job.yaml", localise(raw(name), tmp_path)))
    job.data.index = str(tmp_path / "not-ingested-yet" / "index.parquet")
    est = estimate(job)
    grid = job.teacher.img_size // 14
    # full float16 dense logits per view dominate a sample's bytes
    assert est["bytes_per_sample"]["mix/train"] > job.views.k * classes * grid * grid * 2


@pytest.mark.parametrize("name", SEG_TRAIN_CONFIGS)
def test_segmentation_train_configs_validate(name, tmp_path):
    from trainer.config import TrainConfig

    config = load(TrainConfig, write_yaml(tmp_path / "train.yaml", localise(raw(name), tmp_path)))
    assert config.task == "segmentation"
    assert (config.student.arch, config.student.decoder) == SEG_TRAIN_CONFIGS[name]
    assert config.loss.mode == "distill" and config.data.mix_ratio > 0 and config.runtime.precision == "bf16"


def test_segmentation_demo_manifest_is_what_the_demo_runs(tmp_path):
    from pipeline.demo.segmentation import SEG_SIZES, seg_job_config

    models, index = demo_paths("../demo-out/work")
    assert raw("demo-segmentation") == seg_job_config(models, index, SEG_SIZES["demo"])
