"""`tsd viz`: pictures of a release and of training runs (matplotlib, Agg: no display needed).

- `mixes`: a contact sheet; per row parent A, parent B, the SD-Mixup result, with the mixing
  weight and the teacher's top-1 class on the result.
- `pca`: the paper's figure: 2-D PCA of the features of real images (up to 30 classes, one
  colour each) and of mixes (grey), for the teacher and for each student run. PCA is fitted on
  the real images; mixes are projected into that plane, so one sees where they fall between
  the classes.
- `curves`: training curves from each run's log.jsonl and val.jsonl against epochs (or images
  seen), so runs of different batch compositions line up: the loss, only the terms each run's loss
  holds (finetune: CE), validation top-1 per epoch with the teacher's, the learning rate.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.runfiles import CONFIG, LOG, METRICS, STUDENT_INFO, VAL_LOG

from ..contract import storage
from ..contract.errors import UserError
from ..contract.files import atomic_write
from ..contract.images import decode_image
from ..contract.layout import HEAD_FILE, MANIFEST
from ..contract.manifest import manifest_task
from ..contract.samples import M_FEATURES, M_JSON, SampleMeta, dense_logits, image_member, npy_load, teacher_mean_probs
from ..contract.tasks import CLASSIFICATION, headline
from ..contract.views import Views, center_view, normalize, view_pixels
from .reader import ReleaseReader

GREY = "#9a9a9a"
MIX_FRAME = "#d62728"
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
    """Write the PNG to `out` (a path or a URL), complete or not at all."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    atomic_write(out, buf.getvalue())
    return out


# -- mixes --------------------------------------------------------------------------------------
def pick_mixes(index: list[dict], count: int, seed: int, present: set | None = None) -> list[dict]:
    """Up to `count` mixes whose parents are both `present` (default: in the release), sorted by mixing
    weight (text-prompted mixes have no parents: none of them)."""
    present = {r["uid"] for r in index} if present is None else present
    mixes = [r for r in index if r["kind"] == "mix" and len(r["parents"] or []) == 2
             and all(p in present for p in r["parents"])]
    if not mixes:
        return []
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = [mixes[i] for i in sorted(rng.choice(len(mixes), size=min(count, len(mixes)), replace=False))]
    return sorted(chosen, key=lambda r: r["weight"], reverse=True)


def plot_mixes(root: str | Path, out: str | Path, rows: int = 8, seed: int = 0) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    release = ReleaseReader(root)
    root, manifest = release.root, release.manifest
    if manifest_task(manifest) != CLASSIFICATION:
        raise UserError(f"{root}: a {manifest_task(manifest)} release: its mixes have no class to show; "
                        f"`tsd viz dense-mixes {root} --out PNG` draws them with the teacher's labels per pixel")
    mixes, by_uid, samples = mixes_with_parents(release, rows, seed)
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
            for spine in ax.spines.values():  # a frame marks the generated image only (said in the legend)
                spine.set_visible(j == 2)
                spine.set_edgecolor(MIX_FRAME)
                spine.set_linewidth(1.5)
    for j, title in enumerate(("parent A (real)", "parent B (real)", "mix (generated)")):
        axes[0, j].set_title(title, fontsize=11, fontweight="bold")
    gen = manifest.get("generator") or {}
    detail = f"{gen.get('kind', '?')}"
    if gen.get("steps"):
        detail += f", {gen['size']} px, {gen['steps']} steps, guidance {gen['guidance']}"
    fig.suptitle(f"SD-Mixup samples of {manifest['name']}\n({detail}; rows sorted by the weight of parent A)",
                 fontsize=11)
    frame = Patch(facecolor="none", edgecolor=MIX_FRAME, linewidth=1.5,
                  label="red frame: the generated image (no label; the teacher's top-1 class and probability under it)")
    real = Patch(facecolor="none", edgecolor="none",
                 label="parents: real training images with their class and mixing weight")
    fig.legend(handles=[frame, real], loc="lower center", ncol=1, fontsize=8.5, frameon=False,
               handlelength=1.4, borderaxespad=0.3)
    legend_height = 0.5 / fig.get_figheight()
    fig.tight_layout(rect=(0, legend_height, 1, 0.985))
    return save(fig, out)


