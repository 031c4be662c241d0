"""A sample of a shard: its members, its `json` member (`SampleMeta`) and the teacher encodings."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .images import IMAGE_FORMATS

M_JSON = "json"
M_LOGITS = "logits.npy"            # float16 [K, C]: teacher logits on each recorded view
M_TOPK_IDX = "topk_idx.npy"        # int32 [K, k]: top-k classes (instead of full logits)
M_TOPK_LOGITS = "topk_logits.npy"  # float16 [K, k]: their logits; the rest mass is in json
M_FEATURES = "features.npy"        # float16 [K, D]: optional teacher features (CLS ‖ mean patch)
# segmentation (contract/tasks.py): the mask of a real sample, and dense teacher logits per view at
# the teacher's patch grid [h, w] (full, or per location the top k plus the rest of the mass)
M_MASK = "mask.png"                          # uint8 [H, W] PNG at the stored image size; real samples only
M_DENSE_LOGITS = "dense_logits.npy"          # float16 [K, C, h, w]
M_DENSE_TOPK_IDX = "dense_topk_idx.npy"      # uint8 (C <= 256, else int16) [K, k, h, w]
M_DENSE_TOPK_LOGITS = "dense_topk_logits.npy"  # float16 [K, k, h, w]
M_DENSE_REST = "dense_rest.npy"              # float16 [K, h, w]: probability mass outside the top k (T=1)
DENSE_MEMBERS = (M_DENSE_LOGITS, M_DENSE_TOPK_IDX, M_DENSE_TOPK_LOGITS, M_DENSE_REST)
NPY_MEMBERS = (M_LOGITS, M_TOPK_IDX, M_TOPK_LOGITS, M_FEATURES, *DENSE_MEMBERS)


OPTIONAL_KEYS = ("prompt_class", "prompt")   # json keys absent unless set


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
    prompt_class: str | None = None  # prompted generators (sd-text): the class named in the prompt
    prompt: str | None = None        # and the prompt itself (the label stays -1)

    def to_json(self) -> bytes:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in OPTIONAL_KEYS:   # written only when set: other samples' bytes stay as they were
            if d[key] is None:
                del d[key]
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


def encode_dense(logits: np.ndarray, topk: int | None) -> dict:
    """Members for dense teacher logits [K, C, h, w]: full float16, or per location the top k
    (indices, float16 logits) and the float16 rest mass at T=1. The rest is a member, not json:
    it has one value per location."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 4:
        raise ValueError(f"dense logits are [K, C, h, w], got shape {logits.shape}")
    k_views, classes, h, w = logits.shape
    if not topk or topk >= classes:
        return {M_DENSE_LOGITS: npy_bytes(logits.astype(np.float16))}
    flat = logits.transpose(0, 2, 3, 1).reshape(-1, classes)      # [K·h·w, C]
    idx = np.argsort(-flat, axis=1, kind="stable")[:, :topk]
    top = np.take_along_axis(flat, idx, axis=1)
    rest = np.clip(1.0 - np.exp(top - _logsumexp(flat)[:, None]).sum(1), 0.0, 1.0)

    def grid(a):   # [K·h·w, k] → [K, k, h, w]
        return a.reshape(k_views, h, w, -1).transpose(0, 3, 1, 2)
    idx_type = np.uint8 if classes <= 256 else np.int16
    return {M_DENSE_TOPK_IDX: npy_bytes(grid(idx).astype(idx_type)),
            M_DENSE_TOPK_LOGITS: npy_bytes(grid(top).astype(np.float16)),
            M_DENSE_REST: npy_bytes(rest.reshape(k_views, h, w).astype(np.float16))}


def decode_dense(members: dict, num_classes: int, where: str = "") -> np.ndarray:
    """Dense teacher logits [K, C, h, w] float32 from a sample's members (full, or top-k with the
    rest spread evenly over the other classes, as `dense_logits` does for one logit vector)."""
    if M_DENSE_LOGITS in members:
        out = npy_load(members[M_DENSE_LOGITS], where).astype(np.float32)
        if out.ndim != 4 or out.shape[1] != num_classes:
            raise ValueError(f"{where}: dense logits shape {out.shape}, expected [K, {num_classes}, h, w]")
        return out
    if not {M_DENSE_TOPK_IDX, M_DENSE_TOPK_LOGITS, M_DENSE_REST} <= members.keys():
        raise ValueError(f"{where}: sample has no dense teacher logits ({M_DENSE_LOGITS} or {M_DENSE_TOPK_IDX})")
    idx = npy_load(members[M_DENSE_TOPK_IDX], where).astype(np.int64)
    top = npy_load(members[M_DENSE_TOPK_LOGITS], where).astype(np.float32)
    rest = npy_load(members[M_DENSE_REST], where).astype(np.float64)
    if idx.ndim != 4 or idx.shape != top.shape or rest.shape != (idx.shape[0], *idx.shape[2:]):
        raise ValueError(f"{where}: dense top-k shapes {idx.shape}, {top.shape}, {rest.shape} disagree")
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"{where}: dense top-k class index outside 0..{num_classes - 1}")
    k_views, k, h, w = idx.shape
    flat_idx = idx.transpose(0, 2, 3, 1).reshape(-1, k)
    flat_top = top.transpose(0, 2, 3, 1).reshape(-1, k)
    flat_rest = rest.reshape(-1)
    lse = _logsumexp(flat_top) - np.log(np.clip(1.0 - flat_rest, 1e-12, None))
    other = np.log(np.clip(flat_rest / max(num_classes - k, 1), 1e-30, None)) + lse
    out = np.repeat(other[:, None], num_classes, axis=1).astype(np.float32)
    np.put_along_axis(out, flat_idx, flat_top, axis=1)
    return out.reshape(k_views, h, w, num_classes).transpose(0, 3, 1, 2).copy()


def segmentation_sample(members: dict, num_classes: int, where: str = "") -> tuple:
    """(mask, dense logits) of a segmentation sample's members: the mask as a uint8 [H, W] tensor of
    class ids (`masks.decode_mask`; None for a mix, which has none) and the teacher's logits float32
    [K, C, h, w] at its patch grid (`decode_dense`). What a reader of a segmentation release calls."""
    from .masks import decode_mask

    mask = decode_mask(members[M_MASK], where) if M_MASK in members else None
    return mask, decode_dense(members, num_classes, where)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def teacher_summary(logits: np.ndarray) -> tuple[int, float]:
    """Top-1 class and entropy (nats) of the teacher's mean prediction over the views."""
    mean = teacher_mean_probs(logits)
    entropy = float(-(mean * np.log(np.clip(mean, 1e-12, None))).sum())
    return int(mean.argmax()), entropy


def dense_summary(logits: np.ndarray) -> tuple[int, float]:
    """The index's teacher_top1 and teacher_entropy of a segmentation sample, from its dense logits
    [K, C, h, w]: the class most locations of the first view's argmax map take (ties: the lowest
    class), and the mean over those locations of the per-location entropy (nats) at T = 1."""
    z = np.asarray(logits, dtype=np.float64)[0]                 # [C, h, w]
    p = np.exp(z - z.max(0, keepdims=True))
    p /= p.sum(0, keepdims=True)
    entropy = float(-(p * np.log(np.clip(p, 1e-12, None))).sum(0).mean())
    majority = int(np.bincount(z.argmax(0).reshape(-1), minlength=z.shape[0]).argmax())
    return majority, entropy


def teacher_mean_probs(logits: np.ndarray) -> np.ndarray:
    """The teacher's class probabilities averaged over the views: [C] from logits [K, C]."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.mean(0)


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
