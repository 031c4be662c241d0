"""`tsd viz overlays|dense-mixes`: pictures of a segmentation release and its students.

- `overlays`: validation images, each on a row: the image (its evaluation view), the mask, the
  teacher's dense prediction (its stored logits, upsampled to the view) and each student run's,
  the labels drawn over the image in one colour per class; ignored pixels are left uncoloured.
- `dense-mixes`: SD-Mixup mixes beside their parents, and what the teacher thinks each pixel of
  the mix is: its stored dense labels on the mix's first recorded view.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.errors import UserError
from ..contract.images import decode_image
from ..contract.manifest import manifest_task
from ..contract.masks import decode_mask
from ..contract.samples import M_JSON, M_MASK, SampleMeta, decode_dense, image_member
from ..contract.tasks import IGNORE_INDEX, SEGMENTATION
from ..contract.views import Views, center_view, normalize, view_mask, view_pixels
from .reader import ReleaseReader
from .viz import class_colours, mixes_with_parents, save, show_in_square, stored_image

ALPHA = 0.55   # label colour over the image: enough to read the class, little enough to see the scene


def segmentation_release(root) -> ReleaseReader:
    release = ReleaseReader(root)
    if manifest_task(release.manifest) != SEGMENTATION:
        raise UserError(f"{release.root}: a {manifest_task(release.manifest)} release; these pictures are for "
                        "segmentation releases (tsd viz mixes shows any release's mixes)")
    return release


def palette(num_classes: int) -> np.ndarray:
    """[256, 3] uint8: a distinct colour per class, IGNORE_INDEX (and unused ids) black."""
    table = np.zeros((256, 3), np.uint8)
    table[:num_classes] = (np.array(class_colours(num_classes)) * 255).round().astype(np.uint8)
    return table


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 HWC image with its label map drawn over it (ignored pixels keep the image)."""
    labelled = (labels != IGNORE_INDEX)[..., None]
    mixed = (1 - ALPHA) * image.astype(np.float32) + ALPHA * colours[labels].astype(np.float32)
    return np.where(labelled, mixed, image).round().astype(np.uint8)


