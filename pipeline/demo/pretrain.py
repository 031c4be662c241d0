"""Stand-in "generic pretraining" for the demo's tiny DINOv2-style teacher.

The paper's premise is a teacher whose *frozen* features are already good, so that probing (a linear
head on CLS ‖ mean-patch) makes a strong task model. A random-weight ViT has no such features (a
probe reaches ~20% on the demo's ten shape classes). Real runs load DINOv2 weights; the demo cannot
download them, so `pretrain_teacher` trains the tiny backbone once, on the CPU, for a fixed number
of steps, and writes it back over its own safetensors file (same keys, same shapes).

What it learns from, and why that is an honest stand-in for generic pretraining:
- a procedural corpus written by `write_toy_dataset` with another seed (seed + CORPUS_SEED_OFFSET;
  every toy image has its own random stream from (seed, class, index), so no corpus image is a demo
  image), covering *all* of `CLASS_ORDER` (12 kinds, two of which the demo never asks about), at a
  wider range of sizes than the demo's. That is a real generic model's situation: pretrained on a
  large, broad collection of the same kind of images, never on the task's own labelled set;
- a supervised objective (cross-entropy over the 12 corpus kinds; a linear classifier on the very
  feature the probe uses, CLS ‖ mean patch tokens), through the view pipeline the teacher later
  sees: images stored as the demo stores them (short side 64, JPEG q90), `contract.views.sample_views`
  random resized crops + flips with the demo's view law, `contract.views.view_pixels`, the model's own
  normalisation. The classifier is thrown away; only the backbone is saved. Supervised pretraining
  is a legitimate kind of generic pretraining (ImageNet-21k ViTs, EVA's labelled stages) and by
  far the cheapest way to get linearly separable features on two CPU cores; DINO-style
  self-supervision would need many times more steps than the demo can spend.

Three initialisation choices make the short run count (each measured, none changes a key or shape):
the LayerScale gammas start at 1 instead of DINOv2's 1e-5 (which would idle the blocks for hundreds
of steps), the Linear layers are Xavier-initialised (timm's std-0.02 init starts the residual
branches near zero), and the patch embedding starts as the whitened principal components of corpus
patches (a data-dependent init computed from the corpus only).

Determinism: seeded classifier and inits, a seeded stream of batches and views, a fixed number of
steps and a fixed thread count: two runs with the same arguments give bit-identical weights on one
machine. `budget_s` never changes what is computed; it is only compared with the time taken.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..contract.images import decode_image, encode_image, stored_size
from ..contract.progress import Progress
from ..contract.views import Views, normalize, sample_views, view_pixels
from ..runtime import torch_threads
from ..testing.tiny import TinySizes
from ..testing.toydata import CLASS_ORDER, write_toy_dataset

CORPUS_SEED_OFFSET = 7_919   # corpus seed = seed + this: never the demo's seed 0
CORPUS_SIZES = (40, 128)     # wider than the demo's 48–96 px: a broader collection
VIEW_SPEC = Views(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True)   # the demo's view law
STORE_SIZE, STORE_QUALITY = 64, 90                                              # the demo's stored images
PCA_SAMPLES = 1024           # views whose patches give the patch-embedding init


def _create(sizes: TinySizes, weights_path: str | Path):
    """The teacher exactly as `load_backbone` builds it (timm, file loading, same kwargs)."""
    import timm

    return timm.create_model(sizes.teacher_arch, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(weights_path)),
                             num_classes=0, img_size=sizes.teacher_img, **sizes.teacher_kwargs)


def load_corpus(root: str | Path, store_size: int = STORE_SIZE) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every image of a toy tree as the demo stores it (short side ≤ store_size, JPEG q90), as
    uint8 CHW tensors, with labels in sorted-class order."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            with Image.open(path) as im:
                im = im.convert("RGB")
                size = stored_size(im.width, im.height, store_size)
                if size != im.size:
                    im = im.resize(size, Image.BICUBIC, reducing_gap=None)
                images.append(decode_image(encode_image(im, "jpg", STORE_QUALITY)))
            labels.append(label)
    return images, torch.tensor(labels, dtype=torch.long)


def _views(images, idx: torch.Tensor, seeds: torch.Tensor, img_size: int, mean, std) -> torch.Tensor:
    """One random view per drawn image, made by the pixel function both sides of the pipeline use."""
    out = []
    for i, s in zip(idx.tolist(), seeds.tolist()):
        img = images[i]
        view = sample_views(int(s), img.shape[2], img.shape[1], 1, VIEW_SPEC)[0]
        out.append(view_pixels(img, view, img_size))
    return normalize(torch.stack(out), mean, std)


def _draw(gen: torch.Generator, n_images: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(n_images, (batch,), generator=gen), torch.randint(2**62, (batch,), generator=gen)


@torch.no_grad()
def _init_for_pretraining(model, x: torch.Tensor, eps: float = 0.1) -> None:
    """LayerScale gammas to 1, Xavier Linear layers, whitened-PCA patch embedding (see the module doc)."""
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.fill_(1.0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(mod.weight)
    proj = model.patch_embed.proj
    patches = F.unfold(x, proj.kernel_size, stride=proj.stride).transpose(1, 2)
    patches = patches.reshape(-1, proj.weight[0].numel()).double()
    mu = patches.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((patches - mu).T))      # ascending
    n = proj.out_channels
    evals, evecs = evals.flip(0)[:n], evecs.flip(1)[:, :n]
    evecs = evecs * torch.where(evecs.sum(0) < 0, -1.0, 1.0)            # a fixed sign per component
    w = (evecs / torch.sqrt(evals + eps * evals.mean())).T
    proj.weight.copy_(w.reshape_as(proj.weight).float())
    proj.bias.copy_((-w @ mu).float())


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _optimise(params: list, steps: int, lr: float, weight_decay: float, warmup: int, what: str, budget_s: float,
              batch) -> tuple[list[float], int, int]:
    """AdamW (no decay on biases and norms), warmup then cosine, gradients clipped at 1: `steps` calls
    of `batch(step) -> (loss, correct, counted)`; (losses, correct and counted over the last 50 steps)."""
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    losses, correct, seen = [], 0, 0
    # a line now and one every TSD_PROGRESS_EVERY s (redrawn on a terminal): a slow machine is not a hang
    print(f"[demo] pretraining the tiny {what}: {steps} steps, about {budget_s:.0f} s on an idle 2-core "
          "machine, longer on a busy one", file=sys.stderr, flush=True)
    bar = Progress("teacher pretraining", steps, unit="steps")
    for step in range(steps):
        loss, right, counted = batch(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        losses.append(float(loss.detach()))
        if step >= steps - 50:
            correct += int(right)
            seen += int(counted)
    bar.close()
    return losses, correct, seen


def _save_in_place(weights_path: Path, model, before: dict, meta: dict) -> None:
    """The pretrained backbone over its own file: the same keys and shapes, `meta` in its metadata."""
    from safetensors.torch import save

    from ..contract.files import atomic_write

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if "pos_embed" in state and state["pos_embed"].shape != before["pos_embed"].shape:
        # trained at another input size: the position embeddings back to the file's grid (timm
        # resamples them again for any teacher img_size when the teacher loads)
        from timm.layers import resample_abs_pos_embed

        side = int(round((before["pos_embed"].shape[1] - model.num_prefix_tokens) ** 0.5))
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (side, side),
                                                    num_prefix_tokens=model.num_prefix_tokens).contiguous()
    if state.keys() != before.keys() or any(state[k].shape != before[k].shape for k in state):
        raise RuntimeError(f"{weights_path}: pretraining changed the checkpoint's keys or shapes")
    atomic_write(weights_path, save(state, metadata={"tsdistill_pretrain": json.dumps(meta, sort_keys=True)}))


def _note_time(t0: float, budget_s: float) -> float:
    seconds = time.time() - t0
    if seconds > budget_s:  # a note, not a failure: the weights are the same however long it took
        print(f"note: the tiny teacher's pretraining took {seconds:.0f} s (about {budget_s:.0f} s on an idle 2-core "
              "machine; a busy or slower one takes longer, with the same result)", file=sys.stderr, flush=True)
    return seconds


def pretrain_teacher(weights_path: str | Path, sizes: TinySizes = TinySizes(), *, seed: int = 0,
                     corpus_dir: str | Path, budget_s: float = 40.0, steps: int = 600,
                     batch_size: int = 48, lr: float = 5e-4, weight_decay: float = 0.05,
                     warmup: int = 30, per_class: int = 150, threads: int = 2) -> dict:
    """Pretrain the tiny teacher saved at `weights_path` (by `build_teacher`) and save it in place.

    `corpus_dir` receives the procedural corpus (reused when already there with the same
    parameters). Exactly `steps` optimisation steps are taken on any machine; `budget_s` only
    triggers a warning when the run took longer. Returns the run's metrics."""
    from safetensors.torch import load_file

    from ..models.teacher import data_config, feature_dim

    t0 = time.time()
    weights_path = Path(weights_path)
    corpus_seed = seed + CORPUS_SEED_OFFSET
    classes = write_toy_dataset(corpus_dir, num_classes=len(CLASS_ORDER), per_class=per_class,
                                seed=corpus_seed, size_range=CORPUS_SIZES)
    images, labels = load_corpus(corpus_dir)
    t_data = time.time() - t0

    before = load_file(str(weights_path))
    with torch_threads(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = _create(sizes, weights_path)
        mean, std = data_config(model)
        idx, seeds = _draw(gen, len(images), PCA_SAMPLES)
        _init_for_pretraining(model, _views(images, idx, seeds, sizes.teacher_img, mean, std))
        head = torch.nn.Linear(feature_dim(model), len(classes))
        torch.nn.init.xavier_uniform_(head.weight)
        model.train()

        def batch(step):
            idx, seeds = _draw(gen, len(images), batch_size)
            x, y = _views(images, idx, seeds, sizes.teacher_img, mean, std), labels[idx]
            tokens = model.forward_features(x)
            prefix = model.num_prefix_tokens
            logits = head(torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=1))  # = backbone_features
            return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(y)

        losses, correct, seen = _optimise(list(model.parameters()) + list(head.parameters()), steps, lr,
                                          weight_decay, warmup, "teacher", budget_s, batch)
    _save_in_place(weights_path, model, before, {"seed": seed, "corpus_seed": corpus_seed, "steps": steps,
                                                 "batch_size": batch_size, "classes": classes})
    seconds = _note_time(t0, budget_s)
    tail = losses[-50:]
    return {"steps": steps, "batch_size": batch_size, "corpus_images": len(images),
            "corpus_classes": len(classes), "corpus_seed": corpus_seed,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last50": round(sum(tail) / len(tail), 4) if tail else None,
            "train_top1_last50": round(correct / seen, 4) if seen else None,
            "data_s": round(t_data, 2), "seconds": round(seconds, 2), "budget_s": budget_s}


