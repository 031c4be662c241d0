"""The trainer's configuration: YAML → validated dataclasses, checked against the releases.

Loaded with the project's strict loader (`pipeline.contract.configlib`): an unknown key or a wrong type is
one line naming the file and the dotted key. `load_config` then opens the releases' manifests
(manifests only: no shard is read, no model is loaded) and checks the config against them.

Defaults the paper does not confirm are marked so: the KD weight `alpha` and temperature `T` of
L = (1-a)·CE + a·T²·KL are config values, never hard-coded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pipeline.contract.configlib import ConfigError, documented, load, path_field, ranged, require_weights
from pipeline.contract.tasks import CLASSIFICATION, SEGMENTATION

from .release import ReleaseError, ReleaseSet, open_releases


@dataclass
class StudentConfig:
    """The student: a timm model sized to the releases' classes, from local weights or random init."""
    arch: str = ranged("resnet50", allowed="a timm model name", doc="the student architecture")
    weights: Optional[str] = path_field(default=None, doc="weight file or URL (safetensors/pth); null = random init")
    weights_sha256: Optional[str] = documented(None, doc="required for a URL: downloaded once per machine, checked")
    img_size: int = ranged(224, ge=8, doc="the student's input size; views are replayed at it")
    model_kwargs: dict = documented(default_factory=dict, doc="extra timm.create_model arguments (ViTs: img_size)")
    drop_path: float = ranged(0.0, ge=0, lt=1, doc="stochastic depth rate (timm drop_path_rate)")
    decoder: Optional[str] = documented(None, doc=(
            "segmentation only: 'linear' (the default there) = BatchNorm + 1x1 conv on the last layer's patch tokens "
            "of a timm ViT `arch` (DINOv2's linear head, the teacher's shape); or a segmentation_models_pytorch "
            "architecture (FPN, DeepLabV3Plus, Unet, ...) on the timm encoder `arch` (smp's tu-<arch>); then "
            "model_kwargs are smp.create_model arguments and weights is an smp save_pretrained folder or a timm "
            "checkpoint of the encoder"))

    def check(self):
        import timm  # the registry only: no model is built here

        if not timm.is_model(self.arch):
            raise ConfigError(f"arch: unknown timm model {self.arch!r}")
        require_weights(self.weights, self.weights_sha256)
        if self.decoder not in (None, "linear"):
            from .students import check_decoder   # imports smp: only for an smp decoder

            try:
                check_decoder(self.decoder)
            except ConfigError as e:
                raise ConfigError(str(e).removeprefix("student.")) from None


@dataclass
class LossConfig:
    """L = (1-a)·CE(label) + a·T²·KL(teacher‖student) [+ feature_weight·(1 - cosine) on features]."""
    mode: Literal["distill", "finetune", "kd-real"] = documented("distill", doc=(
            "distill: KD on real + mix samples, CE on real; finetune: CE on real only (the baseline); kd-real: KD + "
            "CE on real samples only (no mixes read)"))
    alpha: float = ranged(0.5, ge=0, le=1, doc=(
            "a in (1-a)·CE + a·T²·KL; UNCONFIRMED from the paper: a documented default"))
    temperature: float = ranged(2.0, gt=0, doc="T; UNCONFIRMED from the paper: a documented default")
    feature_weight: float = ranged(0.0, ge=0, doc=(
            "weight of (1 - cosine) between projected student and teacher features; 0 = off"))


