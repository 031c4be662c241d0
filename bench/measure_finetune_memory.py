"""Development measurement, not a test: the memory of a full teacher finetune (probe.mode: finetune,
probe.blocks: all), and what it comes to at DINOv2 ViT-g/14 size.

`python bench/measure_finetune_memory.py [ARCH ...]` runs, for each arch in a subprocess of its own,
two steps of the project's finetune (stages.probe_finetune `finetune_groups` + `_finetune_step`: AdamW
over every parameter, layer-wise decay) at batch 1, 224 px, fp32 on the CPU, and prints the peak
resident memory it added, beside the arithmetic: fp32 weights + gradients + AdamW's two moments = 16
bytes per trained parameter, before activations. `--segmentation` measures the segmentation finetune
instead: the dense head (150 classes, ADE20K's) on the patch grid, pixel cross-entropy on a 224 px
mask, the last 2 blocks (`probe.blocks`' default) and then every block trained. The parameter count comes from the model built on the meta
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


def parameters(arch: str, blocks: int | str = "all") -> int:
    """The backbone parameters a finetune of `blocks` trains (the model built on the meta device)."""
    import timm
    import torch

    from pipeline.models.teacher import tuned_parts

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    if blocks == "all":
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for _, _, part in tuned_parts(model, blocks) for p in part.parameters())


def one(arch: str, task: str = "classification", blocks: int | str = "all") -> dict:
    """Peak RSS added by building the model and two finetune steps (run in a fresh process)."""
    import timm
    import torch

    from pipeline.models.teacher import DENSE_LINEAR, head_in_dim, make_head
    from pipeline.stages.probe_dense import pixel_loss
    from pipeline.stages.probe_features import label_loss
    from pipeline.stages.probe_finetune import _finetune_step, finetune_groups

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224).eval().requires_grad_(False)
    if task == "segmentation":
        kind, loss, y = DENSE_LINEAR, pixel_loss, torch.randint(0, 150, (1, 224, 224), dtype=torch.uint8)
    else:
        kind, loss, y = "linear", label_loss, torch.tensor([3])
    head = make_head(kind, head_in_dim(backbone, kind), 150 if task == "segmentation" else 200)
    job = SimpleNamespace(probe=SimpleNamespace(blocks=blocks, layer_decay=0.75, weight_decay=1e-4, lr=1e-5),
                          teacher=SimpleNamespace(dtype="fp32"))
    groups, names = finetune_groups(job, backbone, head)
    opt = torch.optim.AdamW(groups, lr=1e-5)
    x = torch.randn(1, 3, 224, 224)
    for step in range(2):
        _finetune_step(job, backbone, head, opt, x, y, step, 2, 0, kind, loss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trained = sum(p.numel() for g in groups for p in g["params"])
    return {"arch": arch, "parameters": trained, "peak_added_bytes": peak - base,
            "arithmetic_bytes": BYTES_PER_PARAM * trained, "tuned": len(names),
            "all_parameters": sum(p.numel() for p in backbone.parameters())}


def main(args: list[str]) -> None:
    if args and args[0] == "--one":
        blocks = args[3] if args[3] == "all" else int(args[3])
        print(json.dumps(one(args[1], args[2], blocks)))
        return
    task = "segmentation" if "--segmentation" in args else "classification"
    archs = [a for a in args if a != "--segmentation"] or ARCHS
    for arch in archs:
        for blocks in ([2, "all"] if task == "segmentation" else ["all"]):
            out = subprocess.run([sys.executable, __file__, "--one", arch, task, str(blocks)], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{arch} ({task}, blocks {blocks}): {r['parameters'] / 1e6:.1f} M parameters trained (head "
                  f"included; the backbone has {r['all_parameters'] / 1e6:.1f} M); peak added "
                  f"{r['peak_added_bytes'] / 2**30:.2f} GiB at batch 1, 224 px, fp32 (the trained part's "
                  f"weights + grads + AdamW: {r['arithmetic_bytes'] / 2**30:.2f} GiB)")
    if task == "segmentation":
        n = parameters(GIANT, 2)
        print(f"{GIANT}: the last 2 blocks and the norm, {n / 1e6:.0f} M parameters: weights + grads + AdamW = "
              f"{BYTES_PER_PARAM * n / 2**30:.2f} GiB before activations")
    n = parameters(GIANT)
    print(f"{GIANT}: {n / 1e6:.0f} M parameters: weights + grads + AdamW = {BYTES_PER_PARAM * n / 2**30:.1f} GiB "
          f"before activations (fp32; bf16 autocast keeps fp32 master weights, so the same)")


if __name__ == "__main__":
    main(sys.argv[1:])
