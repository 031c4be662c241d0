"""`tsd demo`'s command line: the classification demo (demo.runner), its compare, the real-size run
(demo.realsize) and the segmentation demo (demo.segmentation)."""
from __future__ import annotations

from ..contract.tasks import CLASSIFICATION, SEGMENTATION, TASKS
from .runner import SIZES, run_compare_demo, run_demo


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-out", help="output folder (default: ./demo-out)")
    p.add_argument("--size", default="demo", choices=sorted(SIZES),
                   help="'demo' (default) or 'small' (fewer images and steps; what the tests run)")
    p.add_argument("--real-size", action="store_true",
                   help="every stage with random-weight models at the paper's sizes (DINOv2 ViT-g/14, ImageMixer, "
                        "CLIP ViT-L/14, ResNet-50, ViT-S/16) in their published file layouts: about 7 min on 2 idle CPU "
                        "cores, 9.5 GiB of memory at its peak, 16 GB of disk; prints time and peak memory per stage")
    p.add_argument("--task", default=CLASSIFICATION, choices=TASKS,
                   help="classification (default) or segmentation: procedural scenes whose masks are the shapes drawn, "
                        "a dense teacher, a segmentation student; prints teacher, finetuned and distilled mIoU")
    p.add_argument("--compare", action="store_true",
                   help="also make mixup, cutmix and text-prompted (sd-text) mixes and a finetuned teacher's release, then `tsd compare` "
                        "every row (3 seeds) into OUT/compare")


def run(args) -> int:
    if args.real_size:
        from .realsize import run_real_size

        run_real_size(args.out)
        return 0
    if args.task == SEGMENTATION:
        from .segmentation import run_segmentation_demo

        if args.compare:
            from .segmentation import run_segmentation_compare

            run_segmentation_compare(args.out, args.size)
            return 0
        run_segmentation_demo(args.out, args.size)
        return 0
    if args.compare:
        run_compare_demo(args.out, args.size)
        return 0
    run_demo(args.out, args.size)
    return 0
