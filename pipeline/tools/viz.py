"""`tsd viz`: pictures of a release and of training runs (matplotlib, Agg: no display needed).

- `mixes`: a contact sheet; per row parent A, parent B, the SD-Mixup result, with the mixing
  weight and the teacher's top-1 class on the result.
- `pca`: the paper's figure: 2-D PCA of the features of real images (up to 30 classes, one
  colour each) and of mixes (grey), for the teacher and for each student run. PCA is fitted on
  the real images; mixes are projected into that plane, so one sees where they fall between
  the classes.
- `curves`: training curves from each run's log.jsonl (loss, its CE and KD terms, learning rate).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..config import add_device_argument
from ..contract.errors import UserError
from ..contract.images import decode_image
from ..contract.layout import MANIFEST
from ..contract.samples import M_FEATURES, M_JSON, SampleMeta, dense_logits, image_member, npy_load, teacher_mean_probs
from ..contract.views import Views, center_view, normalize, view_pixels
from .reader import ReleaseReader

GREY = "#9a9a9a"
MAX_CLASSES = 30


# -- reading a release ------------------------------------------------------------------------------
def stored_image(members: dict) -> np.ndarray:
    """The stored image as uint8 HWC."""
    return decode_image(members[image_member(members)]).permute(1, 2, 0).numpy()


def teacher_top1(members: dict, num_classes: int) -> tuple[int, float]:
    """Top-1 class of the teacher's mean prediction over the views, and its probability."""
    meta = SampleMeta.from_json(members[M_JSON])
    p = teacher_mean_probs(dense_logits(members, meta, num_classes))
    return int(p.argmax()), float(p.max())


def save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi, facecolor="white")
    return out


# -- mixes --------------------------------------------------------------------------------------
def pick_mixes(index: list[dict], count: int, seed: int) -> list[dict]:
    """Up to `count` mixes whose parents are both in the release, sorted by mixing weight."""
    present = {r["uid"] for r in index}
    mixes = [r for r in index if r["kind"] == "mix" and all(p in present for p in r["parents"])]
    if not mixes:
        return []
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = [mixes[i] for i in sorted(rng.choice(len(mixes), size=min(count, len(mixes)), replace=False))]
    return sorted(chosen, key=lambda r: r["weight"], reverse=True)