def dense_labels(logits: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Argmax class map [size, size] (or [height, width] for a pair) of dense logits [C, h, w],
    upsampled bilinearly first (as every metric does: contract.dense.upsample_logits)."""
    import torch

    from ..contract.dense import upsample_logits

    shape = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    # channels-last: the class axis innermost makes the upsampling and the argmax over classes about
    # 2x faster on a CPU at 150 classes (a report draws thousands of these); values agree to ~1e-7
    up = upsample_logits(x.contiguous(memory_format=torch.channels_last), shape)[0]
    return up.argmax(0).numpy().astype(np.uint8)


def view_image(members: dict, view, size: int) -> np.ndarray:
    """A recorded view of the stored image as uint8 HWC (what the teacher and the student saw)."""
    image = decode_image(members[image_member(members)])
    return (view_pixels(image, view, size) * 255).round().byte().permute(1, 2, 0).numpy()


def student_labels(run: Path, pixels: np.ndarray, device) -> tuple[np.ndarray, str]:
    """A trained segmentation student's class map on the uint8 HWC views [N, S, S, 3]."""
    import torch

    from trainer.students import load_student

    from ..contract.device import resolve_device

    device = resolve_device(device)
    model, info = load_student(run)
    model = model.to(device).eval()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    if x.shape[-1] != info["img_size"]:
        x = torch.nn.functional.interpolate(x, size=(info["img_size"],) * 2, mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = model(normalize(x, info["mean"], info["std"]).to(device)).float().cpu()
    mode = (info.get("config") or {}).get("loss", {}).get("mode")
    return np.stack([dense_labels(lg.numpy(), pixels.shape[1]) for lg in logits]), \
        f"student: {info['arch']}\n{mode or 'trained'}, '{run.name}'"


def plot_overlays(root, runs: list, out, count: int = 6, seed: int = 0, device: str = "cpu") -> Path:
    from matplotlib.figure import Figure

    release = segmentation_release(root)
    manifest = release.manifest
    classes = manifest["classes"]
    size = int(manifest["teacher"]["img_size"])
    val = [r for r in release.index() if r["split"] == "val" and r["kind"] == "real"]
    if not val:
        raise UserError(f"{release.root}: no validation image to show")
    rng = np.random.Generator(np.random.PCG64(seed))
    picked = [val[i] for i in sorted(rng.choice(len(val), size=min(count, len(val)), replace=False))]
    samples = release.samples(picked)
    spec = Views(eval_crop=manifest["views"]["eval_crop"])
    images, masks, teacher = [], [], []
    for row in picked:
        members = samples[row["uid"]]
        mask = decode_mask(members[M_MASK], row["uid"])
        view = center_view(mask.shape[1], mask.shape[0], spec)[0]
        images.append(view_image(members, view, size))
        masks.append(view_mask(mask, view, size).numpy())
        teacher.append(dense_labels(decode_dense(members, len(classes), row["uid"])[0], size))
    columns = [("image", [None] * len(picked)), ("mask", masks), ("teacher (stored logits)", teacher)]
    for run in runs:
        labels, title = student_labels(Path(run), np.stack(images), device)
        columns.append((title, list(labels)))
    colours = palette(len(classes))
    fig = Figure(figsize=(2.3 * len(columns), 2.3 * len(picked) + 1.0), dpi=110)
    axes = fig.subplots(len(picked), len(columns), squeeze=False)
    for i, image in enumerate(images):
        for j, (title, maps) in enumerate(columns):
            ax = axes[i, j]
            show_in_square(ax, image if maps[i] is None else overlay(image, maps[i], colours))
            if i == 0:
                ax.set_title(title, fontsize=8)
    _legend(fig, classes, colours, [m for _, maps in columns[1:] for m in maps])
    fig.suptitle(f"{manifest['name']}: validation views, labels over the image", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save(fig, out)


def plot_dense_mixes(root, out, rows: int = 6, seed: int = 0) -> Path:
    from matplotlib.figure import Figure

    release = segmentation_release(root)
    manifest = release.manifest
    classes = manifest["classes"]
    size = int(manifest["teacher"]["img_size"])
    mixes, _, samples = mixes_with_parents(release, rows, seed)
    colours = palette(len(classes))
    fig = Figure(figsize=(9.2, 2.65 * len(mixes) + 1.0), dpi=110)   # room for each row's labels
    axes = fig.subplots(len(mixes), 4, squeeze=False)
    maps = []
    for i, mix in enumerate(mixes):
        members = samples[mix["uid"]]
        view = SampleMeta.from_json(members[M_JSON]).views[0]
        pixels = view_image(members, view, size)
        labels = dense_labels(decode_dense(members, len(classes), mix["uid"])[0], size)
        maps.append(labels)
        a, b = (samples[p] for p in mix["parents"])
        cells = [(stored_image(a), f"parent A, weight {mix['weight']:.2f}"),
                 (stored_image(b), f"parent B, weight {1 - mix['weight']:.2f}"),
                 (pixels, "mix: first recorded view"), (overlay(pixels, labels, colours), "teacher's labels")]
        for j, (image, title) in enumerate(cells):
            show_in_square(axes[i, j], image)
            axes[i, j].set_xlabel(title, fontsize=8)
    _legend(fig, classes, colours, maps)
    fig.suptitle(f"{manifest['name']}: what the teacher thinks each pixel of a mix is", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save(fig, out)


def _legend(fig, classes: list[str], colours: np.ndarray, maps: list) -> None:
    """A swatch per class that appears in the shown maps (up to 20, the most frequent)."""
    from matplotlib.patches import Patch

    counts = np.zeros(256, np.int64)
    for m in maps:
        counts += np.bincount(np.asarray(m).reshape(-1), minlength=256)[:256]
    counts[IGNORE_INDEX] = 0
    shown = [c for c in np.argsort(-counts, kind="stable")[:20] if counts[c] and c < len(classes)]
    fig.legend(handles=[Patch(color=colours[c] / 255, label=classes[c]) for c in shown], loc="lower center",
               ncol=min(len(shown), 6) or 1, fontsize=7, frameon=False)


def add_arguments(sub) -> None:
    from ..config import add_device_argument

    overlays = sub.add_parser("overlays", help="segmentation: val images with mask, teacher and student labels")
    overlays.add_argument("release", help="segmentation release folder")
    overlays.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="student run folders")
    overlays.add_argument("--out", required=True, help="PNG file to write")
    overlays.add_argument("--count", type=int, default=6, help="validation images shown (default 6)")
    overlays.add_argument("--seed", type=int, default=0, help="which images are picked")
    add_device_argument(overlays)
    dense = sub.add_parser("dense-mixes", help="segmentation: mixes with the teacher's dense labels over them")
    dense.add_argument("release", help="segmentation release folder")
    dense.add_argument("--out", required=True, help="PNG file to write")
    dense.add_argument("--rows", type=int, default=6, help="mixes shown (default 6)")
    dense.add_argument("--seed", type=int, default=0, help="which mixes are picked")


def run(args) -> Path:
    if args.what == "overlays":
        return plot_overlays(args.release, args.runs, args.out, args.count, args.seed, args.device)
    return plot_dense_mixes(args.release, args.out, args.rows, args.seed)
