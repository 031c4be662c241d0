"""The generation job's configuration: YAML → validated dataclasses (one place for every key).

Defaults follow the paper where it is explicit (DINOv2 ViT-g/14 probed teacher, ImageMixer at
640 px with DDIM 30 steps and guidance 3); where it is not (pool size, law of the mixing weight,
number of views), they are documented choices, never hard-coded elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .contract import storage
from .contract.configlib import ConfigError, load, parse_overrides, path_field, require_file, require_weights
from .contract.images import IMAGE_FORMATS
from .contract.views import Views
from .models import registry

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass
class DataConfig:
    index: str = path_field()                 # index.parquet written by `tsd ingest`
    store_size: int = 256                     # short side of stored images (px); never upscaled
    image_format: Literal["jpg", "webp", "png"] = "jpg"
    quality: int = 90
    classes: Optional[list[str]] = None       # restrict to these class names (must exist in the index)

    def check(self):
        require_file(self.index, "index")
        if self.store_size < 8:
            raise ConfigError(f"store_size: must be at least 8, got {self.store_size}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality: must be in 1..100, got {self.quality}")
        assert self.image_format in IMAGE_FORMATS


@dataclass
class TeacherConfig:
    arch: str = "vit_giant_patch14_dinov2"   # a timm model name
    weights: Optional[str] = path_field(default=None)  # safetensors/pth file or URL; null = random init
    weights_sha256: Optional[str] = None      # required for a URL: each node downloads it once and checks it
    img_size: int = 224
    model_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments
    dtype: Dtype = "bf16"                     # on GPU; the CPU always runs fp32
    batch_size: int = 256

    def check(self):
        require_weights(self.weights, self.weights_sha256)
        if self.img_size < 8:
            raise ConfigError(f"img_size: must be at least 8, got {self.img_size}")


@dataclass
class ProbeConfig:
    """The task adaptation of the teacher. 'probe' (the paper's choice): a head trained on frozen
    features. 'finetune' (the paper's counterpoint): the last `blocks` blocks and the final norm
    trained with the head, on pixels, with layer-wise lr decay (see stages/probe.py `finetune`)."""
    mode: Literal["probe", "finetune"] = "probe"
    head: Literal["linear", "mlp"] = "linear"
    views: int = 1                            # probe: augmented views per train image for the features
    epochs: int = 100
    lr: float = 1e-3                          # the head's (finetune: and the final norm's) peak lr
    weight_decay: float = 1e-4
    batch_size: int = 1024
    hidden: int = 1024                        # mlp head width
    blocks: int = 2                           # finetune: the last N transformer blocks trained
    layer_decay: float = 0.75                 # finetune: block k from the top (k = 1 the last) at lr · decay^k
    warmup_epochs: float = 1.0                # finetune: linear warmup, then cosine decay to 0

    def check(self):
        if self.views < 1 or self.epochs < 1:
            raise ConfigError("views/epochs: must be at least 1")
        if self.blocks < 1:
            raise ConfigError(f"blocks: must be at least 1, got {self.blocks}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay: must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs: must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


@dataclass
class MixPlanConfig:
    """Which pairs are mixed, with which weight (SD-Mixup is class-agnostic by default)."""
    pool_size: Union[int, str] = "1x"         # a count, or 'Nx' = N times the train set
    pairing: Literal["any", "cross-class", "same-class"] = "any"
    weight_law: Literal["uniform", "beta", "fixed"] = "uniform"
    beta_a: float = 1.0                       # beta(a, a) when weight_law is 'beta'
    weight: float = 0.5                       # when weight_law is 'fixed'
    weight_range: tuple[float, float] = (0.0, 1.0)  # uniform law bounds

    def check(self):
        if isinstance(self.pool_size, int):
            if self.pool_size < 0:
                raise ConfigError(f"pool_size: must be >= 0, got {self.pool_size}")
        else:
            self.pool_multiple()
        if self.beta_a <= 0:
            raise ConfigError(f"beta_a: must be > 0, got {self.beta_a}")
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"weight: must be in [0, 1], got {self.weight}")

    def pool_multiple(self) -> float:
        s = str(self.pool_size)
        try:
            if not s.endswith("x"):
                raise ValueError
            value = float(s[:-1])
            if value < 0:
                raise ValueError
            return value
        except ValueError:
            raise ConfigError(f"pool_size: expected a count or a multiple like '2x', got {s!r}") from None

    def resolve_pool(self, n_train: int) -> int:
        if isinstance(self.pool_size, int):
            return self.pool_size
        return int(round(self.pool_multiple() * n_train))


@dataclass
class GeneratorConfig:
    kind: Literal[registry.KINDS] = "image-mixer"   # see models.registry
    # Several generators under one teacher: every kind listed (which must include `kind`) mixes the
    # same planned pairs, weights and seeds; `kind`'s mixes are the job folder's own, each other
    # kind's go to a release of its own, OUT/generators/<kind>/, labelled by the same teacher head
    # (see stages/family.py). They share the settings below: at most one diffusion kind.
    kinds: Optional[list[Literal[registry.KINDS]]] = None
    path: Optional[str] = path_field(default=None)   # local diffusers-layout folder (or .ckpt)
    size: int = 640
    steps: int = 30
    guidance: float = 3.0
    # ddim/dpm/euler/pndm: diffusers' schedulers on the folder's scheduler config (ddim: 'leading' +
    # steps_offset 1: S=30 runs 958 … 1); ldm-ddim: CompVis ldm's DDIM, 'uniform' (S=30 runs 31
    # steps, 991 … 1); ldm-ddim-fork: the same without its largest timestep, as ImageMixer's own
    # repo runs it (S=30: 958 … 1). See models.ldm_ddim.
    scheduler: Literal["ddim", "dpm", "euler", "pndm", "ldm-ddim", "ldm-ddim-fork"] = "ddim"
    dtype: Dtype = "fp16"
    batch_size: int = 8                       # images per denoising batch (CFG doubles it)
    tokens: int = 5                           # image-mixer: conditioning slots (2 live, the rest zeros), as trained
    noise_level: int = 0                      # unclip only
    interpolation: Literal["slerp", "lerp"] = "slerp"  # one-token generators (sd-image-variations, unclip)
    # speed switches (the output does not depend on them beyond float rounding):
    compile: bool = False                     # torch.compile the UNet once per worker, fixed shapes (GPU)
    cuda_graphs: bool = False                 # with compile: CUDA graphs over the UNet call (mode reduce-overhead)
    attention: Literal["sdpa", "classic"] = "sdpa"   # SDPA (flash / memory-efficient kernels) or the plain math
    vae_slice: int = 8                        # images per VAE decode call (its activations dominate memory)

    def check(self):
        if self.kinds is not None:
            if self.kind not in self.kinds or len(set(self.kinds)) != len(self.kinds):
                raise ConfigError(f"kinds: must list generator.kind {self.kind!r} (whose mixes stay in the job "
                                  f"folder) and each kind once, got {self.kinds}")
            if sum(k in registry.DIFFUSION_KINDS for k in self.kinds) > 1:
                raise ConfigError(f"kinds: at most one diffusion generator (they would share generator.path), "
                                  f"got {self.kinds}")
        for kind in self.kinds or [self.kind]:
            if kind in registry.DIFFUSION_KINDS and self.path is None:
                raise ConfigError(f"path: the {kind!r} generator needs a model folder")
        require_file(self.path, "path")
        if self.size % 8 or self.size < 8:
            raise ConfigError(f"size: must be a positive multiple of 8, got {self.size}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps/batch_size: must be at least 1")
        if self.scheduler == "ldm-ddim-fork" and self.steps < 2:
            raise ConfigError("steps: ldm-ddim-fork drops the largest of its timesteps, so it needs at least 2")
        if self.tokens < 2:
            raise ConfigError(f"tokens: must be at least 2 (one per parent), got {self.tokens}")
        if self.vae_slice < 1:
            raise ConfigError(f"vae_slice: must be at least 1, got {self.vae_slice}")
        if self.noise_level < 0:
            raise ConfigError(f"noise_level: must be >= 0, got {self.noise_level}")


@dataclass
class GenerateConfig:
    """The distributed stage: shards, workers, what is stored per sample."""
    shard_size: int = 256                     # samples per shard (one Ray task each)
    workers: Optional[int] = None             # actors; default: one per GPU, else 1
    cpus_per_worker: float = 1.0
    logits: Literal["full", "topk"] = "full"
    topk: int = 20
    features: bool = False                    # store teacher features for feature distillation
    max_retries: int = 3                      # per shard, after a worker dies
    address: Optional[str] = None             # existing Ray cluster; null = start a local one

    def check(self):
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be at least 1, got {self.shard_size}")
        if self.logits == "topk" and self.topk < 1:
            raise ConfigError(f"topk: must be at least 1, got {self.topk}")


@dataclass
class ReleaseConfig:
    name: str = "tsdistill-release"
    license: str = "other"                    # the source images' license decides
    description: str = ""


@dataclass
class ExpectedCounts:
    """A dataset's published sizes, for `tsd plan --dry-run` before it is ingested (never used to
    plan: when data.index exists, its counts win)."""
    train: int
    val: int
    classes: int

    def check(self):
        if self.train < 0 or self.val < 0:
            raise ConfigError(f"train/val: must be >= 0, got {self.train}/{self.val}")
        if self.classes < 1:
            raise ConfigError(f"classes: must be at least 1, got {self.classes}")


@dataclass
class JobConfig:
    data: DataConfig
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    views: Views = field(default_factory=Views)
    plan: MixPlanConfig = field(default_factory=MixPlanConfig)
    generator: Optional[GeneratorConfig] = None   # required unless plan.pool_size is 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    seed: int = 0
    expected_counts: Optional[ExpectedCounts] = None  # dataset sizes for `tsd plan --dry-run` before ingest

    def check(self):
        no_mixes = self.plan.pool_size in (0, "0x", "0.0x")
        if self.generator is None and not no_mixes:
            raise ConfigError("generator: missing (required unless plan.pool_size is 0)")


def add_job_arguments(parser, out_required: bool = True) -> None:
    """The arguments of every stage command: the job manifest, its folder, overrides."""
    parser.add_argument("config", help="job manifest (YAML), e.g. manifests/demo.yaml")
    parser.add_argument("--out", required=out_required,
                        help="job folder: the release, plus work/ for intermediate files")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set generate.shard_size=128 (repeatable)")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where models run (default: auto)")


def load_job_args(args) -> JobConfig:
    """The job of a stage command's parsed arguments (`add_job_arguments`)."""
    return load_job(args.config, parse_overrides(args.set))


def load_job(path, overrides: dict | None = None) -> JobConfig:
    """Load and validate a job manifest; fails with one line naming the file and key."""
    job = load(JobConfig, path, overrides)
    try:
        check_classes(job)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return job


def check_classes(job: JobConfig) -> None:
    """Configured class names must exist in the ingested index (read only its class column)."""
    if not job.data.classes or not storage.isfile(job.data.index):  # no index yet: a dry run only
        return
    from .sources.index import index_classes

    known = index_classes(job.data.index)
    unknown = [c for c in job.data.classes if c not in known]
    if unknown:
        raise ConfigError(f"data.classes: unknown class {unknown[0]!r} (not in {job.data.index})")