def mixes_with_parents(release: ReleaseReader, rows: int, seed: int) -> tuple[list[dict], dict, dict]:
    """Up to `rows` mixes whose parents are both at hand (`pick_mixes`), the index rows by uid (the
    parents' release included) and the members of every mix and parent: what a contact sheet draws."""
    if rows < 1:
        raise UserError(f"--rows: must be at least 1, got {rows}")
    index = release.index()
    parents = real_release(release)
    by_uid = {r["uid"]: r for r in (index if parents is release else index + parents.index())}
    mixes = pick_mixes(index, rows, seed, present={r["uid"] for r in by_uid.values() if r["kind"] == "real"})
    if not mixes:
        raise UserError(f"{release.root}: no mix with both parents in the release (no mixes, or a subset without "
                        "their parents)")
    samples = {**release.samples(mixes), **parents.samples([by_uid[p] for m in mixes for p in m["parents"]])}
    return mixes, by_uid, samples


def real_release(release: ReleaseReader) -> ReleaseReader:
    """The release holding the real images `release`'s mixes were made from: itself, or, for another
    generator's release of a family (`generator.kinds`: mixes only), the one its manifest's `family.real` names."""
    where = (release.manifest.get("family") or {}).get("real", ".")
    if where in (".", ""):
        return release
    root = str(release.root).rstrip("/")
    for part in where.split("/"):   # relative to the release; no normalising, which would break URLs
        root = storage.parent(root) if part == ".." else storage.join(root, part) if part not in ("", ".") else root
    return ReleaseReader(root)


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
        raise UserError(f"{storage.join(root, MANIFEST)}: {e} (the PCA needs the teacher's weights)") from None
    # a finetuned teacher's trained blocks too
    backbone = load_backbone(cfg, storage.join(root, HEAD_FILE)).to(device)
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


# tab10 without its grey (grey is the mixes' colour): the first classes look as matplotlib users expect
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1]: distances there are what eyes tell apart."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def class_colours(n: int) -> list[tuple]:
    """n qualitative colours, each as far (in CIELAB) from the others as possible: tab10's first,
    then farthest-first picks from an sRGB grid of saturated, mid-light colours (never grey, never
    pale on white). For up to 30 classes every pair differs by ΔE > 25."""
    chosen = [tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)) for h in TAB10[:n]]
    levels = np.linspace(0, 1, 18)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = srgb_to_lab(grid)
    keep = (np.hypot(lab[:, 1], lab[:, 2]) > 35) & (lab[:, 0] > 30) & (lab[:, 0] < 80)
    grid, lab = grid[keep], lab[keep]
    distance = np.full(len(grid), np.inf)
    for colour in srgb_to_lab(np.array(chosen)) if chosen else ():
        distance = np.minimum(distance, np.linalg.norm(lab - colour, axis=1))
    while len(chosen) < n:
        i = int(distance.argmax())
        chosen.append(tuple(float(v) for v in grid[i]))
        distance = np.minimum(distance, np.linalg.norm(lab - lab[i], axis=1))
    return chosen


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
def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
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
        if not isinstance(entry, dict) or any(k not in entry for k in required):
            raise UserError(f"{path}:{number}: expected an object with {' and '.join(map(repr, required))}")
        entries.append(entry)
    return entries


def read_log(run: Path) -> tuple[list[dict], dict | None]:
    """(log entries, final metrics or None) of a run folder."""
    path = run / LOG
    if not path.is_file():
        raise UserError(f"{path}: not found (not a run folder?)")
    entries = _read_jsonl(path, ("step", "loss"))
    if not entries:
        raise UserError(f"{path}: no entries")
    metrics_path = run / METRICS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return entries, metrics


def loss_terms(config: dict) -> list[str]:
    """The terms of L = (1-a)·CE + a·T²·KD (+ w·feat) that this run's loss holds (finetune: CE only)."""
    loss = config.get("loss") or {}
    mode, alpha = loss.get("mode", "distill"), float(loss.get("alpha", 0.5))
    alpha = 0.0 if mode == "finetune" else alpha
    terms = [t for t, on in (("ce", alpha < 1), ("kd", alpha > 0)) if on]
    return terms + (["feat"] if float(loss.get("feature_weight") or 0) > 0 else [])


