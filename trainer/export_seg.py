"""`tsd export` of a segmentation student: its library's own folder, and ONNX with a dynamic batch
and image size; `load_export` reads the folder back (`tsd predict` takes it).

- smp students (FPN, DeepLabV3Plus, ...): smp's `save_pretrained` folder (config.json,
  model.safetensors, smp's README.md); `segmentation_models_pytorch.from_pretrained(DIR)` loads it back.
- 'linear' students (a timm ViT + DINOv2's linear head): the backbone as a timm folder (config.json
  with num_classes 0, model.safetensors: `timm.create_model("local-dir:DIR", pretrained=True)`)
  and the head beside it in `dense_head.safetensors`, the state dict of
  `pipeline.contract.dense.make_dense_head(num_features, num_classes)` (BatchNorm2d `0.*`, 1x1 conv
  `1.*`) applied to `contract.dense.patch_grid(backbone, x)`.
Both add `tsdistill.json`: task, arch, decoder, classes, preprocessing (input size, mean, std) and
the run's validation metrics. `--onnx` writes `model.onnx`: input `pixel_values` [batch, 3, H, W]
with batch, H and W dynamic (H and W multiples of `size_multiple` in tsdistill.json: the patch size of
a ViT, the output stride of an smp encoder), output `logits` [batch, C, H, W] at the input size (the
model's logits upsampled bilinearly, `contract.dense.upsample_logits`); checked against torch with
onnxruntime at two sizes and batches.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from pipeline.contract.dense import upsample_logits
from pipeline.contract.errors import UserError, first_line
from pipeline.contract.files import atomic_write

from .students import LinearSegmenter

ONNX = "model.onnx"
HEAD = "dense_head.safetensors"
INFO = "tsdistill.json"
TOLERANCE = 1e-4


class AtInputSize(torch.nn.Module):
    """A segmentation student whose logits are brought to its input's size: what the ONNX file computes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_logits(self.model(x), x.shape[-2:])


def size_multiple(model: torch.nn.Module) -> int:
    """The step an input side must be a multiple of: a ViT's patch size, a CNN encoder's output stride."""
    if isinstance(model, LinearSegmenter):
        patch = getattr(getattr(model.backbone, "patch_embed", None), "patch_size", None)
        if patch is not None:
            return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        return int(model.backbone.feature_info[-1]["reduction"])
    return int(model.encoder.output_stride)