@dataclass
class DataConfig:
    """What each batch holds and how the shards are read."""
    mix_ratio: float = ranged(0.5, ge=0, le=1, doc="fraction of mix samples in every batch ('distill' mode)")
    generators: Optional[list[str]] = documented(None, doc="generator kinds whose mixes are used; null = all")
    mix_pool: float = ranged(1.0, gt=0, le=1, doc=(
            "fraction of each generator's mix pool read: its first shards, whole, holding at least this fraction of "
            "its mixes (the pairs are drawn independently, so they are a smaller pool of the same law)"))
    batch_size: int = ranged(256, ge=1, doc="GLOBAL batch, split evenly over the ranks")
    workers: int = ranged(4, ge=0, doc="DataLoader workers per rank (0 = decode in the training process)")
    shuffle_buffer: int = ranged(1000, ge=0, doc="samples held by each reader's shuffle buffer")
    on_corrupt: Literal["error", "skip"] = documented("error", doc=(
            "a corrupt sample or shard: stop with one line naming it (error), or warn, skip it and count the samples "
            "lost per shard in log.jsonl and metrics.json (skip)"))


@dataclass
class OptimConfig:
    """The optimizer and its schedule: linear warmup, then cosine decay to 0, per step."""
    name: Literal["adamw", "sgd"] = documented("adamw", doc="the optimizer")
    lr: float = ranged(1e-3, gt=0, doc="peak learning rate, after warmup")
    weight_decay: float = ranged(0.05, ge=0, doc="not applied to biases and norm weights (1-d tensors)")
    momentum: float = ranged(0.9, ge=0, lt=1, doc="sgd only")
    epochs: int = ranged(100, ge=1, doc="epochs over the REAL train set: the schedule's length")
    steps: Optional[int] = ranged(None, ge=1, doc=(
            "The budget in optimizer steps, when set (then `epochs` is not used): runs that differ in their mixes "
            "then run the same steps; with the same real samples per batch they see the same real images (what `tsd "
            "compare` sets up). null = epochs × steps per epoch (one epoch = one pass over the real set)"))
    warmup_epochs: float = ranged(5.0, ge=0, allowed="<= optim.epochs", doc=(
            "linear warmup (epochs of the real set), then cosine decay to 0"))
    clip_grad: float = ranged(0.0, ge=0, doc="max gradient norm; 0 = off")

    def total_steps(self, steps_per_epoch: int) -> int:
        """The run's optimizer steps: `steps` when set, else `epochs` passes of `steps_per_epoch`."""
        return self.steps if self.steps is not None else steps_per_epoch * self.epochs

    def check(self):
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs: must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


@dataclass
class RuntimeConfig:
    """Where and how the run executes, and when it checkpoints. A checkpoint is written whenever one
    of checkpoint_minutes, checkpoint_epochs or checkpoint_every comes due, at the end, and at the
    next step boundary after SIGTERM or SIGINT (the run then exits non-zero; `--resume` continues
    it). The last 2 are kept while it runs, the last `keep_checkpoints` once it has finished."""
    device: Literal["auto", "cpu", "cuda"] = documented("auto", doc="auto: CUDA when there is a GPU (one per process)")
    precision: Literal["fp32", "bf16"] = documented("bf16", doc="autocast dtype on CUDA; the CPU always runs fp32")
    channels_last: bool = documented(True, doc="memory format on CUDA")
    seed: int = ranged(0, ge=0, doc="model init, view choice, shuffling: all derive from it")
    checkpoint_minutes: float = ranged(10.0, ge=0, doc="wall-clock minutes between checkpoints; 0 = off")
    checkpoint_epochs: int = ranged(1, ge=0, doc="epochs between checkpoints (at epoch ends); 0 = off")
    checkpoint_every: int = ranged(0, ge=0, doc="steps between checkpoints; 0 = off")
    keep_checkpoints: int = ranged(1, ge=1, doc=(
            "checkpoints a finished run keeps, the latest ones (while it runs the last 2 are kept, so a damaged "
            "latest has one to fall back on); the student itself is student.safetensors"))
    log_every: int = ranged(50, ge=1, doc="steps between log.jsonl / TensorBoard entries")
    eval_every: int = ranged(1, ge=0, doc=(
            "epochs between validations (val.jsonl, TensorBoard val/*); 0 = at the end only"))
    compile: bool = documented(False, doc="torch.compile the student")
    gpu_decode: bool = documented(False, doc="nvjpeg on a side stream; off until a device check shows it clean")
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = documented(default_factory=lambda: ["tensorboard"], doc=(
            "where scalars, the config, final metrics and the student go: any of tensorboard, mlflow, wandb"))
    mlflow_uri: str = documented("", doc='MLflow tracking URI; "" = $MLFLOW_TRACKING_URI, else MLflow\'s default')
    experiment: str = documented("tsdistill", doc="the MLflow experiment / W&B project")
    tags: dict[str, str] = documented(default_factory=dict, doc="tracker tags (tsd compare sets compare, row, seed)")


