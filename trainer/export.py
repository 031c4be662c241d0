"""`tsd export RUN --out DIR [--onnx] [--torchscript]`: a trained student as a standard artifact.

DIR is a timm model folder, the layout of a timm model on the Hugging Face Hub:
- `config.json`: architecture, num_classes, label_names, model_args, and a pretrained_cfg with the
  input size, mean/std, crop_pct, crop_mode and interpolation the student was evaluated with
  (student.json; see `trainer.students.preprocessing`);
- `model.safetensors`: the trained weights, classifier included;
- `README.md`: a model card (Hugging Face front matter: library_name timm, base_model, datasets,
  metrics from the run's metrics.json).
`timm.create_model("local-dir:DIR", pretrained=True)` then builds the student with its trained
classifier: num_classes comes from config.json, so timm keeps the head instead of dropping it.
`--onnx` adds `model.onnx` (torch.export-based exporter, dynamic batch), checked against torch with
onnxruntime at export; `--torchscript` adds `model.torchscript.pt`, checked the same way.

On the trainer's side (torch, timm, safetensors; onnx/onnxruntime from the `export` extra).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path

import yaml

from pipeline.contract.errors import UserError
from pipeline.contract.files import atomic_write

from pipeline.contract.tasks import SEGMENTATION

from .export_seg import export_segmentation
from .runfiles import METRICS, STUDENT_INFO
from .students import INTERPOLATION, LinearSegmenter, init_weights, load_student, preprocessing, release_eval_crop

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
TORCHSCRIPT = "model.torchscript.pt"
CARD = "README.md"
TOLERANCE = 1e-4          # max |runtime - torch| accepted on the check batch (float32 logits)
CHECK_BATCHES = (3, 1)    # two batch sizes: the exported graph must not have fixed the batch
# pretrained_cfg keys that name where the architecture's default weights come from or how they
# were evaluated: they do not describe the exported weights
SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "test_input_size",
               "test_crop_pct", "test_pool_size", "label_names", "label_descriptions", "label_offset",
               "origin_url", "paper_name", "paper_ids", "notes", "description", "tag", "license")


def read_metrics(run: Path) -> dict | None:
    """metrics.json of a finished run folder (None when absent)."""
    if not (run / STUDENT_INFO).is_file():
        raise UserError(f"{run}: not a finished run folder (no {STUDENT_INFO}; `tsd train` writes it at the end)")
    return json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else None


def release_manifests(info: dict) -> list[dict]:
    """The manifests of the releases the student was trained on, those still readable."""
    from pipeline.contract.manifest import read_manifest

    found = []
    for root in (info.get("config") or {}).get("releases") or ():
        try:
            found.append(read_manifest(root))
        except (UserError, OSError):
            continue
    return found


def student_preprocessing(info: dict, manifests: list[dict]) -> dict:
    """input_size, mean, std, crop_pct, crop_mode, interpolation: from student.json, or (runs made
    before student.json recorded them) from the releases' eval crop."""
    if "crop_pct" in info:
        return {k: info[k] for k in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")}
    if not manifests:
        raise UserError(f"{STUDENT_INFO} has no crop_pct and none of the run's releases can be read "
                        "to find the eval crop it was validated with")
    return preprocessing(info["img_size"], info["mean"], info["std"], release_eval_crop(manifests))


def timm_config(model, info: dict, prep: dict) -> dict:
    """config.json as timm's `local-dir:` / `hf-hub:` loader reads it (timm.models._hub)."""
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in SOURCE_KEYS and v is not None}
    if tuple(cfg.get("input_size", ())[1:]) != tuple(prep["input_size"][1:]):
        cfg.pop("pool_size", None)    # the default cfg's pool size is for its own input size
    cfg.update(prep, architecture=info["arch"], num_classes=info["num_classes"], custom_load=False)
    config = {"architecture": info["arch"], "num_classes": info["num_classes"],
              "num_features": int(model.num_features), "label_names": list(info["classes"]),
              "pretrained_cfg": cfg}
    if info.get("model_kwargs"):
        config["model_args"] = dict(info["model_kwargs"])
    return config


