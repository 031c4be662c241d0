"""Under the tested stack (constraints.txt) the generator's transformers and diffusers classes are
the real ones: transformers 5 turns its torch classes into dummies when it thinks torch is missing
(below torch 2.6), and the dummy only fails when it is called, deep in a worker."""
import importlib.metadata
import re

import torch
from paths import REPO


def test_the_generators_classes_are_real():
    import diffusers
    import transformers
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    assert transformers.utils.is_torch_available()
    for cls in (transformers.CLIPVisionModelWithProjection, transformers.CLIPTextModel,
                diffusers.UNet2DConditionModel, diffusers.AutoencoderKL, StableUnCLIPImageNormalizer):
        assert type(cls).__name__ != "DummyObject", f"{cls.__module__}.{cls.__name__} is a dummy"
        assert issubclass(cls, torch.nn.Module), cls
    for cls in (transformers.CLIPTokenizer, transformers.CLIPImageProcessor, diffusers.DDIMScheduler,
                diffusers.StableDiffusionImageVariationPipeline):
        assert type(cls).__name__ != "DummyObject", f"{cls.__module__}.{cls.__name__} is a dummy"


def test_this_environment_is_the_tested_stack():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for package in ("torch", "torchvision", "transformers", "diffusers", "timm", "huggingface_hub", "webdataset"):
        installed = importlib.metadata.version(package)
        assert re.sub(r"\+.*", "", installed) == pins[package], \
            f"{package} {installed}, constraints.txt {pins[package]}"
