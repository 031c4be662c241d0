"""`tsd plan --dry-run`: what a job will make and what it will cost, before anything runs.

Sample and shard counts come from the ingested index when it exists, else from the job's
`expected_counts` (a dataset's published sizes, for a recipe whose data is not downloaded yet).
Disk size: the stored image (measured by encoding a natural-looking test image at the stored size
with the release's encoder settings) plus the teacher's outputs and the tar overhead. Segmentation:
the teacher's outputs are dense, K × (C or the top k + rest) × the patch grid (`generate.logits` and
`generate.topk` per location, as the worker stores them), and each real sample has its mask (a PNG
measured on a test mask of random regions at the stored size).
GPU time: from speeds measured on one H100 (ANCHORS below), scaled to the job's settings by a
compute model (UNet passes × FLOPs at the measured UNet throughput + VAE decode, ∝ (size/640)²),
at two speeds: the stock diffusers pipeline, and the fused worker's target.

This machine: its device is found without loading torch (an NVIDIA GPU named by nvidia-smi or the
driver's /proc files, else the CPU). A GPU's time is the H100's scaled by the ratio of peak dense
bf16 TFLOP/s (GPU_PEAK_TFLOPS, the vendors' data sheets; extrapolated). A CPU's time is the job's
FLOPs (the same compute model: UNet passes, VAE decode, CLIP and teacher forwards) at the fp32
matmul speed measured here for a fraction of a second with numpy: a measured speed, an extrapolated
time, and a lower bound (convolutions, attention and memory traffic run below a large matmul's rate).
"""
from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..config import JobConfig
from ..contract.configlib import ConfigError
from ..contract.generators import DIFFUSION_KINDS, PROMPTED_KINDS
from ..contract.images import encode_image, stored_size
from ..contract.progress import duration
from ..contract.tasks import CLASSIFICATION, SEGMENTATION
from ..models.ldm_ddim import unet_steps
from .segmentation import dense_topk

# Measured on one NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130), copied from anchors-h100-2026-11-27.json,
# which anchors_gpu.py made: both live in the team's shared bench folder (../shared/bench/ beside the
# repository), not in the repository. Keys named after that file's.
ANCHORS_SOURCE = "bench/anchors-h100-2026-11-27.json (one H100 80GB HBM3, torch 2.11.0+cu130)"
UNET640_TFLOP = 1.35279          # unet640_gflop_per_sample: one UNet pass, one 640 px latent
UNET_TFLOPS = {2: 70.76, 16: 251.53, 64: 266.73}  # unet640_fp16_b{2,16,64}_tflops, by UNet batch
VAE640_DECODE_TFLOP = 3.95913    # vae640_decode_gflop_per_img
VAE640_DECODE_S = 0.413285 / 16  # vae640_decode_b16_s, per image
STOCK_IMG_S = {1: 0.6678, 8: 2.6448}  # naive_pipeline_640_30step(_b8)_img_per_s: images per call → img/s
CLIP_L14_IMG_S = 2145.3          # clip_l14_img_per_s: parent embeddings
TEACHER_IMG_S = {"vit_giant_patch14_dinov2": 706.85, "vit_large_patch14_dinov2": 2467.27}  # 224 px, bf16
JPEG_ANCHOR = (500, 375, 90, 50647)  # jpeg_bytes_500x375: a real photo, 500×375, PIL quality 90
# The speed the fused generation worker is built to reach at the reference settings (the target).
FUSED_TARGET_IMG_S = 5.0
# Reference settings of the generation anchors: ImageMixer, 640 px, DDIM 30 steps, CFG on.
REF_SIZE, REF_STEPS = 640, 30

NPY_HEADER = 128         # bytes of a .npy header for a small 2-d array
TAR_MEMBER = 512 + 256   # a tar header per member, plus half a 512-byte block of padding on average
JSON_BASE, JSON_PER_VIEW = 330, 48  # the json member: fixed fields + one [x, y, w, h, flip] per view
# Spectral slope of the test image: 1/f^1.47 amplitude makes a 500×375 image weigh what the anchor's
# real photo weighs at the same JPEG settings (tests check the calibration).
TEST_IMAGE_SLOPE = 1.47


@dataclass(frozen=True)
class Counts:
    train: int
    val: int
    classes: int
    source: str           # where the counts come from, for the printout
    real_size: tuple      # a typical stored real image (width, height)
    task: str = CLASSIFICATION