def start_line(info: dict, base: str | None) -> str:
    """How the card says what the student started from: random init, or its weight file and sha256."""
    start = info.get("init_weights")
    weights = ((info.get("config") or {}).get("student") or {}).get("weights")
    if start is None and weights:   # a run from before student.json recorded it: the file, if still there
        try:
            start = init_weights(weights, ((info.get("config") or {}).get("student") or {}).get("weights_sha256"))
        except (UserError, OSError):
            start = {"file": weights, "sha256": None}
    if not start:
        return "random initialisation"
    sha = f"sha256 `{start['sha256']}`" if start.get("sha256") else "sha256 unknown (the file is no longer readable)"
    named = f", `{base}` according to the exporter (--base-model)" if base else ""
    return f"the weight file `{Path(start['file']).name}` ({sha}{named})"


def check_input(prep: dict, batch: int):
    import torch

    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, *prep["input_size"], generator=generator)   # normalised images are ~N(0, 1)


def max_difference(run_exported, model, prep: dict) -> float:
    """Largest |exported - torch| over the check batches."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for batch in CHECK_BATCHES:
            x = check_input(prep, batch)
            got = torch.as_tensor(run_exported(x))
            want = model(x)
            if got.shape != want.shape:
                raise UserError(f"exported model gives {tuple(got.shape)} on a batch of {batch}, torch {tuple(want.shape)}")
            worst = max(worst, float((got - want).abs().max()))
    return worst


def export_onnx(model, prep: dict, path: Path) -> float:
    """model.onnx with a dynamic batch; returns the checked max difference to torch."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError as e:
        raise UserError(f"--onnx needs onnx, onnxscript and onnxruntime ({e}): pip install 'tsdistill[export]'") \
            from None
    import torch

    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (check_input(prep, CHECK_BATCHES[0]),), str(tmp), dynamo=True,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                          verbose=False)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    diff = max_difference(lambda x: session.run(None, {"pixel_values": x.numpy()})[0], model, prep)
    _check(diff, "onnxruntime", tmp)
    tmp.replace(path)
    return diff


def export_torchscript(model, prep: dict, path: Path) -> float:
    """model.torchscript.pt (scripted; traced when the model does not script); returns the checked difference."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch marks TorchScript deprecated; it is what was asked for
        try:
            scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - some architectures do not script; a trace of eval mode does
            scripted = torch.jit.trace(model, check_input(prep, CHECK_BATCHES[0]))
        tmp = path.with_name(path.name + ".tmp")
        scripted.save(str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    diff = max_difference(loaded, model, prep)
    _check(diff, "TorchScript", tmp)
    tmp.replace(path)
    return diff


def _check(diff: float, what: str, tmp: Path) -> None:
    if not diff <= TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{what} differs from torch by {diff:.3g} (more than {TOLERANCE:g}) on the check batch")


def model_card(info: dict, metrics: dict | None, manifests: list[dict], config: dict, base: str | None,
               run: Path, files: dict) -> str:
    """README.md in the Hugging Face model-card style, front matter included."""
    val = (metrics or {}).get("val") or {}
    names = [m["name"] for m in manifests] or [Path(r).name for r in (info.get("config") or {}).get("releases", [])]
    mode = ((info.get("config") or {}).get("loss") or {}).get("mode", "distill")
    front = {"library_name": "timm", "pipeline_tag": "image-classification",
             "tags": ["image-classification", "timm", "knowledge-distillation", "tsdistill"]}
    license_ = next((m["config"]["release"].get("license") for m in manifests
                     if (m.get("config") or {}).get("release")), None)
    if license_:
        front["license"] = license_
    if base:
        front["base_model"] = base
    front["datasets"] = names
    results = [("accuracy", "top1", "student val top-1"), ("accuracy", "teacher_top1", "teacher val top-1"),
               ("agreement", "agreement", "student-teacher top-1 agreement")]
    if val:
        front["metrics"] = ["accuracy"]
        front["model-index"] = [{"name": run.name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": names[0] if names else "release", "type": names[0] if names else "release",
                        "split": "validation"},
            "metrics": [{"type": kind, "value": round(float(val[key]), 4), "name": label}
                        for kind, key, label in results if val.get(key) is not None]}]}]
    pc = config["pretrained_cfg"]
    size = pc["input_size"][-1]
    teacher = (manifests[0].get("teacher") or {}).get("arch") if manifests else None
    how = {"distill": "distilled from a probed teacher (KD on real and SD-Mixup images, CE on real labels)",
           "kd-real": "distilled from a probed teacher on real images only",
           "finetune": "finetuned on the real labels (the baseline, no teacher)"}.get(mode, mode)
    table = "\n".join(f"| {label} | {val[key]:.4f} |" for _, key, label in results if val.get(key) is not None)
    weights_line = start_line(info, base)
    artifacts = "\n".join(f"- `{name}`: {what}" for name, what in files.items())
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()}
---

# {run.name}: `{info['arch']}` for {", ".join(names) or "a tsdistill release"}

A `{info['arch']}` student with {info['num_classes']} classes, {how}, with tsdistill
(task-specific distillation after Marrie et al., TMLR 2024){f"; teacher `{teacher}`" if teacher else ""}.
It started from {weights_line}.

## Results on the release's validation split

| metric | value |
| --- | --- |
{table or "| (no metrics.json in the run) | |"}

Agreement: the share of validation images on which the student's top-1 class is the teacher's.

## Use

```python
import timm, torch
model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
logits = model(transform(image).unsqueeze(0))          # image: a PIL RGB image
label = model.pretrained_cfg["label_names"][logits.argmax(1).item()]
```

Preprocessing as in training: input {size}×{size}, `crop_pct` {pc['crop_pct']} (centre crop),
`{INTERPOLATION}` interpolation, mean {pc['mean']}, std {pc['std']}. The trainer validated on the
centred square of {pc['crop_pct']} × the short side, resized to {size} px with bilinear antialiased
interpolation; timm's eval transform above takes the same square (resize, then crop), up to rounding.

## Files

{artifacts}
"""


