"""No host sync in the denoising loop or the trainer step: one `mix()` (ImageMixer, the recipes'
ldm-ddim and diffusers' ddim, with and without guidance) and one trainer step run under a
TorchFunctionMode that counts every `.item()`, `int()`, `bool()`, `float()`, `.cpu()`,
`.tolist()`, `.numpy()` and `.nonzero()` on a tensor made inside the loop body (`SyncCounter`).
On a GPU each would stall the host until the device drained its queue."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline.bench.syncs import SyncCounter  # noqa: E402
from pipeline.config import GeneratorConfig  # noqa: E402
from pipeline.testing import tiny  # noqa: E402
from pipeline.models.generators import DiffusionGenerator  # noqa: E402
from pipeline.models.build import build_generator  # noqa: E402
from trainer.data import model_inputs  # noqa: E402
from trainer.loop import train_step  # noqa: E402
from pipeline.contract.tasks import IGNORE_INDEX  # noqa: E402
from trainer.students import Distillable, build_seg_student, build_student, mean_std  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mixer_folder(tmp_path_factory):
    return tiny.build_image_mixer(tmp_path_factory.mktemp("sync-models"), tiny.TinySizes())


def parents(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 40 + 7 * i, 50), generator=g, dtype=torch.uint8) for i in range(n)]


@pytest.mark.parametrize("scheduler,guidance", [("ldm-ddim", 3.0), ("ldm-ddim", 1.0), ("ddim", 3.0)])
def test_the_denoising_loop_reads_nothing_back_from_the_device(mixer_folder, scheduler, guidance):
    gen = build_generator(GeneratorConfig(kind="image-mixer", path=str(mixer_folder), size=64, steps=2,
                                          guidance=guidance, batch_size=2, scheduler=scheduler), CPU)
    with SyncCounter(inside=[DiffusionGenerator.denoising_loop]) as loop, SyncCounter() as whole:
        images, failures = gen.mix(parents(2, 1), parents(2, 2), [0.5, 0.3], [1, 2])
    assert images.shape == (2, 3, 64, 64) and len(failures) == 2
    assert loop.table() == []
    # the counter sees the reads around the loop (the decode's one copy of the batch to the host)
    assert any(row["line"].startswith("pipeline/models/generators.py") for row in whole.table())


def steps_read_nothing_back(net, batch: dict, size: int, feature_weight: float) -> torch.Tensor:
    """Two trainer steps (the second with the optimizer's state made) under the counter, each with no
    host sync; the last step's per-sample losses."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    mean, std = mean_std(net.student)
    for _ in range(2):
        with SyncCounter(inside=[train_step, model_inputs]) as counter:
            x = model_inputs(batch, CPU, size, mean, std)
            losses = train_step(net, optimizer, x, batch, CPU, alpha=0.5, temperature=2.0,
                                feature_weight=feature_weight, precision="bf16", clip_grad=1.0)
        assert counter.table() == []
    return losses


def test_a_trainer_step_reads_nothing_back_from_the_device():
    torch.manual_seed(0)
    net = Distillable(build_student("resnet10t", 4), 8)
    batch = {"pixels": torch.rand(4, 3, 32, 32), "logits": torch.randn(4, 4), "label": torch.tensor([0, 1, -1, -1]),
             "is_real": torch.tensor([True, True, False, False]), "features": torch.randn(4, 8)}
    before = [p.detach().clone() for p in net.parameters()]
    losses = steps_read_nothing_back(net, batch, 32, feature_weight=1.0)
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_segmentation_step_reads_nothing_back_from_the_device():
    """The same with a segmentation student: masks (mixes all ignored) and dense teacher logits."""
    torch.manual_seed(0)
    student = build_seg_student("vit_small_patch14_dinov2", 3, "linear",
                                model_kwargs={"img_size": 28, "depth": 1, "embed_dim": 48, "num_heads": 2}, img_size=28)
    mask = torch.randint(0, 3, (4, 28, 28), dtype=torch.uint8)
    mask[2:] = IGNORE_INDEX
    batch = {"pixels": torch.rand(4, 3, 28, 28), "teacher": torch.randn(4, 3, 8, 8), "mask": mask,
             "is_real": torch.tensor([True, True, False, False]), "label": torch.full((4,), -1)}
    losses = steps_read_nothing_back(Distillable(student), batch, 28, feature_weight=0.0)
    assert losses.shape == (4,) and torch.isfinite(losses).all()


def test_the_counter_counts_reads_inside_the_loop_only():
    """It can fail: a read inside the named function is counted at its line, one outside is not."""
    def loop(x):
        return [float(v.sum()) for v in x] + [x.tolist()]

    x = torch.ones(3, 2)
    with SyncCounter(inside=[loop]) as counter:
        int(x[0, 0])      # outside the loop
        loop(x)
    calls = {(row["call"], row["count"]) for row in counter.table()}
    assert calls == {("__float__", 3), ("tolist", 1)}
    assert all(row["line"].startswith("tests/models/test_host_syncs.py:") for row in counter.table())