def source_counts(job: JobConfig, n_train: int | None = None, n_val: int | None = None) -> Counts:
    """Counts from the ingested index, else the job's `expected_counts`; `n_train`/`n_val`, when
    given, replace the train/val counts (what-if estimates)."""
    from ..sources.index import read_source_index

    store = job.data.store_size
    assumed_size = stored_size(4 * store, 3 * store, store)  # assumption: 4:3 sources, big enough
    if os.path.isfile(job.data.index):
        index = read_source_index(job.data)
        train = index.split("train")
        size = stored_size(int(np.median([r["width"] for r in train])), int(np.median([r["height"] for r in train])),
                               store) if train else assumed_size
        counts = Counts(len(train), len(index.split("val")), len(index.classes), f"index {job.data.index}", size,
                        index.task)
    elif job.expected_counts is not None:
        hint = job.expected_counts
        classes = len(job.data.classes) if job.data.classes else hint.classes
        note = " (all classes; data.classes restricts them)" if job.data.classes else ""
        counts = Counts(hint.train, hint.val, classes,
                        f"expected_counts{note} (index not found: {job.data.index})", assumed_size, hint.task)
    else:
        raise ConfigError(f"data.index: index not found: {job.data.index}: give counts (expected_counts: "
                          "{train: N, val: M, classes: C}) or run `tsd ingest` first")
    if n_train is None and n_val is None:
        return counts
    return Counts(counts.train if n_train is None else n_train, counts.val if n_val is None else n_val,
                  counts.classes, f"arguments (classes from {counts.source})", counts.real_size, counts.task)


# -- disk ---------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def image_bytes(width: int, height: int, image_format: str, quality: int) -> int:
    """Bytes of a natural-looking test image of that size, encoded as the worker encodes."""
    from PIL import Image

    return len(encode_image(Image.fromarray(natural_test_image(width, height)), image_format, quality))


def natural_test_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: 1/f noise with correlated colour channels (natural images' power law)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.sqrt(fx ** 2 + fy ** 2)
    freq[0, 0] = 1.0
    amplitude = freq ** -TEST_IMAGE_SLOPE
    amplitude[0, 0] = 0.0

    def field():
        phase = np.exp(2j * np.pi * rng.random(amplitude.shape))
        return np.fft.irfft2(amplitude * phase, s=(height, width))

    luminance = field()
    x = np.stack([0.8 * luminance + 0.2 * field() for _ in range(3)], axis=-1)
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 45 * x, 0, 255).astype(np.uint8)


def teacher_bytes(job: JobConfig, views: int, classes: int, feature_dim: int | None) -> int:
    gen = job.generate
    if gen.logits == "topk" and gen.topk < classes:
        out = 2 * (NPY_HEADER + TAR_MEMBER) + views * gen.topk * (4 + 2)
    else:
        out = NPY_HEADER + TAR_MEMBER + views * classes * 2
    if feature_dim:
        out += NPY_HEADER + TAR_MEMBER + views * feature_dim * 2
    return out


def dense_bytes(job: JobConfig, views: int, classes: int, grid: tuple) -> int:
    """The dense teacher members of one sample: full float16 [K, C, h, w], or per location the top k
    (uint8 indices, float16 logits) and the float16 rest (contract.samples.encode_dense)."""
    locations = views * grid[0] * grid[1]
    if (k := dense_topk(job, classes)) is not None:
        index_bytes = 1 if classes <= 256 else 2
        return 3 * (NPY_HEADER + TAR_MEMBER) + locations * (k * (index_bytes + 2) + 2)
    return NPY_HEADER + TAR_MEMBER + locations * classes * 2


