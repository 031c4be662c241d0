"""The generation job's configuration: YAML → validated dataclasses (one place for every key).

Defaults follow the paper where it is explicit (DINOv2 ViT-g/14 probed teacher, ImageMixer at
640 px with DDIM 30 steps and guidance 3); where it is not (pool size, law of the mixing weight,
number of views), they are documented choices, never hard-coded elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .contract import generators, storage
from .contract.configlib import (ConfigError, check_weights_header, documented, load, parse_overrides, path_field,
                                 ranged, require_file, require_weights)
from .contract.images import IMAGE_FORMATS
from .contract.tasks import CLASSIFICATION, TASKS
from .contract.views import Views
from .sources.index import INDEX_FILE

Dtype = Literal["fp32", "bf16", "fp16"]
DEFAULT_PROMPTS = ("a photo of a {class}.",)   # sd-text without generator.prompts (CLIP's plain template)


@dataclass
class DataConfig:
    """The ingested images and how they are stored in the shards."""
    index: str = path_field(doc="index.parquet written by `tsd ingest`")
    store_size: int = ranged(256, ge=8, doc="short side of stored images (px); never upscaled")
    image_format: Literal["jpg", "webp", "png"] = documented("jpg", doc="how stored images are encoded in the shards")
    quality: int = ranged(90, ge=1, le=100, doc="encoder quality (jpg, webp)")
    classes: Optional[list[str]] = documented(None, doc="restrict to these class names (must exist in the index)")
    source: Optional[str] = path_field(default=None, doc=(
            "the dataset `tsd run` ingests into data.index (as `tsd ingest SOURCE --out <data.index's folder>`, "
            "the layout detected); null = data.index is made by `tsd ingest` beforehand"))

    def check(self):
        if self.source is None:
            require_file(self.index, "index")
        else:   # `tsd run` makes the index: it need not exist yet
            require_file(self.source, "source")
            if storage.basename(self.index) != INDEX_FILE:
                raise ConfigError(f"index: {self.index}: with data.source, the index `tsd ingest` writes, "
                                  f"<folder>/{INDEX_FILE}")
        if self.image_format not in IMAGE_FORMATS:   # the Literal above and the contract's encoders must agree
            raise ConfigError(f"image_format: {self.image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")


@dataclass
class TeacherConfig:
    """The teacher's frozen backbone (a timm model; DINOv2 ViT-g/14 in the paper)."""
    arch: str = ranged("vit_giant_patch14_dinov2", allowed="a timm model name", doc="the frozen backbone")
    weights: Optional[str] = path_field(default=None, doc="safetensors/pth file or URL; null = random init")
    weights_sha256: Optional[str] = documented(None, doc=(
            "required for a URL: each node downloads it once and checks it"))
    img_size: int = ranged(224, ge=8, doc="the teacher's input size (px)")
    model_kwargs: dict = documented(default_factory=dict, doc="extra timm.create_model arguments")
    dtype: Dtype = documented("bf16", doc="on GPU; the CPU always runs fp32")
    batch_size: int = ranged(256, ge=1, doc="views per forward pass (probe and generate)")

    def check(self):
        # `arch` is checked where the teacher is built (models.teacher.check_arch): timm's registry
        # imports torch, which `tsd plan --dry-run` and `tsd release` never need
        require_weights(self.weights, self.weights_sha256)


@dataclass
class ProbeConfig:
    """The task adaptation of the teacher. 'probe' (the paper's choice): a head trained on frozen
    features. 'finetune' (the paper's counterpoint): the last `blocks` blocks (or all of them and the
    embeddings: blocks 'all') and the final norm trained with the head, on pixels, with layer-wise
    lr decay (see stages/probe_finetune.py; classification and segmentation alike)."""
    mode: Literal["probe", "finetune"] = documented("probe", doc=(
            "probe: a head on frozen features; finetune: last blocks + head"))
    head: Literal["linear", "mlp"] = documented("linear", doc="the task head on CLS ‖ mean-patch features")
    views: int = ranged(1, ge=1, doc="probe: augmented views per train image for the features")
    epochs: int = ranged(100, ge=1, doc="probe: passes over the cached features; finetune: over the images")
    lr: float = ranged(1e-3, gt=0, doc="the head's (finetune: and the final norm's) peak AdamW lr")
    weight_decay: float = ranged(1e-4, ge=0, doc="AdamW weight decay")
    batch_size: int = ranged(1024, ge=1, doc="features (finetune: images) per update")
    hidden: int = ranged(1024, ge=1, doc="mlp head width")
    blocks: Union[int, Literal["all"]] = ranged(2, ge=1, allowed="or 'all'", doc=(
            "finetune: the last N transformer blocks trained; 'all': every block and the embeddings (a full finetune)"))
    layer_decay: float = ranged(0.75, gt=0, le=1, doc="finetune: block k from the top (k = 1 the last) at lr · decay^k")
    warmup_epochs: float = ranged(1.0, ge=0, allowed="at most epochs", doc="finetune: linear warmup, then cosine to 0")

    def check(self):
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs: must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


