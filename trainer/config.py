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

from pipeline.contract.configlib import ConfigError, load, path_field, ranged, require_weights

from .release import ReleaseError, ReleaseSet, open_releases


@dataclass
class StudentConfig:
    """The student: a timm model sized to the releases' classes, from local weights or random init."""
    arch: str = ranged("resnet50", allowed="a timm model name")  # the student architecture
    weights: Optional[str] = path_field(default=None)  # weight file or URL (safetensors/pth); null = random init
    weights_sha256: Optional[str] = None      # required for a URL: downloaded once per machine, checked
    img_size: int = ranged(224, ge=8)         # the student's input size; views are replayed at it
    model_kwargs: dict = field(default_factory=dict)   # extra timm.create_model arguments (ViTs: img_size)
    drop_path: float = ranged(0.0, ge=0, lt=1)  # stochastic depth rate (timm drop_path_rate)

    def check(self):
        import timm  # the registry only: no model is built here

        if not timm.is_model(self.arch):
            raise ConfigError(f"arch: unknown timm model {self.arch!r}")
        require_weights(self.weights, self.weights_sha256)


@dataclass
class LossConfig:
    """L = (1-a)·CE(label) + a·T²·KL(teacher‖student) [+ feature_weight·(1 - cosine) on features]."""
    # distill: KD on real + mix samples, CE on real; finetune: CE on real only (the baseline);
    # kd-real: KD + CE on real samples only (no mixes read)
    mode: Literal["distill", "finetune", "kd-real"] = "distill"
    alpha: float = ranged(0.5, ge=0, le=1)    # a in (1-a)·CE + a·T²·KL; UNCONFIRMED from the paper: a documented default
    temperature: float = ranged(2.0, gt=0)    # T; UNCONFIRMED from the paper: a documented default
    feature_weight: float = ranged(0.0, ge=0)  # weight of (1 - cosine) between projected student and teacher features; 0 = off


@dataclass
class DataConfig:
    """What each batch holds and how the shards are read."""
    mix_ratio: float = ranged(0.5, ge=0, le=1)  # fraction of mix samples in every batch ('distill' mode)
    generators: Optional[list[str]] = None    # generator kinds whose mixes are used; null = all
    # fraction of each generator's mix pool read: its first shards, whole, holding at least this
    # fraction of its mixes (the pairs are drawn independently, so they are a smaller pool of the same law)
    mix_pool: float = ranged(1.0, gt=0, le=1)
    batch_size: int = ranged(256, ge=1)       # GLOBAL batch, split evenly over the ranks
    workers: int = ranged(4, ge=0)            # DataLoader workers per rank (0 = decode in the training process)
    shuffle_buffer: int = ranged(1000, ge=0)  # samples held by each reader's shuffle buffer
    # a corrupt sample or shard: stop with one line naming it (error), or warn, skip it and count the
    # samples lost per shard in log.jsonl and metrics.json (skip)
    on_corrupt: Literal["error", "skip"] = "error"


@dataclass
class OptimConfig:
    """The optimizer and its schedule: linear warmup, then cosine decay to 0, per step."""
    name: Literal["adamw", "sgd"] = "adamw"   # the optimizer
    lr: float = ranged(1e-3, gt=0)            # peak learning rate, after warmup
    weight_decay: float = ranged(0.05, ge=0)  # not applied to biases and norm weights (1-d tensors)
    momentum: float = ranged(0.9, ge=0, lt=1)  # sgd only
    epochs: int = ranged(100, ge=1)           # epochs over the REAL train set: the schedule's length
    # The budget in optimizer steps, when set (then `epochs` is not used): runs that differ in their
    # mixes then run the same steps; with the same real samples per batch they see the same real images
    # (what `tsd compare` sets up). null = epochs × steps per epoch (one epoch = one pass over the real set)
    steps: Optional[int] = ranged(None, ge=1)
    warmup_epochs: float = ranged(5.0, ge=0, allowed="<= optim.epochs")  # linear warmup (epochs of the real set), then cosine decay to 0
    clip_grad: float = ranged(0.0, ge=0)      # max gradient norm; 0 = off

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
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU (one per process)
    precision: Literal["fp32", "bf16"] = "bf16"  # autocast dtype on CUDA; the CPU always runs fp32
    channels_last: bool = True                # memory format on CUDA
    seed: int = ranged(0, ge=0)               # model init, view choice, shuffling: all derive from it
    checkpoint_minutes: float = ranged(10.0, ge=0)  # wall-clock minutes between checkpoints; 0 = off
    checkpoint_epochs: int = ranged(1, ge=0)  # epochs between checkpoints (at epoch ends); 0 = off
    checkpoint_every: int = ranged(0, ge=0)   # steps between checkpoints; 0 = off
    # checkpoints a finished run keeps, the latest ones (while it runs the last 2 are kept, so a damaged
    # latest has one to fall back on); the student itself is student.safetensors
    keep_checkpoints: int = ranged(1, ge=1)
    log_every: int = ranged(50, ge=1)         # steps between log.jsonl / TensorBoard entries
    eval_every: int = ranged(1, ge=0)         # epochs between validations (val.jsonl, TensorBoard val/*); 0 = at the end only
    compile: bool = False                     # torch.compile the student
    gpu_decode: bool = False                  # nvjpeg on a side stream; off until a device check shows it clean
    # where scalars, the config, final metrics and the student go: any of tensorboard, mlflow, wandb
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    mlflow_uri: str = ""                      # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI, else MLflow's default
    experiment: str = "tsdistill"             # the MLflow experiment / W&B project
    tags: dict[str, str] = field(default_factory=dict)  # tracker tags (tsd compare sets compare, row, seed)


@dataclass
class RunSettings:
    """How a student is trained, releases aside: a `tsd train` config, and every run of `tsd compare`."""
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class TrainConfig(RunSettings):
    """A training run (`tsd train CONFIG --out RUN`)."""
    releases: list[str] = path_field(default_factory=list)  # release folders or fsspec URLs (same classes); required

    def check(self):
        if not self.releases:
            raise ConfigError("releases: at least one release is needed")

    def uses_mixes(self) -> bool:
        return self.loss.mode == "distill" and self.data.mix_ratio > 0


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