@lru_cache(maxsize=64)
def mask_bytes(width: int, height: int, regions: int = 12, seed: int = 0) -> int:
    """Bytes of a stored mask at that size: a test mask of `regions` random rectangles of random
    classes over a background, as `contract.masks.store_mask` encodes it."""
    from ..contract.masks import store_mask

    rng = np.random.Generator(np.random.PCG64(seed))
    mask = np.zeros((height, width), np.uint8)
    for _ in range(regions):
        x0, y0 = rng.integers(width), rng.integers(height)
        w, h = rng.integers(1, max(2, width // 3)), rng.integers(1, max(2, height // 3))
        mask[y0:y0 + h, x0:x0 + w] = rng.integers(1, 150)
    return len(store_mask(mask, max(width, height))) + TAR_MEMBER


def sample_bytes(job: JobConfig, size: tuple, views: int, classes: int, feature_dim: int | None,
                 grid: tuple | None = None, mask: bool = False) -> int:
    """One sample's bytes; `grid`: a segmentation job's patch grid (dense teacher members), `mask`: a
    real segmentation sample (its mask member)."""
    image = image_bytes(size[0], size[1], job.data.image_format, job.data.quality) + TAR_MEMBER
    meta = JSON_BASE + JSON_PER_VIEW * views + TAR_MEMBER
    if grid is None:
        return image + meta + teacher_bytes(job, views, classes, feature_dim)
    features = NPY_HEADER + TAR_MEMBER + views * feature_dim * 2 if feature_dim else 0
    return (image + meta + dense_bytes(job, views, classes, grid) + features
            + (mask_bytes(size[0], size[1]) if mask else 0))


def teacher_feature_dim(job: JobConfig) -> int:
    """The teacher's feature size, from the architecture built on the meta device (no weights)."""
    from ..models.teacher import describe_backbone

    return describe_backbone(job.teacher)["feature_dim"]


# -- GPU time -----------------------------------------------------------------------------------
def unet_tflops(unet_batch: int) -> tuple[int, float]:
    """The measured UNet throughput at the measured batch nearest (in log scale) to `unet_batch`."""
    nearest = min(UNET_TFLOPS, key=lambda b: abs(math.log(b) - math.log(max(unet_batch, 1))))
    return nearest, UNET_TFLOPS[nearest]


def mix_seconds_model(size: int, steps: int, guided: bool, batch: int) -> float:
    """Compute model of one mix: UNet passes (×2 with CFG) at the measured throughput + VAE decode."""
    area = (size / REF_SIZE) ** 2
    passes = steps * (2 if guided else 1)
    _, tflops = unet_tflops(batch * (2 if guided else 1))
    return passes * UNET640_TFLOP * area / tflops + VAE640_DECODE_S * area


def teacher_img_s(job: JobConfig) -> tuple[float, str]:
    known = TEACHER_IMG_S.get(job.teacher.arch)
    arch = job.teacher.arch if known else "vit_giant_patch14_dinov2"
    rate = TEACHER_IMG_S[arch] * (224 / job.teacher.img_size) ** 2  # ∝ tokens
    note = f"teacher {arch} at {TEACHER_IMG_S[arch]:.0f} img/s at 224 px (bf16), × (224/{job.teacher.img_size})²"
    if not known:
        note += f"; {job.teacher.arch} not measured: assumed as slow as ViT-g/14"
    return rate, note


def mix_seconds(job: JobConfig) -> tuple[dict, list[str]]:
    """GPU seconds per mix at the stock-pipeline speed and at the fused-worker target, and how."""
    gen = job.generator
    if gen is None:
        return {"stock": 0.0, "target": 0.0}, []
    if gen.kind not in DIFFUSION_KINDS:
        return {"stock": 0.0, "target": 0.0}, [f"{gen.kind}: pixel-space mixes, made on the CPU (no GPU time)"]
    guided = gen.guidance > 1.0
    steps = unet_steps(gen.scheduler, gen.steps)   # ldm's DDIM: its own table (S=30 runs 31)
    model_s = mix_seconds_model(gen.size, steps, guided, gen.batch_size)
    stock_batch = 1 if gen.batch_size == 1 else 8   # the two measured stock settings
    stock = model_s / mix_seconds_model(REF_SIZE, REF_STEPS, True, stock_batch) / STOCK_IMG_S[stock_batch]
    target = model_s / mix_seconds_model(REF_SIZE, REF_STEPS, True, gen.batch_size) / FUSED_TARGET_IMG_S
    prompted = gen.kind in PROMPTED_KINDS
    clip = 0.0 if prompted else 2 / CLIP_L14_IMG_S   # both parents embedded (a prompt's text encoding: negligible)
    unet_batch, unet_tf = unet_tflops(gen.batch_size * (2 if guided else 1))
    notes = [
        f"compute model per mix: {steps} steps × {2 if guided else 1} (CFG) UNet passes × "
        f"{UNET640_TFLOP:.3f} TFLOP at {unet_tf:.1f} TFLOP/s (measured, UNet batch {unet_batch}) + VAE decode "
        f"{VAE640_DECODE_TFLOP:.2f} TFLOP ({VAE640_DECODE_S:.3f} s), × ({gen.size}/640)² = {model_s:.3f} s",
        f"stock diffusers pipeline: {STOCK_IMG_S[stock_batch]:.2f} img/s measured at 640 px, 30 steps, CFG, "
        f"{stock_batch} image(s) per call; scaled to these settings by the compute model",
        f"fused-worker target: {FUSED_TARGET_IMG_S:.0f} img/s at 640 px, 30 steps, CFG; scaled likewise",
        "plus one CLIP text encoding per sample (not counted: a few GFLOP)" if prompted else
        f"plus 2 CLIP ViT-L/14 embeddings per mix at {CLIP_L14_IMG_S:.0f} img/s",
    ]
    if gen.kind == "unclip":
        notes.append("unclip: assumed the SD-1.x UNet's cost (SD 2.1's UNet is of similar size)")
    return {"stock": stock + clip, "target": target + clip}, notes


# -- this machine ---------------------------------------------------------------------------------
# Peak dense bf16 (fp16 where the card has no bf16) tensor TFLOP/s without sparsity, from the vendors'
# data sheets: a GPU of this list gets the H100 estimate scaled by 989 / its peak (matched by name).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
                   "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0, "A6000": 155.0}
H100_PEAK_TFLOPS = 989.0
CLIP_L14_TFLOP = 0.156           # CLIP ViT-L/14 vision at 224 px: 2 × 304 M parameters × 257 tokens
VIT_SIZES = {"giant": (1536, 40), "large": (1024, 24), "base": (768, 12), "small": (384, 12), "tiny": (192, 12)}


def teacher_tflop(job: JobConfig) -> tuple[float, str]:
    """TFLOP of one teacher forward at the configured size: a ViT's 2 × 12·depth·dim² per token plus
    attention, with the width and depth from model_kwargs or the arch's name; a model that is not a
    ViT of that naming is assumed a ViT-g/14."""
    import re

    arch, kwargs = job.teacher.arch, job.teacher.model_kwargs or {}
    size = next((name for name in VIT_SIZES if f"_{name}_" in arch), None)
    patch = re.search(r"patch(\d+)", arch)
    if not arch.startswith("vit") or patch is None or (size is None and "embed_dim" not in kwargs):
        dim, depth, patch_px, note = 1536, 40, 14, f"{arch}: not a ViT known here, assumed a ViT-g/14"
    else:
        dim, depth = VIT_SIZES.get(size, (kwargs.get("embed_dim"), kwargs.get("depth", 12)))
        dim, depth = kwargs.get("embed_dim", dim), kwargs.get("depth", depth)
        patch_px, note = int(patch.group(1)), f"{arch}: dim {dim}, depth {depth}"
    tokens = (job.teacher.img_size // patch_px) ** 2 + 1
    flop = 2 * depth * 12 * dim * dim * tokens + 4 * depth * tokens * tokens * dim
    return flop / 1e12, f"{note}, {tokens} tokens: {flop / 1e9:.3g} GFLOP per view"


# Parameters of the published models the compute model's FLOPs are of (SD-1.x UNet, its VAE, CLIP ViT-L/14's
# vision tower): a generator folder whose weights hold fewer (the demo's tiny ones) scales its FLOPs down.
PUBLISHED_PARAMETERS = {"unet": 859.52e6, "vae": 83.65e6, "image_encoder": 303.97e6}


def generator_scales(job: JobConfig) -> tuple[dict, str]:
    """{part: its parameters / the published model's} of the configured generator folder's weights
    (read from the safetensors headers; 1 for a part not found), and a note."""
    from ..contract.weights import safetensors_parameters

    gen, scales = job.generator, {part: 1.0 for part in PUBLISHED_PARAMETERS}
    if gen is None or not gen.path or not os.path.isdir(gen.path):
        return scales, "the published models' sizes (no generator folder here)"
    found = {}
    for part, published in PUBLISHED_PARAMETERS.items():
        n = safetensors_parameters(os.path.join(gen.path, part))
        if n:
            scales[part], found[part] = n / published, n
    if not found:
        return scales, "the published models' sizes (no safetensors weights in the generator folder)"
    return scales, "the generator folder's parameters against the published models': " + ", ".join(
        f"{part} {n / 1e6:.3g} M / {PUBLISHED_PARAMETERS[part] / 1e6:.0f} M" for part, n in found.items())


def mix_tflop(job: JobConfig, scales: dict | None = None) -> float:
    """TFLOP of one mix by the compute model (0 for the pixel-space mixes); `scales`
    (`generator_scales`): each part's FLOPs scaled by its parameters against the published model's."""
    gen = job.generator
    if gen is None or gen.kind not in DIFFUSION_KINDS:
        return 0.0
    scales = scales or {}
    guided = gen.guidance > 1.0
    area = (gen.size / REF_SIZE) ** 2
    passes = unet_steps(gen.scheduler, gen.steps) * (2 if guided else 1)
    clip = 0.0 if gen.kind in PROMPTED_KINDS else 2 * CLIP_L14_TFLOP * scales.get("image_encoder", 1.0)
    return (passes * UNET640_TFLOP * scales.get("unet", 1.0) + VAE640_DECODE_TFLOP * scales.get("vae", 1.0)) * area \
        + clip


def local_gpu() -> str | None:
    """The name of this machine's first NVIDIA GPU, found without torch (nvidia-smi, else the
    driver's /proc files); None without one (or with CUDA_VISIBLE_DEVICES empty)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=10)
            names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
            if done.returncode == 0 and names:
                return names[0]
        except (OSError, subprocess.SubprocessError):
            pass
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        with open(info) as f:
            for line in f:
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    return None


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def measure_matmul_gflops(seconds: float = 0.3, n: int = 512) -> float:
    """The fp32 matmul speed of this CPU (numpy's BLAS, its threads), measured for about `seconds`."""
    rng = np.random.Generator(np.random.PCG64(0))
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b   # warm up the BLAS threads
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or count < 2:
        a @ b
        count += 1
    return 2 * n ** 3 * count / elapsed / 1e9


def this_machine(job: JobConfig, gpu_seconds_h100: dict, mix_flop: float, teacher_flop: float,
                 gpu: str | None, gflops: float | None = None) -> dict:
    """The estimate for this machine: `gpu` (local_gpu()) scales the H100's seconds by peak TFLOP/s;
    without one, the job's TFLOP (`mix_flop`, `teacher_flop`) at this CPU's measured matmul speed
    (`gflops`, measured here when None). Each number says whether it was measured or extrapolated."""
    if gpu is not None:
        key = next((k for k in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True) if k in gpu.upper()), None)
        if key is None:
            return {"device": gpu, "kind": "gpu", "seconds": None,
                    "notes": [f"{gpu}: not in the table of peak TFLOP/s (estimate.GPU_PEAK_TFLOPS): no estimate; "
                              "`tsd bench generate` measures this GPU"]}
        scale = H100_PEAK_TFLOPS / GPU_PEAK_TFLOPS[key]
        seconds = {part: s * scale for part, s in gpu_seconds_h100.items()}
        return {"device": gpu, "kind": "gpu", "seconds": seconds,
                "notes": [f"extrapolated: the H100 estimate (fused-worker target) × {H100_PEAK_TFLOPS:.0f} / "
                          f"{GPU_PEAK_TFLOPS[key]:.0f} peak bf16 TFLOP/s ({key}, data sheet)"]}
    measured = gflops is None
    gflops = measure_matmul_gflops() if gflops is None else gflops
    seconds = {"mix": mix_flop * 1e3 / gflops, "teacher": teacher_flop * 1e3 / gflops}
    return {"device": f"CPU, {cpu_cores()} cores", "kind": "cpu", "seconds": seconds, "gflops": gflops,
            "notes": [f"{'measured here' if measured else 'given'}: {gflops:.1f} GFLOP/s, numpy fp32 matmul on "
                      "this CPU",
                      f"extrapolated: the job's {mix_flop + teacher_flop:.3g} TFLOP (mixes {mix_flop:.3g}, "
                      f"teacher {teacher_flop:.3g}) at that speed; a lower bound: convolutions, attention and "
                      "memory traffic run below a large matmul's rate, and the CPU runs fp32"]}


def estimate(job: JobConfig, n_train: int | None = None, n_val: int | None = None, here: bool = True,
             gpu: str | None = None, gflops: float | None = None) -> dict:
    """Counts, shards, disk bytes and GPU-seconds of a job (see the module doc for the model), and,
    with `here`, the time on this machine (`this_machine`; `gpu`, `gflops`: given instead of found
    and measured, for tests)."""
    counts = source_counts(job, n_train, n_val)
    k = job.views.k
    # generator.kinds: every generator makes the planned pool (the others in releases of their own)
    kinds = (job.generator.kinds or [job.generator.kind]) if job.generator is not None else []
    pool = job.plan.resolve_pool(counts.train)
    mixes = pool * len(kinds)
    rows = {"real/train": counts.train, "real/val": counts.val, "mix/train": mixes}
    views = {"real/train": k, "real/val": 1, "mix/train": k}
    shards = {"real/train": math.ceil(counts.train / job.generate.shard_size),
              "real/val": math.ceil(counts.val / job.generate.shard_size),
              "mix/train": math.ceil(pool / job.generate.shard_size) * len(kinds)}   # each kind shards its pool

    feature_dim = teacher_feature_dim(job) if job.generate.features else None
    gen = job.generator
    mix_size = stored_size(gen.size, gen.size, job.data.store_size) if gen else (0, 0)
    sizes = {"real/train": counts.real_size, "real/val": counts.real_size, "mix/train": mix_size}
    grid = None
    if counts.task == SEGMENTATION:
        from ..models.teacher import teacher_grid

        grid = tuple(teacher_grid(job.teacher))
    per_sample = {key: sample_bytes(job, sizes[key], views[key], counts.classes, feature_dim, grid,
                                    mask=grid is not None and key.startswith("real"))
                  for key in rows if rows[key]}
    disk = {key: per_sample[key] * rows[key] for key in per_sample}

    per_mix, mix_notes = mix_seconds(job)
    if len(kinds) > 1:  # the average over the kinds: each makes 1/len(kinds) of the mixes
        parts = [per_mix if kind == job.generator.kind
                 else mix_seconds(replace(job, generator=replace(job.generator, kind=kind)))[0] for kind in kinds]
        per_mix = {speed: sum(p[speed] for p in parts) / len(kinds) for speed in per_mix}
        mix_notes = mix_notes + [f"generator.kinds: the pool made by each of {', '.join(kinds)} (mix/train counts "
                                 "them all; the others' releases go to generators/<kind>)"]
    teacher_rate, teacher_note = teacher_img_s(job)
    teacher_passes = k * (counts.train + mixes) + counts.val   # the labels: K views each, 1 per val image
    if job.probe.mode == "finetune":  # a forward and a backward (≤ 2 forwards) per image per epoch
        probe_passes = 3 * job.probe.epochs * counts.train + counts.val
        probe_note = (f"probe: finetune, {job.probe.epochs} epochs × (forward + backward, counted as 3 forward "
                      "passes: an upper bound, only the last blocks are back-propagated) per train image + val")
    else:
        probe_passes = job.probe.views * counts.train + counts.val  # the probe's feature pass
        probe_note = f"probe: {job.probe.views} view(s) per train image + val"
    teacher_s = (teacher_passes + probe_passes) / teacher_rate
    gpu_seconds = {speed: {"mix": mixes * per_mix[speed], "teacher": teacher_s} for speed in per_mix}
    if here:
        member_jobs = [job if kind == job.generator.kind else replace(job, generator=replace(job.generator, kind=kind))
                       for kind in kinds]
        scales, scale_note = generator_scales(job)
        mixes_tflop = pool * sum(mix_tflop(j, scales) for j in member_jobs)
        per_view, teacher_note_here = teacher_tflop(job)
        machine = this_machine(job, gpu_seconds["target"], mixes_tflop, (teacher_passes + probe_passes) * per_view,
                               local_gpu() if gpu is None else (gpu or None), gflops)
        if machine["kind"] == "cpu":
            machine["notes"].append(f"teacher FLOPs: {teacher_note_here}")
            if mixes_tflop:
                machine["notes"].append(f"mix FLOPs: the compute model above, scaled by {scale_note}")
    assumptions = [
        f"speeds measured on one H100: {ANCHORS_SOURCE}",
        *mix_notes,
        teacher_note,
        f"teacher passes: {k} views × (real train + mixes) + 1 per val image; {probe_note}",
        f"disk: stored images measured by encoding a 1/f test image at the stored size "
        f"({job.data.image_format} q{job.data.quality}); real images assumed "
        f"{counts.real_size[0]}×{counts.real_size[1]} after storing",
        "not counted: CPU decoding/encoding, model loading, Ray start-up, student training",
    ]
    if grid is not None:
        top = dense_topk(job, counts.classes)
        assumptions.append(
            f"segmentation: dense teacher logits at the {grid[0]}×{grid[1]} patch grid per view, "
            + (f"top-{top} per location + the rest mass" if top else "all classes, float16")
            + f" ({human_bytes(dense_bytes(job, k, counts.classes, grid))} per train sample); a mask per real "
            "sample, measured on a test mask of 12 random regions")
    return {
        "counts_from": counts.source,
        "num_classes": counts.classes,
        "task": counts.task,
        **({"dense_grid": list(grid)} if grid is not None else {}),
        "counts": rows,
        "shards": shards,
        "views": views,
        "bytes_per_sample": per_sample,
        "disk_bytes": disk,
        "disk_total": sum(disk.values()),
        "seconds_per_mix": per_mix,
        "gpu_seconds": gpu_seconds,
        "gpu_hours": {speed: sum(parts.values()) / 3600 for speed, parts in gpu_seconds.items()},
        "assumptions": assumptions,
        **({"here": machine} if here else {}),
    }


def human_bytes(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.0f} {units[i]}" if i == 0 else f"{n:.1f} {units[i]}"


def format_estimate(job: JobConfig, est: dict) -> str:
    lines = [f"dry run: {job.release.name} — nothing is written",
             f"counts from {est['counts_from']}; {est['num_classes']} classes" + (f"; {est['task']}" if est['task'] != CLASSIFICATION else ""),
             "",
             f"{'kind/split':<12}{'samples':>9}{'shards':>8}{'views':>7}{'per sample':>12}{'disk':>11}"]
    for key, n in est["counts"].items():
        per = est["bytes_per_sample"].get(key, 0)
        lines.append(f"{key:<12}{n:>9,}{est['shards'][key]:>8}{est['views'][key]:>7}"
                     f"{human_bytes(per):>12}{human_bytes(per * n):>11}")
    lines.append(f"{'total':<12}{sum(est['counts'].values()):>9,}{sum(est['shards'].values()):>8}"
                 f"{'':>19}{human_bytes(est['disk_total']):>11}")
    lines += ["", f"{'GPU-hours (one H100)':<30}{'mixes':>9}{'teacher':>9}{'total':>9}"]
    labels = {"stock": "at the stock-pipeline speed", "target": "at the fused-worker target"}
    for speed, parts in est["gpu_seconds"].items():
        lines.append(f"{labels[speed]:<30}{parts['mix'] / 3600:>9.2f}{parts['teacher'] / 3600:>9.2f}"
                     f"{est['gpu_hours'][speed]:>9.2f}")
    if est["seconds_per_mix"]["stock"]:
        rates = {s: 1 / est["seconds_per_mix"][s] for s in ("stock", "target")}
        lines.append(f"(one mix: {est['seconds_per_mix']['stock']:.3f} s stock = {rates['stock']:.2f} img/s; "
                     f"{est['seconds_per_mix']['target']:.3f} s target = {rates['target']:.2f} img/s)")
    lines += format_here(est.get("here"))
    lines += ["", "assumptions:"] + [f"  - {a}" for a in est["assumptions"]]
    return "\n".join(lines)


def format_here(here: dict | None) -> list[str]:
    """The estimate for this machine: its time per part (rounded by `duration`) and how each number
    was had (measured or extrapolated)."""
    if here is None:
        return []
    lines = ["", f"{'this machine: ' + here['device']:<30}{'mixes':>11}{'teacher':>11}{'total':>11}"]
    if here["seconds"] is not None:
        s = here["seconds"]
        label = "extrapolated time" + (" (at least)" if here["kind"] == "cpu" else "")
        lines.append(f"{label:<30}{duration(s['mix']):>11}{duration(s['teacher']):>11}"
                     f"{duration(s['mix'] + s['teacher']):>11}")
    return lines + [f"  - {note}" for note in here["notes"]]


def print_estimate(job: JobConfig, n_train: int | None = None, n_val: int | None = None) -> dict:
    est = estimate(job, n_train, n_val)
    print(format_estimate(job, est))
    return est