@dataclass
class MixPlanConfig:
    """Which pairs are mixed, with which weight (SD-Mixup is class-agnostic by default)."""
    pool_size: Union[int, str] = ranged("1x", ge=0, allowed="or 'Nx' (N >= 0)", doc=(
            "mixes: a count, or 'Nx' = N times the train set"))
    pairing: Literal["any", "cross-class", "same-class"] = documented("any", doc="which parents may be paired")
    weight_law: Literal["uniform", "beta", "fixed"] = documented("uniform", doc=(
            "law of the mixing weight of the first parent"))
    beta_a: float = ranged(1.0, gt=0, doc="beta(a, a) when weight_law is 'beta'")
    weight: float = ranged(0.5, ge=0, le=1, doc="when weight_law is 'fixed'")
    class_law: Literal["uniform", "frequency"] = documented("uniform", doc=(
            "prompted generators (sd-text): the law of each sample's class: 'uniform' over the classes, or "
            "'frequency' = as often as the class is in the train split"))
    weight_range: tuple[float, float] = ranged((0.0, 1.0), ge=0, le=1, ordered=True, doc="uniform law bounds")

    def check(self):
        if isinstance(self.pool_size, str):
            self.pool_multiple()

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
    """The SD-Mixup generator: which model makes the mixes, and how it samples."""
    kind: Literal[generators.KINDS] = documented("image-mixer", doc=(
            "the generator (see `tsd plan --help` and contract.generators)"))
    kinds: Optional[list[Literal[generators.KINDS]]] = documented(None, doc=(
            "Several generators under one teacher: every kind listed (which must include `kind`) mixes the same "
            "planned pairs, weights and seeds; `kind`'s mixes are the job folder's own, each other kind's go to a "
            "release of its own, OUT/generators/<kind>/, labelled by the same teacher head (see stages/jobdir.py). "
            "They share the settings below: at most one diffusion kind. null = `kind` only"))
    path: Optional[str] = path_field(default=None, doc="local diffusers-layout folder (or .ckpt)")
    size: int = ranged(640, ge=8, multiple_of=8, doc="generated image side (px)")
    steps: int = ranged(30, ge=1, doc="denoising steps")
    guidance: float = ranged(3.0, ge=0, doc="classifier-free guidance scale (<= 1: no guidance)")
    scheduler: Literal["ddim", "dpm", "euler", "pndm", "ldm-ddim", "ldm-ddim-fork"] = documented("ddim", doc=(
            "ddim/dpm/euler/pndm: diffusers' schedulers on the folder's scheduler config (ddim: 'leading' + "
            "steps_offset 1: S=30 runs 958 … 1); ldm-ddim: CompVis ldm's DDIM, 'uniform' (S=30 runs 31 steps, 991 … "
            "1); ldm-ddim-fork: the same without its largest timestep, as ImageMixer's own repo runs it (S=30: 958 … "
            "1). See models.ldm_ddim."))
    dtype: Dtype = documented("fp16", doc="on GPU; the CPU always runs fp32")
    batch_size: int = ranged(8, ge=1, doc="images per denoising batch (CFG doubles it)")
    tokens: int = ranged(5, ge=2, doc="image-mixer: conditioning slots (2 live, the rest zeros), as trained")
    noise_level: int = ranged(0, ge=0, le=999, doc="unclip only: noise added to the mixed embedding")
    interpolation: Literal["slerp", "lerp"] = documented("slerp", doc=(
            "one-token generators (sd-image-variations, unclip)"))
    prompts: Optional[list[str]] = documented(None, doc=(
            "prompted generators (sd-text): the dataset's prompt templates, each with '{class}' (the class name); "
            "each sample draws one from (seed, uid). null = ['a photo of a {class}.']"))
    prompted_path: Optional[str] = path_field(default=None, doc=(
            "sd-text's folder when it is a member of generator.kinds beside an image-conditioned diffusion kind "
            "(whose folder is `path`); null = `path`"))
    compile: bool = documented(False, doc=(
            "speed switches (the output does not depend on them beyond float rounding): torch.compile the UNet once "
            "per worker, fixed shapes (GPU)"))
    cuda_graphs: bool = documented(False, doc="with compile: CUDA graphs over the UNet call (mode reduce-overhead)")
    attention: Literal["sdpa", "classic"] = documented("sdpa", doc=(
            "SDPA (flash / memory-efficient kernels) or the plain math"))
    vae_slice: int = ranged(8, ge=1, doc="images per VAE decode call (its activations dominate memory)")

    @property
    def templates(self) -> list[str]:
        """The prompt templates of a prompted generator (the configured ones, or the default)."""
        return self.prompts if self.prompts is not None else list(DEFAULT_PROMPTS)

    def folder_key(self, kind: str) -> str:
        """The key holding `kind`'s model folder: `prompted_path` for a prompted member that has one."""
        prompted_member = kind in generators.PROMPTED_KINDS and kind != self.kind
        return "prompted_path" if prompted_member and self.prompted_path is not None else "path"

    def check(self):
        if self.prompts is not None:
            if not self.prompts:
                raise ConfigError("prompts: give at least one template (or null for the default)")
            for i, template in enumerate(self.prompts):
                if generators.CLASS_FIELD not in template:
                    raise ConfigError(f"prompts[{i}]: template {template!r} has no {generators.CLASS_FIELD} "
                                      f"(where the class name goes)")
        if self.prompted_path is not None and (self.kind in generators.PROMPTED_KINDS or not self.kinds or
                                               not any(k in generators.PROMPTED_KINDS for k in self.kinds)):
            raise ConfigError("prompted_path: only for a prompted member of generator.kinds (sd-text beside "
                              "another generator.kind); otherwise give generator.path")
        if self.kinds is not None:
            if self.kind not in self.kinds or len(set(self.kinds)) != len(self.kinds):
                raise ConfigError(f"kinds: must list generator.kind {self.kind!r} (whose mixes stay in the job "
                                  f"folder) and each kind once, got {self.kinds}")
            on_path = [k for k in self.kinds if k in generators.DIFFUSION_KINDS and self.folder_key(k) == "path"]
            if len(on_path) > 1:
                raise ConfigError(f"kinds: at most one diffusion generator on generator.path (a prompted one "
                                  f"may have generator.prompted_path), got {self.kinds}")
        for kind in self.kinds or [self.kind]:
            if kind in generators.DIFFUSION_KINDS and getattr(self, self.folder_key(kind)) is None:
                raise ConfigError(f"{self.folder_key(kind)}: the {kind!r} generator needs a model folder")
        for key in ("path", "prompted_path"):
            require_file(getattr(self, key), key)
            check_weights_header(getattr(self, key), key)
        if self.scheduler == "ldm-ddim-fork" and self.steps < 2:
            raise ConfigError("steps: ldm-ddim-fork drops the largest of its timesteps, so it needs at least 2")


