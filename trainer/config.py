"""The trainer's configuration: YAML → validated dataclasses, checked against the releases.

Loaded with the project's strict loader (`pipeline.configlib`): an unknown key or a wrong type is
one line naming the file and the dotted key. `load_config` then opens the releases' manifests
(manifests only: no shard is read, no model is loaded) and checks the config against them.

Defaults the paper does not confirm are marked so: the KD weight `alpha` and temperature `T` of
L = (1-a)·CE + a·T²·KL are config values, never hard-coded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pipeline.contract.configlib import ConfigError, load, path_field, require_weights

from .release import ReleaseError, ReleaseSet, open_releases


@dataclass
class StudentConfig:
    arch: str = "resnet50"                    # any timm model name
    weights: Optional[str] = path_field(default=None)  # weight file or URL (safetensors/pth); null = random init
    weights_sha256: Optional[str] = None      # required for a URL: downloaded once per machine, checked
    img_size: int = 224                       # the student's input size; views are replayed at it
    model_kwargs: dict = field(default_factory=dict)   # extra timm.create_model arguments (ViTs: img_size)
    drop_path: float = 0.0                    # stochastic depth rate (timm drop_path_rate)

    def check(self):
        import timm  # the registry only: no model is built here

        if not timm.is_model(self.arch):
            raise ConfigError(f"arch: unknown timm model {self.arch!r}")
        require_weights(self.weights, self.weights_sha256)
        if self.img_size < 8:
            raise ConfigError(f"img_size: must be at least 8, got {self.img_size}")
        if not 0 <= self.drop_path < 1:
            raise ConfigError(f"drop_path: must be in [0, 1), got {self.drop_path}")


@dataclass
class LossConfig:
    # distill: KD on real + mix samples, CE on real; finetune: CE on real only (the baseline);
    # kd-real: KD + CE on real samples only (no mixes read)
    mode: Literal["distill", "finetune", "kd-real"] = "distill"
    alpha: float = 0.5         # a in (1-a)·CE + a·T²·KL; UNCONFIRMED from the paper: a documented default
    temperature: float = 2.0   # T; UNCONFIRMED from the paper: a documented default
    feature_weight: float = 0.0  # weight of (1 - cosine) between projected student and teacher features; 0 = off

    def check(self):
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha: must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight: must be >= 0, got {self.feature_weight}")


@dataclass
class DataConfig:
    mix_ratio: float = 0.5                    # fraction of mix samples in every batch ('distill' mode)
    generators: Optional[list[str]] = None    # generator kinds whose mixes are used; null = all
    batch_size: int = 256                     # GLOBAL batch, split evenly over the ranks
    workers: int = 4                          # DataLoader workers per rank (0 = decode in the training process)
    shuffle_buffer: int = 1000                # samples held by each reader's shuffle buffer
    on_corrupt: Literal["error", "skip"] = "error"  # a corrupt sample/shard: stop, or skip and count it

    def check(self):
        if not 0 <= self.mix_ratio <= 1:
            raise ConfigError(f"mix_ratio: must be in [0, 1], got {self.mix_ratio}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer: must be >= 0, got {self.shuffle_buffer}")


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3                          # peak learning rate, after warmup
    weight_decay: float = 0.05                # not applied to biases and norm weights (1-d tensors)
    momentum: float = 0.9                     # sgd only
    epochs: int = 100                         # epochs over the REAL train set: the schedule's length
    # The budget in optimizer steps, when set (then `epochs` is not used): runs that differ in their
    # mixes then run the same steps; with the same real samples per batch they see the same real images
    # (what `tsd compare` sets up). null = epochs × steps per epoch (one epoch = one pass over the real set)
    steps: Optional[int] = None
    warmup_epochs: float = 5.0                # linear warmup (epochs of the real set), then cosine decay to 0
    clip_grad: float = 0.0                    # max gradient norm; 0 = off

    def check(self):
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.epochs < 1:
            raise ConfigError(f"epochs: must be at least 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps: must be at least 1 (or null: epochs decide), got {self.steps}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs: must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad: must be >= 0, got {self.clip_grad}")


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "bf16"  # autocast dtype on CUDA; the CPU always runs fp32
    channels_last: bool = True                # memory format on CUDA
    seed: int = 0
    checkpoint_every: int = 1000              # steps between checkpoints (one is always written at the end); 0 = end only
    log_every: int = 50                       # steps between log.jsonl / TensorBoard entries
    eval_every: int = 1                       # epochs between validations (val.jsonl, TensorBoard val/*); 0 = at the end only
    compile: bool = False                     # torch.compile the student
    gpu_decode: bool = False                  # decode JPEGs on the GPU (nvjpeg); CPU decode when CUDA is absent

    def check(self):
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        if self.log_every < 1:
            raise ConfigError(f"log_every: must be at least 1, got {self.log_every}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every: must be >= 0 (epochs; 0 = at the end only), got {self.eval_every}")


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


def check_releases(config: TrainConfig) -> ReleaseSet:
    """Open the releases and check what depends on them; each problem is one ConfigError line."""
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