@dataclass
class RunCurves:
    """What the curves figure draws of one run folder."""
    name: str
    entries: list[dict]          # log.jsonl
    val: list[dict]              # val.jsonl (one per validation; older runs: none)
    metrics: dict | None
    config: dict
    steps_per_epoch: int | None
    batch: int | None            # global batch: images per step
    metric: tuple = ("top1", "top-1")   # the run's task's headline (contract.tasks): top-1, or mIoU

    @classmethod
    def read(cls, run: Path) -> RunCurves:
        import yaml

        entries, metrics = read_log(run)
        config = yaml.safe_load((run / CONFIG).read_text()) if (run / CONFIG).is_file() else {}
        if not config:   # an older run folder: what student.json kept of its config
            info = run / STUDENT_INFO
            config = (json.loads(info.read_text()).get("config") or {}) if info.is_file() else {}
        metric = headline(config.get("task") or CLASSIFICATION)
        val = _read_jsonl(run / VAL_LOG, ("step", metric[0])) if (run / VAL_LOG).is_file() else []
        train = (metrics or {}).get("train") or {}
        spe = train.get("steps_per_epoch") or next((round(v["step"] / v["epoch"]) for v in val if v.get("epoch")),
                                                   None)
        batch = train.get("global_batch") or (config.get("data") or {}).get("batch_size")
        return cls(run.name, entries, val, metrics, config, spe, batch, metric)

    def x(self, entries: list[dict], axis: str) -> list[float] | None:
        """Epochs (over the real train set) or images seen at each entry; None when unknown."""
        if axis == "epochs":
            return [e["step"] / self.steps_per_epoch for e in entries] if self.steps_per_epoch else None
        if all("images_seen" in e for e in entries):
            return [e["images_seen"] for e in entries]
        return [e["step"] * self.batch for e in entries] if self.batch else None

    def label(self) -> str:
        mode = (self.config.get("loss") or {}).get("mode")
        return f"{self.name} ({mode})" if mode and mode not in self.name else self.name


TERM_STYLE = {"ce": ("-", "CE (real labels)"), "kd": ("--", "KD (teacher)"), "feat": (":", "feature")}


def plot_curves(runs: list[str | Path], out: str | Path, x_axis: str = "epochs") -> Path:
    """Loss, the terms in each run's loss, validation top-1 (and the teacher's) and the learning
    rate, against epochs over the real train set (runs with different batches line up) or images seen."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if x_axis not in ("epochs", "images"):
        raise UserError(f"--x: 'epochs' or 'images', got {x_axis!r}")
    curves = [RunCurves.read(Path(r)) for r in runs]
    xs = [c.x(c.entries, x_axis) for c in curves]
    missing = [c.name for c, x in zip(curves, xs) if x is None]
    if missing:
        raise UserError(f"{', '.join(missing)}: cannot place the log on {x_axis} (no metrics.json, config.yaml "
                        "or val.jsonl to say the steps per epoch / batch size)")
    fig = Figure(figsize=(12, 7.6), dpi=110)
    (ax_loss, ax_terms), (ax_val, ax_lr) = fig.subplots(2, 2)
    palette = colormaps["tab10"].colors
    teacher = []
    for i, (c, x) in enumerate(zip(curves, xs)):
        colour = palette[i % len(palette)]
        ax_loss.plot(x, [e["loss"] for e in c.entries], color=colour, linewidth=1.8, label=c.label())
        for term in loss_terms(c.config) if c.config else TERM_STYLE:
            if all(term in e for e in c.entries):   # the terms this run logged
                style, what = TERM_STYLE[term]
                ax_terms.plot(x, [e[term] for e in c.entries], color=colour, linestyle=style, linewidth=1.5,
                              label=f"{c.name}: {what}")
        key = c.metric[0]
        if c.val:
            values = [v[key] for v in c.val]
            ax_val.plot(c.x(c.val, x_axis), values, color=colour, marker="o", markersize=4, linewidth=1.6,
                        label=f"{c.name} (final {values[-1]:.3f})")
            teacher += [v[f"teacher_{key}"] for v in c.val if v.get(f"teacher_{key}") is not None]
        elif c.metrics and (c.metrics.get("val") or {}).get(key) is not None:  # final value only
            end = c.x(c.entries[-1:], x_axis)
            ax_val.plot(end, [c.metrics["val"][key]], color=colour, marker="o", linestyle="",
                        label=f"{c.name} (final {c.metrics['val'][key]:.3f})")
        if all("lr" in e for e in c.entries):
            ax_lr.plot(x, [e["lr"] for e in c.entries], color=colour, linewidth=1.6, label=c.name)
    if teacher:
        ax_val.axhline(teacher[-1], color="#444444", linestyle=":", linewidth=1.4,
                       label=f"teacher (stored logits) {teacher[-1]:.3f}")
    x_label = "epochs (passes over the real training images)" if x_axis == "epochs" else "images seen (real + mixes)"
    metric_names = " / ".join(dict.fromkeys(c.metric[1] for c in curves))
    for ax, title, ylabel in ((ax_loss, "training loss (what each run minimises)", "loss"),
                              (ax_terms, "terms in each run's loss", "value"),
                              (ax_val, f"validation {metric_names}", metric_names),
                              (ax_lr, "learning rate", "lr")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(x_label, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, linewidth=0.5)
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
    ax_val.set_ylim(0, 1.02)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.suptitle("Training curves: " + ", ".join(c.label() for c in curves), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save(fig, out)