def export_segmentation(model, info: dict, metrics: dict | None, out: Path, *, prep: dict,
                        backbone_config: dict | None, weights_name: str, onnx: bool = False) -> dict:
    """Write the export folder of a segmentation student; returns {files, checks}. `prep`: its
    preprocessing (`export.student_preprocessing`); `backbone_config`: a linear student's backbone as
    timm's config.json has it (`export.timm_config`, num_classes 0); `weights_name`: timm's weight file name."""
    from safetensors.torch import save

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    step = size_multiple(model)
    if isinstance(model, LinearSegmenter):
        backbone = model.backbone
        config = dict(backbone_config)
        config["model_args"] = dict(info.get("model_kwargs") or {})
        if getattr(backbone, "dynamic_img_size", False):
            config["model_args"]["dynamic_img_size"] = True
        config.pop("label_names", None)
        atomic_write(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        atomic_write(out / weights_name, save({k: v.contiguous() for k, v in backbone.state_dict().items()}))
        atomic_write(out / HEAD, save({k: v.contiguous() for k, v in model.head.state_dict().items()}))
        files = ["config.json", weights_name, HEAD]
    else:
        model.save_pretrained(str(out))
        files = sorted(p.name for p in out.iterdir() if p.name in ("config.json", weights_name, "README.md"))
    summary = {"task": "segmentation", "arch": info["arch"], "decoder": info.get("decoder", "linear"),
               "num_classes": info["num_classes"], "classes": info["classes"], "size_multiple": step,
               "input_size": prep["input_size"], "mean": prep["mean"], "std": prep["std"],
               "val": {k: v for k, v in ((metrics or {}).get("val") or {}).items()
                       if k in ("miou", "pixel_acc", "agreement", "per_class_iou", "teacher_miou", "n")}}
    atomic_write(out / INFO, (json.dumps(summary, indent=1) + "\n").encode())
    files.append(INFO)
    checks = {}
    if onnx:
        checks["onnx"] = export_onnx(AtInputSize(model).eval(), prep["input_size"][-1], step, out / ONNX)
        files.append(ONNX)
    return {"files": files, "checks": checks}


def load_export(path) -> tuple[torch.nn.Module, dict]:
    """A segmentation export folder read back the way its users read it (smp's `from_pretrained`; timm's
    `local-dir:` plus the dense head): (model in eval mode, `tsdistill.json` with `img_size` added)."""
    path = Path(path)
    try:
        info = json.loads((path / INFO).read_text())
        info["img_size"] = int(info["input_size"][-1])
        missing = [k for k in ("classes", "mean", "std", "decoder") if k not in info]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"{path / INFO}: not a segmentation export ({first_line(e)})") from None
    if missing:
        raise UserError(f"{path / INFO}: not a segmentation export (missing {', '.join(missing)})")
    num_classes = len(info["classes"])
    linear = info["decoder"] == "linear"
    for name in ("config.json", HEAD) if linear else ("config.json",):
        if not (path / name).is_file():   # smp would look for a missing one on the Hub
            raise UserError(f"{path / name}: missing from the export folder (written by `tsd export`)")
    if linear:
        import timm
        from safetensors.torch import load_file

        try:
            model = LinearSegmenter(timm.create_model(f"local-dir:{path}", pretrained=True), num_classes)
            model.head.load_state_dict(load_file(str(path / HEAD)))
        except (RuntimeError, OSError, ValueError) as e:
            raise UserError(f"{path}: the export does not load ({first_line(e)})") from None
    else:
        import segmentation_models_pytorch as smp

        try:
            model = smp.from_pretrained(str(path))
        except (RuntimeError, OSError, ValueError, TypeError) as e:
            raise UserError(f"{path}: the smp export does not load ({first_line(e)})") from None
        classes = getattr(model.segmentation_head[0], "out_channels", num_classes)
        if classes != num_classes:
            raise UserError(f"{path}: the model has {classes} classes, {INFO} names {num_classes}")
    return model.eval(), info


def check_sizes(img_size: int, step: int) -> list[tuple[int, int, int]]:
    """(batch, H, W) the ONNX file is checked at: the training size, and a larger, non-square one."""
    return [(3, img_size, img_size), (1, img_size + step, img_size + 2 * step)]


def export_onnx(model: torch.nn.Module, img_size: int, step: int, path: Path) -> float:
    """model.onnx with dynamic batch, height and width (multiples of `step`); the max |onnxruntime - torch|."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError as e:
        raise UserError(f"--onnx needs onnx, onnxscript and onnxruntime ({e}): pip install 'tsdistill[export]'") \
            from None
    # the example input is 2 steps a side at least: at 1, torch.export would fix a side of size 1
    example = max(img_size // step, 2) * step
    h, w = (torch.export.Dim(name, min=2, max=1024) for name in ("height", "width"))
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, example, example),), str(tmp), dynamo=True,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch"), 2: step * h, 3: step * w},),
                          external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, height, width in check_sizes(example, step):
            x = torch.randn(n, 3, height, width, generator=generator)
            got = torch.as_tensor(session.run(None, {"pixel_values": x.numpy()})[0])
            want = model(x)
            if got.shape != want.shape:
                tmp.unlink(missing_ok=True)
                raise UserError(f"exported model gives {tuple(got.shape)} on {tuple(x.shape)}, torch {tuple(want.shape)}")
            worst = max(worst, float((got - want).abs().max()))
    if not worst <= TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise UserError(f"onnxruntime differs from torch by {worst:.3g} (more than {TOLERANCE:g}) on the check inputs")
    tmp.replace(path)
    return worst