@dataclass
class RunSettings:
    """How a student is trained, releases aside: a `tsd train` config, and every run of `tsd compare`."""
    task: Literal["classification", "segmentation"] = documented(CLASSIFICATION, doc=(
            "what the student is trained for; must be the releases' task (their manifest's `task`)"))
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class TrainConfig(RunSettings):
    """A training run (`tsd train CONFIG --out RUN`)."""
    releases: list[str] = path_field(default_factory=list, doc=(
            "release folders or fsspec URLs (same classes); required"))

    def check(self):
        if not self.releases:
            raise ConfigError("releases: at least one release is needed")
        check_task_settings(self)

    def uses_mixes(self) -> bool:
        return self.loss.mode == "distill" and self.data.mix_ratio > 0


def check_task_settings(config: RunSettings) -> None:
    """What only one task takes: a decoder and no feature loss for segmentation, no decoder for classification."""
    if config.task == CLASSIFICATION and config.student.decoder is not None:
        raise ConfigError(f"student.decoder: {config.student.decoder!r} is for task: segmentation (this config's task "
                          "is classification)")
    if config.task == SEGMENTATION and config.loss.feature_weight > 0:
        raise ConfigError("loss.feature_weight: the feature loss is for classification; set it to 0 for segmentation")


def load_config(path, overrides: dict | None = None) -> tuple[TrainConfig, ReleaseSet]:
    """Load a training config and check it against its releases (manifests only, no model)."""
    config = load(TrainConfig, path, overrides)
    try:
        releases = check_releases(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config, releases


def check_releases(config: TrainConfig, releases: ReleaseSet | None = None) -> ReleaseSet:
    """Open the releases (unless the caller has them open: `releases`, those of `config.releases`)
    and check what depends on them; each problem is one ConfigError line."""
    if releases is None:
        try:
            releases = open_releases(config.releases)
        except ReleaseError as e:
            raise ConfigError(f"releases[{e.index}]: {e}") from None
    for release in releases:
        if release.task != config.task:
            raise ConfigError(f"task: {release.root} is a {release.task} release, the config's task is "
                              f"{config.task} (set task: {release.task} or use a {config.task} release)")
    if releases.count("real", "train") == 0:
        raise ConfigError("releases: no real training samples in any release")
    if releases.count("real", "val") == 0:
        raise ConfigError("releases: no real validation samples in any release")
    kinds = releases.generator_kinds()
    for i, kind in enumerate(config.data.generators or ()):
        if kind not in kinds:
            have = ", ".join(sorted(kinds)) or "none"
            raise ConfigError(f"data.generators[{i}]: {kind!r} made no mixes in these releases (have: {have})")
    if config.uses_mixes() and not releases.shards("mix", "train", config.data.generators):
        raise ConfigError(f"data.mix_ratio: {config.data.mix_ratio} but the releases hold no selected mix "
                          "shards (set data.mix_ratio: 0 or loss.mode: kd-real)")
    if config.loss.feature_weight > 0 and releases.feature_dim() is None:
        raise ConfigError("loss.feature_weight: > 0 but not every release stores teacher features "
                          "(manifest teacher.features)")
    if config.runtime.gpu_decode:
        for release in releases:
            if release.image_format != "jpg":
                raise ConfigError(f"runtime.gpu_decode: {release.root} stores {release.image_format} "
                                  "images; GPU decode reads JPEG only")
    return releases
