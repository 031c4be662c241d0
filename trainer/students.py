"""Students: any timm model, sized to the release's classes, from local weights or random init.

Weights come from a local file only (nothing is downloaded): timm loads it through
`pretrained_cfg_overlay=dict(file=...)`, and, because `num_classes` is passed, drops the file's
classifier when its class count differs and initialises a fresh head for the release's classes.

Segmentation students (`build_seg_student`, one registry keyed by `student.decoder`) output dense
logits [N, C, h, w] at their own resolution:
- 'linear': a timm backbone (a DINOv2 ViT-S/14: `vit_small_patch14_dinov2`) and the contract's dense
  head (`contract.dense.make_dense_head`: BatchNorm + 1x1 conv) on its patch grid, the teacher's own
  shape; ViTs are built with `dynamic_img_size` so one model takes any multiple of its patch size;
- any segmentation_models_pytorch architecture (FPN, DeepLabV3Plus, Unet, ...) on the timm encoder
  `arch` (smp's `tu-<arch>`), logits at the input size.
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save
from timm.data import resolve_model_data_config
from torch import nn

from pipeline.contract.configlib import ConfigError
from pipeline.contract.errors import UserError, first_line
from pipeline.contract import storage
from pipeline.contract.files import atomic_write
from pipeline.contract.ids import sha256_file
from pipeline.contract.dense import make_dense_head, patch_grid
from pipeline.contract.logs import get_logger
from pipeline.contract.tasks import SEGMENTATION
from pipeline.contract.views import Views
from pipeline.contract.weights import weights_problem

from .runfiles import STUDENT_INFO, STUDENT_WEIGHTS

log = get_logger(__name__)


def build_student(arch: str, num_classes: int, weights: str | None = None, drop_path: float = 0.0,
                  model_kwargs: dict | None = None, img_size: int | None = None,
                  weights_sha256: str | None = None) -> nn.Module:
    """`weights`: a local file, or a URL downloaded once per machine and checked against `weights_sha256`."""
    if not timm.is_model(arch):
        raise ConfigError(f"student.arch: unknown timm model {arch!r}")
    kwargs = dict(model_kwargs or {})
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    local = storage.cached_local(weights, weights_sha256, "student weights") if weights else None
    overlay = dict(file=local) if local else None
    try:
        model = timm.create_model(arch, pretrained=bool(weights), pretrained_cfg_overlay=overlay,
                                  num_classes=num_classes, **kwargs)
    except RuntimeError as e:  # a state dict that does not fit the architecture
        if not weights:
            raise
        raise ConfigError(f"student.weights: {weights} does not fit {arch}: {first_line(e)}") from None
    except TypeError as e:     # a model_kwargs key the architecture does not take
        raise ConfigError(f"student.model_kwargs: {arch}: {e}") from None
    check_input_size(model, arch, img_size)
    return model


LINEAR = "linear"      # student.decoder: DINOv2's linear head on the backbone's patch grid


class LinearSegmenter(nn.Module):
    """A timm backbone with DINOv2's linear segmentation head on its last layer's patch tokens
    (a CNN's last feature map): logits [N, C, h, w] at the patch grid."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = make_dense_head(int(backbone.num_features), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(patch_grid(self.backbone, x))


def smp_architectures() -> dict:
    """smp's architectures by lower-case name (what smp.create_model accepts)."""
    import segmentation_models_pytorch as smp

    return {name.lower(): cls for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def check_decoder(decoder: str | None) -> None:
    if decoder in (None, LINEAR) or decoder.lower() in smp_architectures():
        return
    raise ConfigError(f"student.decoder: {decoder!r} is neither {LINEAR!r} nor a segmentation_models_pytorch "
                      f"architecture ({', '.join(sorted(smp_architectures()))})")


def build_seg_student(arch: str, num_classes: int, decoder: str | None = None, weights: str | None = None,
                      drop_path: float = 0.0, model_kwargs: dict | None = None, img_size: int | None = None,
                      weights_sha256: str | None = None) -> nn.Module:
    """A segmentation student (module docstring). `weights`: for 'linear' a timm weight file of the
    backbone (its classifier dropped); for smp an smp `save_pretrained` folder (its segmentation head
    kept when its class count matches) or a timm weight file of the encoder."""
    if not timm.is_model(arch):
        raise ConfigError(f"student.arch: unknown timm model {arch!r}")
    check_decoder(decoder)
    decoder = decoder or LINEAR
    kwargs = dict(model_kwargs or {})
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    local = storage.cached_local(weights, weights_sha256, "student weights") if weights else None
    if decoder == LINEAR:
        base = timm.models.split_model_name_tag(arch)[0]
        if base in timm.list_models(module="vision_transformer"):
            kwargs.setdefault("dynamic_img_size", True)   # any multiple of the patch: other sizes, dynamic ONNX
        backbone = build_student(arch, 0, None, 0.0, kwargs, img_size)
        model = LinearSegmenter(backbone, num_classes)
        if local:
            load_matching(backbone, read_weights(local), f"student.weights: {weights}", arch)
        return model
    import segmentation_models_pytorch as smp

    try:
        model = smp.create_model(decoder, encoder_name=f"tu-{arch}", encoder_weights=None, classes=num_classes,
                                 **kwargs)
    except (TypeError, ValueError) as e:   # a model_kwargs key or value the architecture does not take
        raise ConfigError(f"student.model_kwargs: {decoder} on {arch}: {first_line(e)}") from None
    stride = int(model.encoder.output_stride)
    if img_size is not None and img_size % stride:
        raise ConfigError(f"student.img_size: {img_size} is not a multiple of {decoder} on {arch}'s output stride "
                          f"{stride}")
    if local:
        folder = Path(local)
        if folder.is_dir():   # an smp folder (save_pretrained): the whole model but a head of another size
            load_matching(model, read_weights(folder / "model.safetensors"), f"student.weights: {weights}",
                          f"{decoder} on {arch}")
        else:                 # a timm checkpoint of the encoder
            load_matching(model.encoder.model, read_weights(folder), f"student.weights: {weights}", arch)
    return model


def read_weights(path) -> dict:
    """A state dict from safetensors, or a torch file read weights-only (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"student.weights: {path} not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):       # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_matching(module: nn.Module, state: dict, where: str, what: str) -> None:
    """Load the tensors of `state` whose names and shapes `module` has (a classifier or head of
    another size stays as initialised); none matching is a ConfigError naming `where`."""
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not fitting:
        raise ConfigError(f"{where}: no tensor fits {what} (not its weights?)")
    module.load_state_dict(fitting, strict=False)
    log.info(f"{where}: loaded {len(fitting)} of {len(own)} tensors into {what}")


def timm_part(model: nn.Module) -> nn.Module:
    """The timm model inside a student (itself, a linear segmenter's backbone, an smp model's encoder)."""
    if isinstance(model, LinearSegmenter):
        return model.backbone
    encoder = getattr(model, "encoder", None)
    return getattr(encoder, "model", model)


def init_weights(weights: str | None, weights_sha256: str | None = None) -> dict | None:
    """What a student started from, for student.json and the model card: {file, sha256} of its
    weight file (the configured sha256 for a URL, else the file's own), None for random init."""
    if not weights:
        return None
    sha = weights_sha256 or sha256_file(storage.cached_local(weights, weights_sha256, "student weights"))
    return {"file": str(weights), "sha256": sha.lower()}


def check_input_size(model: nn.Module, arch: str, img_size: int | None) -> None:
    """Models with a fixed input grid (ViTs) must be built for the student's img_size; timm's
    `dynamic_img_size` ViTs resample their position embeddings to any input in the forward pass."""
    patch_embed = getattr(model, "patch_embed", None)
    fixed = getattr(patch_embed, "img_size", None)
    if img_size is None or fixed is None or getattr(model, "dynamic_img_size", False):
        return
    if tuple(fixed) != (img_size, img_size):
        raise ConfigError(f"student.img_size: {img_size}, but {arch} is built for {tuple(fixed)}: set "
                         f"student.model_kwargs.img_size: {img_size}")


def mean_std(model: nn.Module) -> tuple[list[float], list[float]]:
    """The student's colour normalisation, from its timm data config."""
    cfg = resolve_model_data_config(timm_part(model))
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


# How the trainer turns a stored image into the student's input, in timm's pretrained_cfg terms.
# A validation sample replays one centred square of `views.eval_crop` × its short side, resized to
# img_size with bilinear antialiased interpolation (`contract.views.view_pixels`). timm's eval
# transform with crop_pct = eval_crop, crop_mode 'center' and interpolation 'bilinear' (resize the
# short side to img_size / crop_pct, then centre-crop img_size) takes the same square: the two differ
# only in rounding and in resizing before or after the crop. Training views are the release's
# recorded RandomResizedCrop-style views (scale and ratio in its manifest), replayed the same way.
INTERPOLATION = "bilinear"
CROP_MODE = "center"


def preprocessing(img_size: int, mean, std, eval_crop: float) -> dict:
    """The student.json fields that say how to preprocess an image as the student was evaluated."""
    return {"input_size": [3, img_size, img_size], "mean": list(mean), "std": list(std),
            "crop_pct": float(eval_crop), "crop_mode": CROP_MODE, "interpolation": INTERPOLATION}


def release_eval_crop(manifests: list[dict]) -> float:
    """The eval crop the student was validated with: the releases' `views.eval_crop` (the first
    release's when they differ, with a warning: each release's val views keep their own)."""
    crops = [float((m.get("views") or {}).get("eval_crop", Views.eval_crop)) for m in manifests]
    if len(set(crops)) > 1:
        log.warning(f"the releases' views.eval_crop differ ({sorted(set(crops))}); student.json "
                    f"records the first, {crops[0]}")
    return crops[0]


def feature_dim(model: nn.Module) -> int:
    """Size of the pre-logits feature (`forward_head(pre_logits=True)`)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pre-logits feature) from one backbone pass."""
    trunk = model.forward_features(x)
    return model.forward_head(trunk), model.forward_head(trunk, pre_logits=True)


class Distillable(nn.Module):
    """The student plus, when the feature loss is on, a linear projector to the teacher's feature.

    One module so DDP sees (and synchronises) every trainable parameter in one forward."""

    def __init__(self, student: nn.Module, teacher_feature_dim: int | None = None):
        super().__init__()
        self.student = student
        self.projector = nn.Linear(feature_dim(student), teacher_feature_dim) if teacher_feature_dim else None

    def forward(self, x: torch.Tensor):
        if self.projector is None:
            return self.student(x), None
        logits, feature = features(self.student, x)
        return logits, self.projector(feature)




def save_student(model: nn.Module, out_dir, info: dict) -> None:
    """student.safetensors + student.json: everything `tsd eval` needs to rebuild the model."""
    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / STUDENT_WEIGHTS, save(state))
    atomic_write(out / STUDENT_INFO, json.dumps(info, indent=1).encode())


def load_student(path) -> tuple[nn.Module, dict]:
    """A trained student from a run folder, or from a student.safetensors with its student.json beside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (expected a run folder or a {STUDENT_WEIGHTS} "
                        f"with its {STUDENT_INFO} beside it)")
    weights = path / STUDENT_WEIGHTS if path.is_dir() else path
    if weights.suffix != ".safetensors":
        raise UserError(f"{weights}: not a student (expected a run folder or a {STUDENT_WEIGHTS} "
                        f"with its {STUDENT_INFO} beside it)")
    info_path = weights.with_suffix(".json")
    for p in (weights, info_path):
        if not p.is_file():
            raise UserError(f"{p}: not found (expected a run folder or a {STUDENT_WEIGHTS} "
                                    f"with its {STUDENT_INFO} beside it)")
    problem = weights_problem(str(weights))
    if problem:
        raise UserError(problem)
    info = read_student_info(info_path)
    if not timm.is_model(info["arch"]):
        raise UserError(f"{info_path}: arch: unknown timm model {info['arch']!r}")
    try:
        if info.get("task") == SEGMENTATION:
            model = build_seg_student(info["arch"], info["num_classes"], info.get("decoder"),
                                      model_kwargs=info.get("model_kwargs", {}))
        else:
            model = timm.create_model(info["arch"], pretrained=False, num_classes=info["num_classes"],
                                      **info.get("model_kwargs", {}))
    except (TypeError, ConfigError) as e:
        raise UserError(f"{info_path}: model_kwargs: {info['arch']}: {e}") from None
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ConfigError(f"{weights}: does not fit {info['arch']}: {first_line(e)}") from None
    return model, info


# what `tsd eval` needs from student.json, and the type of each
STUDENT_INFO_KEYS = {"arch": str, "num_classes": int, "img_size": int, "mean": list, "std": list, "classes": list}


def read_student_info(path: Path) -> dict:
    """student.json, checked: UserError naming the file and the first bad key."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable student.json ({e})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a student.json (expected a JSON object)")
    for key, kind in STUDENT_INFO_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise UserError(f"{path}: {key} is missing or not a {kind.__name__} (not a student.json?)")
    if not isinstance(info.get("model_kwargs", {}), dict):
        raise UserError(f"{path}: model_kwargs is not a mapping")
    return info