def plot_mixes(root: str | Path, out: str | Path, rows: int = 8, seed: int = 0) -> Path:
    from matplotlib.figure import Figure

    if rows < 1:
        raise UserError(f"--rows: must be at least 1, got {rows}")
    release = ReleaseReader(root)
    root, manifest = release.root, release.manifest
    index = release.index()
    by_uid = {r["uid"]: r for r in index}
    mixes = pick_mixes(index, rows, seed)
    if not mixes:
        raise UserError(f"{root}: no mix with both parents in the release (no mixes, or a subset without their parents)")
    samples = release.samples(mixes + [by_uid[p] for m in mixes for p in m["parents"]])
    classes = manifest["classes"]

    fig = Figure(figsize=(7.2, 2.35 * len(mixes) + 0.9), dpi=110)
    axes = fig.subplots(len(mixes), 3, squeeze=False)
    for i, mix in enumerate(mixes):
        a, b = (by_uid[p] for p in mix["parents"])
        w = mix["weight"]
        top, prob = teacher_top1(samples[mix["uid"]], len(classes))
        cells = [(samples[a["uid"]], f"{a['class_name']}\nweight {w:.2f}"),
                 (samples[b["uid"]], f"{b['class_name']}\nweight {1 - w:.2f}"),
                 (samples[mix["uid"]], f"teacher: {classes[top]}\np = {prob:.2f}")]
        for j, (members, label) in enumerate(cells):
            ax = axes[i, j]
            show_in_square(ax, stored_image(members))
            ax.set_xlabel(label, fontsize=9, linespacing=1.15)
            for spine in ax.spines.values():  # a frame marks the generated image only
                spine.set_visible(j == 2)
                spine.set_edgecolor("#d62728")
                spine.set_linewidth(1.5)
    for j, title in enumerate(("parent A", "parent B", "mix")):
        axes[0, j].set_title(title, fontsize=11, fontweight="bold")
    gen = manifest.get("generator") or {}
    detail = f"{gen.get('kind', '?')}"
    if gen.get("steps"):
        detail += f", {gen['size']} px, {gen['steps']} steps, guidance {gen['guidance']}"
    fig.suptitle(f"SD-Mixup samples of {manifest['name']}\n({detail}; rows sorted by the weight of parent A)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return save(fig, out)


def show_in_square(ax, image: np.ndarray) -> None:
    """Centre an image in a square box, so every cell (and its column title) lines up."""
    height, width = image.shape[:2]
    side = max(height, width)
    ax.imshow(image, extent=(-width / 2, width / 2, height / 2, -height / 2))
    ax.set_xlim(-side / 2, side / 2)
    ax.set_ylim(side / 2, -side / 2)
    ax.set_xticks([])
    ax.set_yticks([])


# -- features for the PCA figure ----------------------------------------------------------------
def pick_pca_samples(index: list[dict], per_class: int, max_mixes: int,
                     seed: int) -> tuple[list[dict], list[dict]]:
    """Real train images of up to 30 classes (the most populated), and up to `max_mixes` mixes."""
    rng = np.random.Generator(np.random.PCG64(seed))
    real = [r for r in index if r["kind"] == "real" and r["split"] == "train"]
    by_class: dict[int, list[dict]] = {}
    for r in real:
        by_class.setdefault(r["label"], []).append(r)
    shown = sorted(by_class, key=lambda c: (-len(by_class[c]), c))[:MAX_CLASSES]
    picked = []
    for c in sorted(shown):
        rows = by_class[c]
        picked += [rows[i] for i in sorted(rng.choice(len(rows), size=min(per_class, len(rows)), replace=False))]
    mixes = [r for r in index if r["kind"] == "mix"]
    if len(mixes) > max_mixes:
        mixes = [mixes[i] for i in sorted(rng.choice(len(mixes), size=max_mixes, replace=False))]
    if not picked:
        raise UserError("the release has no real training image")
    return picked, mixes


def eval_views(samples: dict, uids: list[str], size: int, mean, std, eval_crop: float):
    """The centred evaluation view of each stored image, normalised for a model: [N, 3, size, size]."""
    import torch

    spec = Views(eval_crop=eval_crop)
    views = []
    for uid in uids:
        image = decode_image(samples[uid][image_member(samples[uid])])
        views.append(view_pixels(image, center_view(image.shape[2], image.shape[1], spec)[0], size))
    return normalize(torch.stack(views), mean, std)


def batched_features(fn, x, device, batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(fn(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy()


def teacher_features(root: Path, manifest: dict, samples: dict, uids: list[str], device) -> np.ndarray:
    """Stored teacher features (mean over the recorded views) when the release has them, else the
    teacher backbone (from the manifest's config) on the centred view."""
    if manifest["teacher"].get("features"):
        return np.stack([npy_load(samples[u][M_FEATURES]).astype(np.float32).mean(0) for u in uids])
    from ..config import TeacherConfig
    from ..contract.configlib import ConfigError, build
    from ..models.teacher import backbone_features, load_backbone

    try:
        cfg = build(TeacherConfig, manifest["config"]["teacher"], "config.teacher")
    except ConfigError as e:
        raise UserError(f"{root / MANIFEST}: {e} (the PCA needs the teacher's weights)") from None
    backbone = load_backbone(cfg).to(device)
    t = manifest["teacher"]
    x = eval_views(samples, uids, t["img_size"], t["mean"], t["std"], manifest["views"]["eval_crop"])
    return batched_features(lambda b: backbone_features(backbone, b), x, device)


def student_features(run: Path, manifest: dict, samples: dict, uids: list[str], device) -> tuple[np.ndarray, str]:
    """Pre-logits features of a trained student (trainer.students), and a label for its panel."""
    from trainer.students import features, load_student

    model, info = load_student(run)
    model = model.to(device).eval()
    x = eval_views(samples, uids, info["img_size"], info["mean"], info["std"], manifest["views"]["eval_crop"])
    mode = (info.get("config") or {}).get("loss", {}).get("mode")
    label = f"student: {info['arch']}\n{mode or 'trained'}, run '{run.name}'"
    return batched_features(lambda b: features(model, b)[1], x, device), label


def pca_2d(real: np.ndarray, mixes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalised features; the 2 principal axes of the real ones; (real 2-D, mixes 2-D, variance ratio)."""
    def unit(x):
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)

    real, mixes = unit(real.astype(np.float64)), unit(mixes.astype(np.float64))
    center = real.mean(0)
    _, s, vt = np.linalg.svd(real - center, full_matrices=False)
    ratio = (s ** 2 / max((s ** 2).sum(), 1e-12))[:2]
    axes = vt[:2].T
    return (real - center) @ axes, ((mixes - center) @ axes if len(mixes) else np.zeros((0, 2))), ratio


def class_colours(n: int) -> list:
    from matplotlib import colormaps

    palette = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    return palette[:n]


def plot_pca(root: str | Path, runs: list[str | Path], out: str | Path, per_class: int = 20,
             max_mixes: int = 300, device: str = "auto", seed: int = 0) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..contract.device import resolve_device

    if per_class < 1 or max_mixes < 0:
        raise UserError(f"--per-class must be at least 1 and --mixes at least 0, got {per_class} and {max_mixes}")
    release = ReleaseReader(root)
    root, manifest = release.root, release.manifest
    classes = manifest["classes"]
    real, mixes = pick_pca_samples(release.index(), per_class, max_mixes, seed)
    samples = release.samples(real + mixes)
    dev = resolve_device(device)
    real_uids, mix_uids = [r["uid"] for r in real], [r["uid"] for r in mixes]
    uids = real_uids + mix_uids

    t = manifest["teacher"]
    panels = [(teacher_features(root, manifest, samples, uids, dev), f"teacher: {t['arch']}\nprobed (frozen backbone)")]
    for run in runs:
        feats, label = student_features(Path(run), manifest, samples, uids, dev)
        panels.append((feats, label))

    labels = np.array([r["label"] for r in real])
    shown = sorted(set(labels.tolist()))
    colours = dict(zip(shown, class_colours(len(shown))))
    fig = Figure(figsize=(4.3 * len(panels) + 2.2, 4.9), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (feats, title) in zip(axes, panels):
        xy_real, xy_mix, ratio = pca_2d(feats[:len(real)], feats[len(real):])
        if len(xy_mix):
            ax.scatter(xy_mix[:, 0], xy_mix[:, 1], s=9, c=GREY, alpha=0.45, linewidths=0, zorder=1)
        ax.scatter(xy_real[:, 0], xy_real[:, 1], s=14, c=[colours[c] for c in labels], alpha=0.9,
                   linewidths=0.3, edgecolors="white", zorder=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)", fontsize=9)
        ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}%)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, linewidth=0.5)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], markersize=5, label=classes[c])
               for c in shown]
    handles.append(Line2D([], [], marker="o", linestyle="", color=GREY, markersize=5, label="SD-Mixup (no label)"))
    fig.legend(handles=handles, loc="center right", fontsize=7 if len(shown) > 15 else 8, frameon=False,
               ncol=2 if len(shown) > 15 else 1, handletextpad=0.2, columnspacing=0.6)
    fig.suptitle(f"PCA of features — {manifest['name']}: {len(real)} real train images of {len(shown)} classes, "
                 f"{len(mixes)} mixes (grey)", fontsize=11)
    legend_width = (2.6 if len(shown) > 15 else 1.5) / fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1 - legend_width, 0.95))
    return save(fig, out)


# -- curves -------------------------------------------------------------------------------------
def read_log(run: Path) -> tuple[list[dict], dict | None]:
    """(log entries, final metrics or None) of a run folder."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found (not a run folder?)")
    entries = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line of a killed run may be cut short
                print(f"note: {path}:{number}: incomplete last line skipped", file=sys.stderr)
                continue
            raise UserError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(entry, dict) or "step" not in entry or "loss" not in entry:
            raise UserError(f"{path}:{number}: expected an object with 'step' and 'loss'")
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: no entries")
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return entries, metrics


def plot_curves(runs: list[str | Path], out: str | Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    logs = [(Path(r), *read_log(Path(r))) for r in runs]
    fig = Figure(figsize=(13, 4.1), dpi=110)
    ax_loss, ax_terms, ax_lr = fig.subplots(1, 3)
    palette = colormaps["tab10"].colors
    for i, (run, entries, metrics) in enumerate(logs):
        colour = palette[i % len(palette)]
        step = [e["step"] for e in entries]
        label = run.name
        if metrics and (metrics.get("val") or {}).get("top1") is not None:
            label += f" (val top-1 {metrics['val']['top1']:.3f})"
        ax_loss.plot(step, [e["loss"] for e in entries], color=colour, linewidth=1.6, label=label)
        for key, style in (("ce", "-"), ("kd", "--"), ("feat", ":")):
            if all(key in e for e in entries):
                ax_terms.plot(step, [e[key] for e in entries], color=colour, linestyle=style, linewidth=1.3,
                              label=f"{run.name}: {key}")
        if all("lr" in e for e in entries):
            ax_lr.plot(step, [e["lr"] for e in entries], color=colour, linewidth=1.6, label=run.name)
    for ax, title, ylabel in ((ax_loss, "training loss", "loss"),
                              (ax_terms, "loss terms (CE: real labels, KD: teacher)", "value"),
                              (ax_lr, "learning rate", "lr")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, linewidth=0.5)
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.suptitle("Training curves: " + ", ".join(run.name for run, _, _ in logs), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save(fig, out)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    mixes = sub.add_parser("mixes", help="contact sheet of SD-Mixup samples with their parents")
    mixes.add_argument("release", help="release folder")
    mixes.add_argument("--out", required=True, help="PNG file to write")
    mixes.add_argument("--rows", type=int, default=8, help="mixes shown (default 8)")
    mixes.add_argument("--seed", type=int, default=0, help="which mixes are picked")
    pca = sub.add_parser("pca", help="PCA of teacher and student features, mixes in grey")
    pca.add_argument("release", help="release folder")
    pca.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR",
                     help="student run folders (student.safetensors + student.json), e.g. distilled and finetuned")
    pca.add_argument("--out", required=True, help="PNG file to write")
    pca.add_argument("--per-class", type=int, default=20, help="real train images per class (default 20)")
    pca.add_argument("--mixes", type=int, default=300, help="mixes shown (default 300)")
    pca.add_argument("--seed", type=int, default=0, help="which images are picked")
    add_device_argument(pca)
    curves = sub.add_parser("curves", help="training curves from run folders' log.jsonl")
    curves.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    curves.add_argument("--out", required=True, help="PNG file to write")


def run(args) -> int:
    """`tsd viz mixes|pca|curves ...`."""
    if args.what == "mixes":
        out = plot_mixes(args.release, args.out, args.rows, args.seed)
    elif args.what == "pca":
        out = plot_pca(args.release, args.runs, args.out, args.per_class, args.mixes, args.device, args.seed)
    else:
        out = plot_curves(args.runs, args.out)
    print(f"viz {args.what}: wrote {out}")
    return 0
