"""`tsd viz`'s command line: the pictures of any release and its runs (tools.viz) and those of a
segmentation release (tools.segviz)."""
from __future__ import annotations

from ..config import add_device_argument
from . import segviz
from .viz import plot_curves, plot_mixes, plot_pca


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
    curves = sub.add_parser("curves", help="training curves from run folders' log.jsonl and val.jsonl")
    curves.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    curves.add_argument("--out", required=True, help="PNG file to write")
    curves.add_argument("--x", default="epochs", choices=("epochs", "images"), dest="x_axis",
                        help="x axis: epochs over the real train set (default; runs line up) or images seen")
    segviz.add_arguments(sub)


def run(args) -> int:
    """`tsd viz mixes|pca|curves ...`."""
    if args.what == "mixes":
        out = plot_mixes(args.release, args.out, args.rows, args.seed)
    elif args.what == "pca":
        out = plot_pca(args.release, args.runs, args.out, args.per_class, args.mixes, args.device, args.seed)
    elif args.what == "curves":
        out = plot_curves(args.runs, args.out, args.x_axis)
    else:
        out = segviz.run(args)
    print(f"viz {args.what}: wrote {out}")
    return 0