def export(run, out, *, onnx: bool = False, torchscript: bool = False, base: str | None = None) -> dict:
    """Write the export folder; returns {files, checks: {onnx/torchscript: max difference}}."""
    from safetensors.torch import save

    run = Path(run)
    metrics = read_metrics(run)
    model, info = load_student(run)
    model.eval()
    if info.get("task") == SEGMENTATION:
        if torchscript:
            raise UserError("--torchscript: a segmentation student exports as its library's folder and ONNX "
                            "(--onnx); TorchScript is for classification students")
        if Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"{out}: exists and is not a folder")
        prep = student_preprocessing(info, [])
        backbone = timm_config(model.backbone, dict(info, num_classes=0), prep) \
            if isinstance(model, LinearSegmenter) else None
        return export_segmentation(model, info, metrics, Path(out), prep=prep, backbone_config=backbone,
                                   weights_name=WEIGHTS, onnx=onnx)
    manifests = release_manifests(info)
    prep = student_preprocessing(info, manifests)
    config = timm_config(model, info, prep)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state)
    atomic_write(out / WEIGHTS, weights)
    atomic_write(out / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    files = {CONFIG: "timm config (architecture, classes, preprocessing)",
             WEIGHTS: f"weights, sha256 {hashlib.sha256(weights).hexdigest()}"}
    checks = {}
    if onnx:
        checks["onnx"] = export_onnx(model, prep, out / ONNX)
        files[ONNX] = f"ONNX, input `pixel_values` [batch, {', '.join(map(str, prep['input_size']))}], output " \
                      f"`logits`; onnxruntime matched torch to {checks['onnx']:.1e}"
    if torchscript:
        checks["torchscript"] = export_torchscript(model, prep, out / TORCHSCRIPT)
        files[TORCHSCRIPT] = f"TorchScript (`torch.jit.load`); matched torch to {checks['torchscript']:.1e}"
    atomic_write(out / CARD, model_card(info, metrics, manifests, config, base or None, run,
                                        files).encode())
    return {"files": [CONFIG, WEIGHTS, *(f for f in (ONNX, TORCHSCRIPT) if f in files), CARD], "checks": checks}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a finished run folder (student.safetensors, student.json, metrics.json)")
    parser.add_argument("--out", required=True, help="export folder (created; files in it are replaced)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (dynamic batch), checked "
                        "against torch with onnxruntime")
    parser.add_argument("--torchscript", action="store_true", help="also write model.torchscript.pt, checked")
    parser.add_argument("--base-model", default=None, metavar="HUB_ID",
                        help="the model card's base_model: the Hub id of the weights the run started from, when you "
                             "know its weight file is that model's (default: none; the card names the file's sha256)")


def run(args: argparse.Namespace) -> int:
    result = export(args.run, args.out, onnx=args.onnx, torchscript=args.torchscript, base=args.base_model)
    checks = "".join(f"; {k}: max |diff| {v:.1e}" for k, v in result["checks"].items())
    print(f"export: {args.out}: {', '.join(result['files'])}{checks}")
    return 0
