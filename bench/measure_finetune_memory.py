"""Development measurement, not a test: the memory of a full teacher finetune (probe.mode: finetune,
probe.blocks: all), and what it comes to at DINOv2 ViT-g/14 size.

`python bench/measure_finetune_memory.py [ARCH ...]` runs, for each arch in a subprocess of its own,
two steps of the project's finetune (stages.probe `finetune_groups` + `_finetune_step`: AdamW over
every parameter, layer-wise decay) at batch 1, 224 px, fp32 on the CPU, and prints the peak resident
memory it added, beside the arithmetic: fp32 weights + gradients + AdamW's two moments = 16 bytes
per parameter, before activations. The parameter count comes from the model built on the meta
device, so the arithmetic covers ViT-g/14 without building it. Default archs: ViT-S/14 and ViT-B/14
(a ViT-g/14 step added 18.6 GiB on a 24 GiB machine: name it only on a machine that has the memory).
"""
import json
import resource
import subprocess
import sys
from types import SimpleNamespace

BYTES_PER_PARAM = 4 + 4 + 8    # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
ARCHS = ["vit_small_patch14_dinov2", "vit_base_patch14_dinov2"]
GIANT = "vit_giant_patch14_dinov2"


def parameters(arch: str) -> int:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    return sum(p.numel() for p in model.parameters())


def one(arch: str) -> dict:
    """Peak RSS added by building the model and two full-finetune steps (run in a fresh process)."""
    import timm
    import torch

    from pipeline.models.teacher import backbone_features
    from pipeline.stages.probe import _finetune_step, finetune_groups

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    dim = backbone_features(backbone, torch.zeros(1, 3, 224, 224)).shape[1]
    head = torch.nn.Linear(dim, 200)
    job = SimpleNamespace(probe=SimpleNamespace(blocks="all", layer_decay=0.75, weight_decay=1e-4, lr=1e-5),
                          teacher=SimpleNamespace(dtype="fp32"))
    groups, names = finetune_groups(job, backbone, head)
    opt = torch.optim.AdamW(groups, lr=1e-5)
    x, y = torch.randn(1, 3, 224, 224), torch.tensor([3])
    for step in range(2):
        _finetune_step(job, backbone, head, opt, x, y, step, 2, 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trained = sum(p.numel() for g in groups for p in g["params"])
    return {"arch": arch, "parameters": trained, "peak_added_bytes": peak - base,
            "arithmetic_bytes": BYTES_PER_PARAM * trained, "tuned": len(names)}


def main(archs: list[str]) -> None:
    if archs and archs[0] == "--one":
        print(json.dumps(one(archs[1])))
        return
    for arch in archs or ARCHS:
        out = subprocess.run([sys.executable, __file__, "--one", arch], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{arch}: {r['parameters'] / 1e6:.1f} M parameters trained; peak added {r['peak_added_bytes'] / 2**30:.2f} "
              f"GiB at batch 1, 224 px, fp32 (arithmetic, weights + grads + AdamW: "
              f"{r['arithmetic_bytes'] / 2**30:.2f} GiB)")
    n = parameters(GIANT)
    print(f"{GIANT}: {n / 1e6:.0f} M parameters: weights + grads + AdamW = {BYTES_PER_PARAM * n / 2**30:.1f} GiB "
          f"before activations (fp32; bf16 autocast keeps fp32 master weights, so the same)")


if __name__ == "__main__":
    main(sys.argv[1:])
