"""The built-in procedural dataset of `tsd demo`: shapes and textures a small CNN learns in minutes.

Each class is a shape or a texture (circle, square, triangle, ring, cross, stripes, checkerboard,
dots, star, ...) drawn at a random position, scale and rotation, in random foreground and
background colours (so colour says nothing about the class), over a flat or graded background,
with mild noise, at random sizes (width and height drawn independently, so aspect ratios vary).
About 10% of the files are PNG, the rest JPEG quality 92, so ingest sees both.

Every image has its own random stream derived from (seed, class, index): the tree is byte-identical
on rerun and an image does not change when `num_classes` or `per_class` does.

`write_toy_segmentation` draws the segmentation counterpart: scenes of 1-3 shapes (circle, square,
triangle, ring), each with its own colour or texture, over a textured background, with the mask of
what was drawn, in the pairs layout `tsd ingest` reads (images/, masks/, classes.txt).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..contract.files import done, mark_done, read_json
from ..contract.ids import fingerprint
from ..contract.images import encode_image

MARKER = ".complete"
VERSION = 1   # bump when drawing changes, so trees made by older code are rebuilt
PNG_SHARE = 0.1
JPEG_QUALITY = 92
MIN_CONTRAST = 70   # luma difference between foreground and background, out of 255

SHAPES = frozenset({"circle", "square", "triangle", "ring", "cross", "star", "hexagon"})
# The first ten are the default demo classes; the rest allow up to len(CLASS_ORDER) classes.
CLASS_ORDER = ("circle", "square", "triangle", "ring", "cross", "hstripes", "vstripes",
               "checkerboard", "dots", "star", "diagonal", "hexagon")


# -- drawing ------------------------------------------------------------------------------------
def _rotated(points, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _regular_polygon(n: int, radius: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon, or of an n-pointed star when `inner` (radius ratio) is given."""
    steps = 2 * n if inner else n
    points = []
    for i in range(steps):
        r = radius * (inner if inner and i % 2 else 1.0)
        a = 2 * math.pi * i / steps - math.pi / 2
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def _cross(radius: float, arm: float) -> list[tuple[float, float]]:
    r, a = radius, arm
    return [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]


