"""The small demo job turned text-prompted (generator.kind sd-text) on a tiny StableDiffusionPipeline folder."""
from pathlib import Path

from pipeline.config import load_job
from pipeline.testing import tiny

TEMPLATES = ["a photo of a {class}.", "a blurry photo of a {class}."]


def sd_text_job(job_path: str, models: Path, pool_size: int = 5, class_law: str = "frequency"):
    folder = tiny.build_sd_text(models, tiny.TinySizes())
    return load_job(job_path, {
        "generator": {"kind": "sd-text", "path": str(folder), "prompts": TEMPLATES, "steps": 2, "batch_size": 3},
        "plan": {"pool_size": pool_size, "class_law": class_law}})