# -- segmentation ---------------------------------------------------------------------------------
# The segmentation demo's teacher is pretrained the same way, with a dense objective: its probe fits
# a linear head on the patch tokens, so they, not CLS ‖ mean-patch, must carry what each place shows.
# Measured at the demo's sizes: a teacher pretrained for classification gives a dense probe of
# val mIoU ~0.20 on the scenes (its patch tokens describe the image, not the place).
DENSE_CORPUS_IMAGES = 1200
DENSE_CORPUS_SIZE = 96


def load_dense_corpus(root: str | Path, store_size: int = STORE_SIZE) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every scene of a toy segmentation tree as the demo stores it (image: short side ≤ store_size,
    JPEG q90; mask: nearest to the same size), as uint8 CHW images and [H, W] masks."""
    from PIL import Image

    from ..contract.images import store_image
    from ..contract.masks import decode_mask, store_mask

    root = Path(root)
    images, masks = [], []
    for path in sorted((root / "images" / "train").iterdir()):
        with Image.open(path) as im:
            images.append(decode_image(store_image(im.convert("RGB"), store_size, "jpg", STORE_QUALITY)))
        with Image.open(root / "masks" / "train" / f"{path.stem}.png") as m:
            masks.append(decode_mask(store_mask(np.asarray(m, dtype=np.uint8), store_size)))
    return images, masks


def _dense_views(images, masks, idx, seeds, img_size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    from ..contract.views import view_mask

    xs, ys = [], []
    for i, s in zip(idx.tolist(), seeds.tolist()):
        view = sample_views(int(s), images[i].shape[2], images[i].shape[1], 1, VIEW_SPEC)[0]
        xs.append(view_pixels(images[i], view, img_size))
        ys.append(view_mask(masks[i], view, img_size))
    return normalize(torch.stack(xs), mean, std), torch.stack(ys).long()


def pretrain_dense_teacher(weights_path: str | Path, sizes: TinySizes = TinySizes(), *, seed: int = 0,
                           corpus_dir: str | Path, img_size: int, budget_s: float = 60.0, steps: int = 500,
                           batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 0.05,
                           warmup: int = 30, threads: int = 2) -> dict:
    """`pretrain_teacher` with a dense objective: pixel cross-entropy of a linear head on the patch
    tokens (`contract.dense`), at `img_size`, on procedural scenes disjoint from the demo's (another
    seed). The head is thrown away; the backbone is saved in place. Deterministic as `pretrain_teacher`."""
    import timm
    from safetensors.torch import load_file

    from ..contract.dense import make_dense_head, patch_grid, upsample_logits
    from ..contract.tasks import IGNORE_INDEX
    from ..models.teacher import data_config
    from ..testing.toydata import write_toy_segmentation

    t0 = time.time()
    weights_path = Path(weights_path)
    corpus_seed = seed + CORPUS_SEED_OFFSET
    classes = write_toy_segmentation(corpus_dir, train=DENSE_CORPUS_IMAGES, val=0, seed=corpus_seed,
                                     size=DENSE_CORPUS_SIZE)
    images, masks = load_dense_corpus(corpus_dir)
    before = load_file(str(weights_path))
    with torch_threads(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = timm.create_model(sizes.teacher_arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_path)),
                                  num_classes=0, img_size=img_size, **sizes.teacher_kwargs)
        mean, std = data_config(model)
        idx, seeds = _draw(gen, len(images), PCA_SAMPLES)
        _init_for_pretraining(model, _dense_views(images, masks, idx, seeds, img_size, mean, std)[0])
        head = make_dense_head(model.num_features, len(classes))
        model.train(), head.train()

        def batch(step):
            idx, seeds = _draw(gen, len(images), batch_size)
            x, y = _dense_views(images, masks, idx, seeds, img_size, mean, std)
            logits = upsample_logits(head(patch_grid(model, x)), y.shape[-2:])
            keep = y != IGNORE_INDEX
            return (F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX),
                    (logits.argmax(1)[keep] == y[keep]).sum(), keep.sum())

        losses, correct, seen = _optimise(list(model.parameters()) + list(head.parameters()), steps, lr,
                                          weight_decay, warmup, "segmentation teacher", budget_s, batch)
    _save_in_place(weights_path, model, before, {"seed": seed, "corpus_seed": corpus_seed, "steps": steps,
                                                 "batch_size": batch_size, "objective": "dense",
                                                 "img_size": img_size, "classes": classes})
    seconds = _note_time(t0, budget_s)
    tail = losses[-50:]
    return {"steps": steps, "batch_size": batch_size, "corpus_images": len(images), "corpus_seed": corpus_seed,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last50": round(sum(tail) / len(tail), 4) if tail else None,
            "train_pixel_acc_last50": round(correct / seen, 4) if seen else None, "seconds": round(seconds, 2)}
