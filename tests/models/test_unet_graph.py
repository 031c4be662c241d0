"""The generator compiles its UNet with fullgraph=True (a graph break would fail loudly instead of
splitting the graph silently): TorchDynamo traces the UNet, called as the denoising loop calls it
(a 0-d timestep tensor, ImageMixer's 5 tokens), into one graph with no break. Traced on the CPU:
no compile, no GPU."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from pipeline.testing import tiny  # noqa: E402


def test_the_unet_traces_into_one_graph(tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny.build_image_mixer(tmp_path, tiny.TinySizes()) / "unet").eval()
    x = torch.randn(4, unet.config.in_channels, 8, 8)
    steps = torch.tensor([991, 958])
    context = torch.randn(4, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        explained = torch._dynamo.explain(unet)(x, steps[0], encoder_hidden_states=context, class_labels=None)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