@dataclass
class GenerateConfig:
    """The distributed stage: shards, workers, what is stored per sample."""
    shard_size: int = ranged(256, ge=1, doc="samples per shard (one Ray task each)")
    workers: Optional[int] = ranged(None, ge=1, doc="actors; default: one per GPU, else 1")
    cpus_per_worker: float = ranged(1.0, gt=0, doc="Ray CPUs per actor (also its torch threads on the CPU)")
    logits: Literal["full", "topk"] = documented("full", doc=(
            "teacher logits stored per view: all classes, or the top k"))
    topk: int = ranged(20, ge=1, doc="k when logits is 'topk' (the rest of the mass is stored too)")
    features: bool = documented(False, doc="store teacher features for feature distillation")
    max_retries: int = ranged(3, ge=0, doc="per shard, after its worker died, stalled or raised")
    max_restarts: int = ranged(8, ge=0, doc=(
            "worker replacements in the whole job (after a death, a stall or a failed start); one more ends the job"))
    deadline_s: Optional[float] = ranged(None, gt=0, doc=(
            "a shard running longer is cancelled (its worker killed) and redone elsewhere; null = derived"))
    deadline_factor: float = ranged(4.0, gt=1, doc=(
            "derived deadline: this multiple of the median shard time measured so far"))
    deadline_floor_s: float = ranged(600.0, gt=0, doc=(
            "derived deadline, never below: covers loading the models and a first shard"))
    start_deadline_s: float = ranged(900.0, gt=0, doc=(
            "a worker that has not loaded its models by then is killed and replaced"))
    address: Optional[str] = documented(None, doc="existing Ray cluster; null = start a local one")


@dataclass
class ReleaseConfig:
    """What the dataset card says."""
    name: str = documented("tsdistill-release", doc="the dataset card's name")
    license: str = documented("other", doc="the source images' license decides")
    description: str = documented("", doc="a paragraph for the dataset card")


@dataclass
class ExpectedCounts:
    """A dataset's published sizes, for `tsd plan --dry-run` before it is ingested (never used to
    plan: when data.index exists, its counts win)."""
    train: int = ranged(ge=0, doc="training images")
    val: int = ranged(ge=0, doc="validation images")
    classes: int = ranged(ge=1, doc="classes")
    task: Literal[TASKS] = documented(CLASSIFICATION, doc=(
            "what the dataset is for (the index says it once ingested): segmentation adds masks and dense "
            "teacher logits to the estimate"))


@dataclass
class JobConfig:
    """A generation job (`tsd probe|plan|generate|release JOB --out REL`)."""
    data: DataConfig
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    views: Views = field(default_factory=Views)
    plan: MixPlanConfig = field(default_factory=MixPlanConfig)
    generator: Optional[GeneratorConfig] = documented(None, doc="required unless plan.pool_size is 0")
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    seed: int = ranged(0, ge=0, doc="the global seed: every per-sample seed derives from it")
    expected_counts: Optional[ExpectedCounts] = documented(None, doc=(
            "dataset sizes for `tsd plan --dry-run` before ingest"))

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