def _shape_mask(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A shape at a random scale, rotation and position that keeps it inside the image."""
    radius = min(width, height) * rng.uniform(0.22, 0.42)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "ring":
        draw.ellipse(box, outline=255, width=max(2, int(radius * rng.uniform(0.2, 0.35))))
    elif kind == "square":
        side = radius / math.sqrt(2)
        draw.polygon(_rotated([(-side, -side), (side, -side), (side, side), (-side, side)], angle, cx, cy), fill=255)
    elif kind == "triangle":
        draw.polygon(_rotated(_regular_polygon(3, radius), angle, cx, cy), fill=255)
    elif kind == "hexagon":
        draw.polygon(_rotated(_regular_polygon(6, radius), angle, cx, cy), fill=255)
    elif kind == "star":
        draw.polygon(_rotated(_regular_polygon(5, radius, inner=0.42), angle, cx, cy), fill=255)
    else:  # cross
        draw.polygon(_rotated(_cross(radius, radius * rng.uniform(0.2, 0.3)), angle, cx, cy), fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _texture_mask(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A texture over the whole image, with a random period, phase and a small tilt."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = {"hstripes": math.pi / 2, "vstripes": 0.0, "diagonal": math.pi / 4,
            "checkerboard": 0.0, "dots": 0.0}[kind]
    angle = base + rng.uniform(-0.2, 0.2)
    u = x * math.cos(angle) + y * math.sin(angle) + rng.uniform(0, 100)
    v = -x * math.sin(angle) + y * math.cos(angle) + rng.uniform(0, 100)
    period = rng.uniform(7, 15)
    if kind in ("hstripes", "vstripes", "diagonal"):
        mask = (u % period) < period * rng.uniform(0.35, 0.6)
    elif kind == "checkerboard":
        mask = ((u // period) + (v // period)) % 2 == 0
    else:  # dots on a grid
        du, dv = u % period - period / 2, v % period - period / 2
        mask = du * du + dv * dv < (period * rng.uniform(0.2, 0.32)) ** 2
    return mask.astype(np.float32)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours far enough apart in brightness to see the shape."""
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(float(fg @ luma - bg @ luma)) >= MIN_CONTRAST:
            return fg, bg


def render(kind: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class `kind` (one of CLASS_ORDER)."""
    if kind not in CLASS_ORDER:
        raise ValueError(f"unknown toy class {kind!r} (expected one of {', '.join(CLASS_ORDER)})")
    mask = (_shape_mask if kind in SHAPES else _texture_mask)(kind, width, height, rng)[..., None]
    fg, bg = _colours(rng)
    if rng.random() < 0.5:   # graded background: the class is not "the flat area"
        ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        background = bg * (1 - 0.35 * ramp) + rng.uniform(0, 255, 3) * 0.35 * ramp
    else:
        background = np.broadcast_to(bg, (height, width, 3))
    pixels = background * (1 - mask) + fg * mask
    pixels = pixels + rng.normal(0.0, rng.uniform(2, 8), pixels.shape)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


# -- the tree -----------------------------------------------------------------------------------
def write_toy_dataset(root, *, num_classes: int = 10, per_class: int = 60, seed: int = 0,
                      size_range: tuple[int, int] = (48, 96)) -> list[str]:
    """Write `root/<class>/<NNNN>.jpg|png`; return the class names, sorted (ingest's label order).

    Does nothing when `root/.complete` records the same parameters. A previous toy tree with other
    parameters is replaced; a non-empty folder that is not a toy tree is refused (never deleted)."""
    if not 1 <= num_classes <= len(CLASS_ORDER):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_ORDER)}, got {num_classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise ValueError(f"size_range must be (lo, hi) with 16 <= lo <= hi, got {size_range}")
    root = Path(root)
    params = {"version": VERSION, "num_classes": num_classes, "per_class": per_class, "seed": seed,
              "size_range": [lo, hi]}
    names = list(CLASS_ORDER[:num_classes])

    def fill(partial: Path) -> None:
        for class_index, name in enumerate(names):
            (partial / name).mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.Generator(np.random.PCG64([seed, class_index, i]))
                width, height = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                image = render(name, width, height, rng)
                ext = "png" if rng.random() < PNG_SHARE else "jpg"
                (partial / name / f"{i:04d}.{ext}").write_bytes(encode_image(image, ext, JPEG_QUALITY))

    _build_tree(Path(root), params, fill)
    return sorted(names)


def _build_tree(root: Path, params: dict, fill) -> None:
    """Write a toy tree with `fill(folder)` unless `root/.complete` records the same parameters. A
    previous toy tree with other parameters is replaced; a non-empty folder that is not a toy tree is
    refused (never deleted). Built beside the target and swapped in, so an interrupted run never
    leaves a half tree at root."""
    if done(root / MARKER, fingerprint(params)) is not None:
        return
    if root.exists() and any(root.iterdir()) and read_json(root / MARKER) is None:
        raise FileExistsError(f"{root}: exists, is not empty and is not a toy dataset; refusing to overwrite")
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    fill(partial)
    mark_done(partial / MARKER, fingerprint(params), params)
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)


# -- segmentation scenes ------------------------------------------------------------------------
# Class 0 is the background; the others are shapes, each filled with its own colour or two-colour
# texture over a textured background, so a pixel's class is told by the shape it belongs to.
SEG_CLASSES = ("background", "circle", "square", "triangle", "ring")
SEG_VERSION = 1
TEXTURES = ("hstripes", "vstripes", "diagonal", "checkerboard", "dots")


def _texture(width: int, height: int, rng: np.random.Generator, contrast: float) -> np.ndarray:
    """Pixels [H, W, 3]: a flat colour, or a random texture between it and a second colour."""
    base, other = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if rng.random() < 0.6:
        pattern = _texture_mask(TEXTURES[int(rng.integers(len(TEXTURES)))], width, height, rng)[..., None]
        pixels = pixels * (1 - contrast * pattern) + other * contrast * pattern
    return pixels


def render_scene(size: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One RGB scene [size, size] of 1-3 shapes (later ones on top) and its mask: uint8 class ids
    (indices into SEG_CLASSES) of what each pixel shows."""
    pixels = _texture(size, size, rng, contrast=0.35)
    if rng.random() < 0.5:   # graded background, as the classification toy data
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
        pixels = pixels * (1 - 0.35 * ramp) + rng.uniform(0, 255, 3) * 0.35 * ramp
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        class_id = int(rng.integers(1, len(SEG_CLASSES)))
        region = _shape_mask(SEG_CLASSES[class_id], size, size, rng) > 0.5
        fill = _texture(size, size, rng, contrast=0.6)
        pixels[region] = fill[region]
        mask[region] = class_id
    pixels = pixels + rng.normal(0.0, rng.uniform(2, 6), pixels.shape)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), mask


def write_toy_segmentation(root, *, train: int = 48, val: int = 16, seed: int = 0, size: int = 64) -> list[str]:
    """Write scenes in the pairs layout `tsd ingest` reads: `root/images/{train,val}/<NNNN>.jpg|png`,
    `root/masks/{train,val}/<NNNN>.png` (8-bit class ids) and `root/classes.txt`; return the class
    names (index = class id). Each scene has its own random stream from (seed, split, index): the tree
    is byte-identical on rerun. Reuse and refusal as `write_toy_dataset`."""
    if train < 1 or val < 0:
        raise ValueError(f"train must be at least 1 and val at least 0, got {train}, {val}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    params = {"version": SEG_VERSION, "kind": "segmentation", "train": train, "val": val, "seed": seed, "size": size}

    def fill(partial: Path) -> None:
        (partial / "classes.txt").write_text("".join(f"{name}\n" for name in SEG_CLASSES))
        for split_index, (split, count) in enumerate((("train", train), ("val", val))):
            for folder in ("images", "masks"):
                (partial / folder / split).mkdir(parents=True)
            for i in range(count):
                rng = np.random.Generator(np.random.PCG64([seed, 1000 + split_index, i]))
                image, mask = render_scene(size, rng)
                ext = "png" if rng.random() < PNG_SHARE else "jpg"
                (partial / "images" / split / f"{i:04d}.{ext}").write_bytes(encode_image(image, ext, JPEG_QUALITY))
                Image.fromarray(mask, mode="L").save(partial / "masks" / split / f"{i:04d}.png", compress_level=6)

    _build_tree(Path(root), params, fill)
    return list(SEG_CLASSES)
