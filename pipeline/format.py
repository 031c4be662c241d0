"""The release format: the one contract between the generation side and the trainer.

Everything both sides must agree on lives here and nowhere else: folder and shard names, sample
keys and members, how teacher outputs are stored, how ids and seeds are derived, and how a
recorded view (crop box + flip) becomes pixels. docs/FORMAT.md describes the same in prose.

Imports only numpy and the standard library at module level (torch and PIL inside the functions
that need them), so the trainer can import it without loading the heavy side.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

FORMAT_VERSION = 1

# -- release layout -----------------------------------------------------------------------------
MANIFEST = "manifest.json"
INDEX = "index.parquet"
CARD = "README.md"
TEACHER_DIR = "teacher"
HEAD_FILE = "teacher/head.safetensors"
PROBE_METRICS = "teacher/probe.json"

KINDS = ("real", "mix")
SPLITS = ("train", "val")
# (kind, split) -> shard name prefix inside the release; mixes exist for train only.
SHARD_PREFIX = {("real", "train"): "real/train", ("real", "val"): "real/val", ("mix", "train"): "mix/mix"}
SHARD_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"  # written after the tar is published: its presence marks the shard done


def shard_name(kind: str, split: str, number: int) -> str:
    """Shard path relative to the release root, without suffix: e.g. 'real/train-000003'."""
    return f"{SHARD_PREFIX[(kind, split)]}-{number:06d}"


def shard_kind_split(name: str) -> tuple[str, str]:
    """Inverse of `shard_name` for the (kind, split) part."""
    prefix = name.rsplit("-", 1)[0]
    for key, value in SHARD_PREFIX.items():
        if value == prefix:
            return key
    raise ValueError(f"not a shard name of this format: {name!r}")


def check_manifest(manifest: dict, where: str) -> None:
    """The parts of manifest.json every reader relies on; ValueError('<where>: …') otherwise."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version!r}, this tsdistill reads {FORMAT_VERSION}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{where}: classes must be a non-empty list of names")
    if manifest.get("num_classes", len(classes)) != len(classes):
        raise ValueError(f"{where}: num_classes {manifest['num_classes']} != {len(classes)} class names")
    for entry in manifest.get("shards") or ():
        try:
            name, kind, split = entry["name"], entry["kind"], entry["split"]
            int(entry["count"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: shard entry {entry!r} lacks name/kind/split/count") from None
        try:
            named = shard_kind_split(name)
        except ValueError:
            named = None
        if named != (kind, split):
            raise ValueError(f"{where}: shard {name!r} is not a {kind}/{split} shard name of this format")


# -- samples ------------------------------------------------------------------------------------
IMAGE_FORMATS = ("jpg", "webp", "png")
M_JSON = "json"
M_LOGITS = "logits.npy"            # float16 [K, C]: teacher logits on each recorded view
M_TOPK_IDX = "topk_idx.npy"        # int32 [K, k]: top-k classes (instead of full logits)
M_TOPK_LOGITS = "topk_logits.npy"  # float16 [K, k]: their logits; the rest mass is in json
M_FEATURES = "features.npy"        # float16 [K, D]: optional teacher features (CLS ‖ mean patch)
NPY_MEMBERS = (M_LOGITS, M_TOPK_IDX, M_TOPK_LOGITS, M_FEATURES)

_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def make_uid(*parts: object) -> str:
    """A DataComp-style 128-bit hex id from stable parts (no dots: it is a webdataset key)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:32]


def is_uid(value: str) -> bool:
    return bool(_UID_RE.match(value))


def derive_seed(global_seed: int, uid: str, purpose: str = "") -> int:
    """Per-sample seed from (global seed, uid): never from scheduling or worker identity."""
    h = hashlib.sha256(f"{global_seed}\x1f{uid}\x1f{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SampleMeta:
    """The `json` member of every sample."""
    uid: str
    split: str
    kind: str
    label: int                    # -1 for mixes: they carry no label, only teacher outputs
    seed: int
    views: list                   # K × [x, y, w, h, flip], normalised to the stored image
    width: int                    # stored image size
    height: int
    parents: tuple = ()           # parent uids (mixes)
    weight: float | None = None   # mixing weight of parents[0]
    generator: str | None = None
    topk_rest: list | None = None # per view: teacher probability mass outside the stored top-k

    def to_json(self) -> bytes:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["parents"] = list(self.parents)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "") -> "SampleMeta":
        try:
            d = json.loads(data)
            d["parents"] = tuple(d.get("parents", ()))
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: bad json member: {e}") from None


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes, where: str = "") -> np.ndarray:
    """Load a .npy member; object arrays (pickle) are refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{where}: bad npy member: {e}") from None


def encode_teacher(logits: np.ndarray, topk: int | None) -> tuple[dict, list | None]:
    """Members for teacher logits [K, C]: full float16, or top-k plus the rest mass (at T=1)."""
    logits = np.asarray(logits, dtype=np.float32)
    if not topk or topk >= logits.shape[1]:
        return {M_LOGITS: npy_bytes(logits.astype(np.float16))}, None
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :topk].astype(np.int32)
    top = np.take_along_axis(logits, idx, axis=1)
    lse = _logsumexp(logits)
    rest = np.clip(1.0 - np.exp(top - lse[:, None]).sum(1), 0.0, 1.0)
    members = {M_TOPK_IDX: npy_bytes(idx), M_TOPK_LOGITS: npy_bytes(top.astype(np.float16))}
    return members, [round(float(r), 7) for r in rest]


def dense_logits(members: dict, meta: SampleMeta, num_classes: int, where: str = "") -> np.ndarray:
    """Teacher logits [K, C] from a sample's members (full, or top-k with the rest spread evenly)."""
    if M_LOGITS in members:
        out = npy_load(members[M_LOGITS], where).astype(np.float32)
        if out.ndim != 2 or out.shape[1] != num_classes:
            raise ValueError(f"{where}: logits shape {out.shape}, expected [K, {num_classes}]")
        return out
    if M_TOPK_IDX not in members or M_TOPK_LOGITS not in members:
        raise ValueError(f"{where}: sample has no teacher logits ({M_LOGITS} or {M_TOPK_IDX})")
    idx = npy_load(members[M_TOPK_IDX], where).astype(np.int64)
    top = npy_load(members[M_TOPK_LOGITS], where).astype(np.float32)
    rest = np.asarray(meta.topk_rest, dtype=np.float64)
    k = idx.shape[1]
    # log of the full partition function, recovered from the top-k share of the mass
    lse = _logsumexp(top) - np.log(np.clip(1.0 - rest, 1e-12, None))
    other = np.log(np.clip(rest / max(num_classes - k, 1), 1e-30, None)) + lse
    out = np.repeat(other[:, None], num_classes, axis=1).astype(np.float32)
    np.put_along_axis(out, idx, top, axis=1)
    return out


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def teacher_summary(logits: np.ndarray) -> tuple[int, float]:
    """Top-1 class and entropy (nats) of the teacher's mean prediction over the views."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean = p.mean(0)
    entropy = float(-(mean * np.log(np.clip(mean, 1e-12, None))).sum())
    return int(mean.argmax()), entropy


def group_members(names_and_data: Iterable[tuple[str, bytes]], where: str = "") -> Iterable[tuple[str, dict]]:
    """Group tar members into samples the way webdataset does (key = name up to the first dot).

    Members must be consecutive per key. Names are never used as filesystem paths."""
    key, members = None, {}
    seen = set()
    for name, data in names_and_data:
        if "/" in name or "." not in name:
            raise ValueError(f"{where}: unexpected tar member {name!r}")
        k, ext = name.split(".", 1)
        if k != key:
            if key is not None:
                yield key, members
            if k in seen:
                raise ValueError(f"{where}: members of sample {k!r} are not consecutive")
            seen.add(k)
            key, members = k, {}
        if ext in members:
            raise ValueError(f"{where}: sample {k!r} has member {ext!r} twice")
        members[ext] = data
    if key is not None:
        yield key, members


def image_member(members: dict) -> str | None:
    for ext in IMAGE_FORMATS:
        if ext in members:
            return ext
    return None


# -- views: the recorded crops both sides replay -------------------------------------------------
@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn: RandomResizedCrop-style boxes plus a horizontal flip."""
    scale: tuple = (0.25, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    eval_crop: float = 0.875      # val: centred square of this fraction of the short side


def sample_views(seed: int, width: int, height: int, k: int, spec: ViewSpec) -> list:
    """K train views [x, y, w, h, flip] for a stored image of width×height (deterministic in seed)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    area = width * height
    log_ratio = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    views = []
    for _ in range(k):
        box = None
        for _attempt in range(10):
            target = area * rng.uniform(spec.scale[0], spec.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x = int(rng.integers(0, width - w + 1))
                y = int(rng.integers(0, height - h + 1))
                box = (x, y, w, h)
                break
        if box is None:  # torchvision's fallback: the largest centred box within the ratio range
            box = _center_box(width, height, 1.0)
        flip = int(spec.flip and rng.random() < 0.5)
        views.append(_normalise(box, width, height, flip))
    return views


def center_view(width: int, height: int, spec: ViewSpec) -> list:
    """The single evaluation view: a centred square, `eval_crop` of the short side."""
    return [_normalise(_center_box(width, height, spec.eval_crop), width, height, 0)]


def _center_box(width: int, height: int, fraction: float) -> tuple:
    side = max(1, int(round(min(width, height) * fraction)))
    return ((width - side) // 2, (height - side) // 2, side, side)


def _normalise(box: tuple, width: int, height: int, flip: int) -> list:
    x, y, w, h = box
    return [round(x / width, 6), round(y / height, 6), round(w / width, 6), round(h / height, 6), flip]


def view_box(view: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a normalised view; never empty, always inside the image."""
    x, y, w, h = view[:4]
    x0 = min(max(int(round(x * width)), 0), width - 1)
    y0 = min(max(int(round(y * height)), 0), height - 1)
    x1 = min(max(int(round((x + w) * width)), x0 + 1), width)
    y1 = min(max(int(round((y + h) * height)), y0 + 1), height)
    return x0, y0, x1, y1


def view_pixels(image, view: Sequence[float], size: int):
    """One view of a uint8 CHW tensor → float CHW tensor in [0, 1] of size×size.

    The one definition of crop → resize (bilinear, antialiased) → flip, used by the worker before
    the teacher and by the trainer before the student. Works on any device."""
    import torch
    import torch.nn.functional as F

    _, height, width = image.shape
    x0, y0, x1, y1 = view_box(view, width, height)
    crop = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.squeeze(0).clamp_(0, 255).div_(255.0)
    if view[4]:
        out = torch.flip(out, dims=[2])
    return out


def views_batch(image, views: Sequence[Sequence[float]], size: int):
    """All recorded views of one image: float [K, 3, size, size] in [0, 1]."""
    import torch

    return torch.stack([view_pixels(image, v, size) for v in views])


def normalize(batch, mean: Sequence[float], std: Sequence[float]):
    """Per-model colour normalisation of a [N, 3, H, W] float batch in [0, 1]."""
    import torch

    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


# -- stored images ------------------------------------------------------------------------------
def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size an image is stored at: short side scaled down to `short_side` (never up)."""
    s = min(width, height)
    if s <= short_side:
        return width, height
    scale = short_side / s
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def encode_image(pil_image, fmt: str, quality: int) -> bytes:
    """RGB PIL image → stored bytes. Fixed encoder settings so a CPU rerun is byte-identical."""
    buf = io.BytesIO()
    if fmt == "jpg":
        pil_image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2,
                       optimize=False, progressive=False)
    elif fmt == "webp":
        pil_image.save(buf, format="WEBP", quality=quality, method=4)
    elif fmt == "png":
        pil_image.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r} (expected one of {IMAGE_FORMATS})")
    return buf.getvalue()


def decode_image(data: bytes):
    """Stored bytes → uint8 CHW tensor (RGB). The decoder both sides use on the CPU."""
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


# -- shards -------------------------------------------------------------------------------------
def read_shard(fileobj, where: str = "") -> Iterable[tuple[str, dict]]:
    """(key, {member: bytes}) for each sample of a shard tar (a path or a binary file object).

    Reads members into memory; never extracts to disk, so member names cannot reach the filesystem."""
    import tarfile

    def members():
        with tarfile.open(fileobj=fileobj, mode="r|") if hasattr(fileobj, "read") \
                else tarfile.open(fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    raise ValueError(f"{where}: tar member {info.name!r} is not a regular file")
                yield info.name, tar.extractfile(info).read()

    try:
        yield from group_members(members(), where)
    except tarfile.TarError as e:
        raise ValueError(f"{where}: not a readable tar: {e}") from None
