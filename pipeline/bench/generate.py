"""`tsd bench generate`: the fused generator against the stock diffusers pipeline, in one run, on
the same random-weight models (speed does not depend on the values), plus the teacher pass.

Timed, warm-up calls excluded, CUDA synchronised around each timed region:
  (a) the stock StableDiffusionImageVariationPipeline, one image per call (what a user would run),
  (b) the same pipeline with --batch images per call,
  (c) the fused `ImageMixer.mix` at --batch (5-slot conditioning, both CFG branches in one UNet
      call, per-sample seeds, chunked VAE decode),
  (d) the teacher forward: DINOv2 ViT-g/14 at 224 px bf16 (imagemixer) or the tiny teacher (tiny).
FLOPs per generated image (torch.utils.flop_counter): one UNet call at batch 1 × 2·steps (the
two CFG branches) + one VAE decode. The FLOP limit divides a matmul ceiling measured in the same
run (bf16/fp16 8192³ on GPU, fp32 1024³ on CPU) by those FLOPs.

Sizes: `tiny` = the tiny layout of the tests (64 px, fast on a CPU); `imagemixer` = real-size SD-1.x
image-variation UNet (320/640/1280/1280, cross-attention 768, 8 heads), SD VAE and CLIP ViT-L/14
vision (projection 768), as the shared folder's anchors_gpu.py (../shared/bench/, outside the
repository), at ImageMixer's demo settings (640 px, 30 DDIM
steps, guidance 3).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..contract.device import resolve_device, torch_dtype
from ..contract.errors import UserError
from ..runtime import quiet_libraries


@dataclass(frozen=True)
class BenchSize:
    image: int            # generated side (px)
    steps: int
    guidance: float
    batch: int            # images per call for (b) and (c)
    images: int           # images timed per method
    teacher_batch: int


SIZES = {"tiny": BenchSize(image=64, steps=4, guidance=3.0, batch=4, images=8, teacher_batch=32),
         "imagemixer": BenchSize(image=640, steps=30, guidance=3.0, batch=8, images=16, teacher_batch=256)}
TEACHER_IMAGEMIXER = ("vit_giant_patch14_dinov2", 224)


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--batch", type=int, help="images per call for the batched stock pipeline and the fused generator")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--images", type=int, help="images timed per method (rounded up to whole batches)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="generation dtype on GPU (the CPU runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fused generator's UNet (GPU)")
    p.add_argument("--channels-last", action="store_true", help="also time the fused generator with channels_last")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", default=None, help="also write the results to this file")


# -- models (random weights, real layouts) --------------------------------------------------------
def build_imagemixer_size(folder: Path, dtype: torch.dtype) -> Path:
    """Real-size ImageMixer in the SD image-variations layout, random weights (as the shared anchors_gpu.py)."""
    from diffusers import AutoencoderKL, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..testing.tiny import sd_ddim_scheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=80, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=640)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=768))
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=sd_ddim_scheduler(),
        feature_extractor=CLIPImageProcessor(), safety_checker=None, requires_safety_checker=False)
    path = folder / "imagemixer"
    pipe.to(dtype).save_pretrained(path)   # saved in the run's dtype: half the bytes to write and read
    return path


def build_models(size: str, folder: Path, dtype: torch.dtype) -> Path:
    if size == "tiny":
        from ..testing.tiny import TinySizes, build_image_mixer

        return build_image_mixer(folder, TinySizes())
    return build_imagemixer_size(folder, dtype)


def build_teacher(size: str):
    """(timm backbone, input side, name) of the teacher pass."""
    import timm

    if size == "tiny":
        from ..testing.tiny import TinySizes

        t = TinySizes()
        model = timm.create_model(t.teacher_arch, pretrained=False, num_classes=0, img_size=t.teacher_img,
                                  **t.teacher_kwargs)
        return model.eval(), t.teacher_img, f"{t.teacher_arch} (tiny)"
    name, img = TEACHER_IMAGEMIXER
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=img).eval(), img, name


# -- measuring -------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, calls: int, device: torch.device, warmup: int = 1) -> float:
    """Seconds for `calls` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Measured matmul FLOP/s: the peak the FLOP limits are computed against."""
    if device.type == "cuda":
        n, dt = 8192, dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        warmup, iters = 3, 10
    else:
        n, dt, warmup, iters = 1024, torch.float32, 1, 5
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn_like(a)
    times = sorted(timed(lambda: a @ b, 1, device, warmup=warmup if i == 0 else 0) for i in range(iters))
    return 2 * n ** 3 / times[len(times) // 2], str(dt).removeprefix("torch.")


def load_stock(folder: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import StableDiffusionImageVariationPipeline

    stock = StableDiffusionImageVariationPipeline.from_pretrained(folder).to(device, dtype)
    stock.set_progress_bar_config(disable=True)
    return stock


def stock_rates(stock, pil, image: int, steps: int, guidance: float, batch: int, images: int,
                device: torch.device) -> dict:
    """Images/s of the stock pipeline at one image per call (`images` calls) and at `batch` per
    call (enough calls for `images`)."""
    common = dict(height=image, width=image, num_inference_steps=steps, guidance_scale=guidance, output_type="pil")
    calls = math.ceil(images / batch)
    with warnings.catch_warnings():   # random weights can give NaN pixels: the stock PIL cast warns
        warnings.simplefilter("ignore", RuntimeWarning)
        one = images / timed(lambda: stock(image=pil, **common), images, device)
        batched = calls * batch / timed(lambda: stock(image=[pil] * batch, **common), calls, device)
    return {"stock_1": one, "stock_batched": batched}


def random_parents(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 375, 500), generator=g, dtype=torch.uint8) for _ in range(n)]


def measure(args: argparse.Namespace) -> dict:
    from PIL import Image

    from ..config import GeneratorConfig
    from ..models.generators import ImageMixer

    quiet_libraries()
    t0 = time.time()
    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    size = SIZES[args.size]
    size = replace(size, **{k: v for k, v in (("batch", args.batch), ("steps", args.steps), ("images", args.images))
                            if v is not None})
    calls = math.ceil(size.images / size.batch)
    res = {"size": args.size, **asdict(size), "dtype": str(dtype).removeprefix("torch."), "compile": args.compile,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    peak, peak_dtype = matmul_ceiling(device, dtype)
    res["peak_tflops"], res["peak_dtype"] = peak / 1e12, peak_dtype

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_models(args.size, Path(tmp), dtype)
        cfg = GeneratorConfig(kind="image-mixer", path=str(folder), size=size.image, steps=size.steps,
                              guidance=size.guidance, scheduler="ddim", dtype=args.dtype, batch_size=size.batch,
                              compile=args.compile)
        gen = ImageMixer(cfg, device)
        stock = load_stock(folder, device, dtype)

        # FLOPs per image: the eager UNet (not a compiled wrapper) at batch 1 with ImageMixer's 5 slots
        unet = getattr(gen.unet, "_orig_mod", gen.unet)
        side = size.image // gen.vae_scale
        z = torch.randn(1, unet.config.in_channels, side, side, device=device, dtype=dtype)
        tokens = torch.randn(1, cfg.tokens, unet.config.cross_attention_dim, device=device, dtype=dtype)
        t = torch.tensor(500, device=device)
        unet_flops = count_flops(lambda: unet(z, t, encoder_hidden_states=tokens))
        vae_flops = count_flops(lambda: gen.vae.decode(z))
        unet_calls = size.steps * (2 if size.guidance > 1 else 1)
        per_image = unet_calls * unet_flops + vae_flops
        res["flops"] = {"unet_call_gflop": unet_flops / 1e9, "unet_calls": unet_calls,
                        "vae_decode_gflop": vae_flops / 1e9, "per_image_tflop": per_image / 1e12}
        res["flop_limit_img_per_s"] = peak / per_image

        parents_a, parents_b = random_parents(size.batch, 1), random_parents(size.batch, 2)
        pil = Image.fromarray(parents_a[0].permute(1, 2, 0).numpy())
        weights = [0.5] * size.batch
        seeds = list(range(size.batch))
        failures = []
        rates = stock_rates(stock, pil, size.image, size.steps, size.guidance, size.batch, size.images, device)
        rates["fused"] = calls * size.batch / timed(
            lambda: failures.extend(gen.mix(parents_a, parents_b, weights, seeds)[1]), calls, device)
        if args.channels_last:
            gen_cl = ImageMixer(cfg, device, channels_last=True)
            rates["fused_channels_last"] = calls * size.batch / timed(
                lambda: gen_cl.mix(parents_a, parents_b, weights, seeds), calls, device)
            del gen_cl
        res["non_finite_fused_images"] = sum(f is not None for f in failures)
        for name, rate in rates.items():
            res[f"{name}_img_per_s"] = rate
            res[f"{name}_fraction_of_limit"] = rate * per_image / peak
        res["fused_over_stock_1"] = rates["fused"] / rates["stock_1"]
        res["fused_over_stock_batched"] = rates["fused"] / rates["stock_batched"]
        del gen, stock
        if device.type == "cuda":
            torch.cuda.empty_cache()

    res["teacher"] = bench_teacher(args.size, size.teacher_batch, device, peak)
    res["wall_s"] = time.time() - t0
    return res


def bench_teacher(size: str, batch: int, device: torch.device, peak: float) -> dict:
    model, img, name = build_teacher(size)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return bench_teacher_module(model.to(device, dtype), batch, device, img, name, peak)


def bench_teacher_module(model, batch: int, device: torch.device, img: int, name: str,
                         peak: float | None = None) -> dict:
    """Images/s of a teacher backbone's features at `batch` in its own dtype (and the fraction of
    the matmul ceiling `peak` when given)."""
    from ..models.teacher import backbone_features

    dtype = next(model.parameters()).dtype
    x1 = torch.randn(1, 3, img, img, device=device, dtype=dtype)
    flops = count_flops(lambda: backbone_features(model, x1))
    x = torch.randn(batch, 3, img, img, device=device, dtype=dtype)
    calls = 5 if device.type == "cuda" else 2
    with torch.no_grad():
        seconds = timed(lambda: backbone_features(model, x), calls, device, warmup=2 if device.type == "cuda" else 1)
    rate = calls * batch / seconds
    out = {"arch": name, "img": img, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
           "gflop_per_image": flops / 1e9, "img_per_s": rate}
    if peak:
        out["fraction_of_limit"] = rate * flops / peak
    return out


def report(res: dict) -> str:
    f = res["flops"]
    lines = [
        f"bench generate: {res['size']} on {res['device']} ({res['dtype']}), {res['image']} px, {res['steps']} DDIM "
        f"steps, guidance {res['guidance']}, batch {res['batch']}, {res['images']} images per method, "
        f"compile {'on' if res['compile'] else 'off'}",
        f"matmul ceiling ({res['peak_dtype']}): {res['peak_tflops']:.3f} TFLOP/s",
        f"FLOPs per image: {f['unet_calls']} UNet calls x {f['unet_call_gflop']:.3f} GFLOP + VAE decode "
        f"{f['vae_decode_gflop']:.3f} GFLOP = {f['per_image_tflop']:.4f} TFLOP "
        f"(limit {res['flop_limit_img_per_s']:.3f} img/s)",
    ]
    rows = [("stock pipeline, 1 image/call", "stock_1"),
            (f"stock pipeline, {res['batch']} images/call", "stock_batched"),
            (f"fused ImageMixer.mix, batch {res['batch']}", "fused"),
            (f"fused ImageMixer.mix, batch {res['batch']}, channels_last", "fused_channels_last")]
    for label, key in rows:
        if f"{key}_img_per_s" in res:
            lines.append(f"{label + ':':52s} {res[key + '_img_per_s']:9.3f} img/s  "
                         f"{100 * res[key + '_fraction_of_limit']:6.2f}% of the FLOP limit")
    t = res["teacher"]
    label = f"teacher {t['arch']}, {t['img']} px {t['dtype']}, batch {t['batch']}:"
    lines.append(f"{label:52s} "
                 f"{t['img_per_s']:9.1f} img/s  {100 * t['fraction_of_limit']:6.2f}% of the FLOP limit "
                 f"({t['gflop_per_image']:.3f} GFLOP/img)")
    lines.append(f"ratio fused / stock-1:       {res['fused_over_stock_1']:.2f}x")
    lines.append(f"ratio fused / stock-batched: {res['fused_over_stock_batched']:.2f}x")
    if res["non_finite_fused_images"]:
        lines.append(f"note: {res['non_finite_fused_images']} fused images had non-finite pixels (random weights)")
    lines.append(f"wall {res['wall_s']:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for name in ("batch", "steps", "images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name}: must be at least 1")
    res = measure(args)
    print(report(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0
