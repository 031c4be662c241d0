"""`tsd report REL [RUN_OR_COMPARE ...] --out DIR`: a static site for a release and its runs.

DIR/index.html opens from the disk with no server and no network: plain JavaScript (assets/app.js),
the data in DIR/data.js, thumbnails in DIR/img/. One job per module: `data` (what is shown, read
from the release's manifest, index and shard stats and from run / compare folders), `thumbs`,
`page` (writing the files), `serve` (--serve: loopback HTTP).

It shows a bounded, stated sample: the `--mixes` highest-entropy mixes (with their parents) and
`--per-class` real images per class, so only the shards holding those are opened. A segmentation
release (`data_seg`) groups its real images by the teacher's dominant class and shows label maps
(the stored masks, the teacher's map of each view) as coloured layers over the images.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from ... import __version__
from ...contract import storage
from ...contract.errors import UserError
from ...contract.manifest import manifest_task
from ...contract.tasks import SEGMENTATION
from ..reader import ReleaseReader

DEFAULT_MIXES = 200
DEFAULT_PER_CLASS = 8
DISAGREEMENTS_SHOWN = 48   # per run


def build_report(rel, runs: list[str], out, mixes: int = DEFAULT_MIXES, per_class: int = DEFAULT_PER_CLASS) -> dict:
    """Write the site into the local folder `out`; returns {'index': path, 'mixes': cards written, ...}."""
    from . import data
    from .page import write_site
    from .thumbs import write_thumbs

    if mixes < 0 or per_class < 0:
        raise UserError(f"--mixes and --per-class must be >= 0, got {mixes} and {per_class}")
    t0 = time.perf_counter()
    out = Path(storage.local_path(out))
    (out / "img").mkdir(parents=True, exist_ok=True)
    release = ReleaseReader(rel)
    task = manifest_task(release.manifest)
    seg = task == SEGMENTATION
    classes = release.manifest["classes"]
    summary = data.release_summary(release)
    run_records, compares = data.collect_runs(runs, classes)
    # the images where a run's student and the teacher disagree, a bounded number per run
    extra = {d["uid"] for r in run_records for d in r.get("disagreements", [])[:DISAGREEMENTS_SHOWN]}
    # a segmentation image has no label (-1): its class is the teacher's dominant one
    top, real, others = data.pick(release, mixes, per_class, extra, group="teacher_top1" if seg else "label")
    rows = top + real + list(others.values())
    samples = data.read_samples(release, rows)
    records = {}
    if seg:
        from . import data_seg
        from .thumbs import write_label_thumbs

        settings = data_seg.page_settings(len(classes), task)
        colours = data_seg.palette(len(classes))
        for r in run_records:
            r.update(data_seg.run_iou(Path(r["folder"]), classes))
    for row in rows:
        members = samples.get(row["uid"])
        if members is None:
            raise UserError(f"{release.shard_path(row['shard'])}: sample {row['uid']} of the index is not in "
                            f"its shard")
        if seg:
            rec, layers = data_seg.sample_record(row, members, classes)
            rec["layers"] = write_label_thumbs(out, row["uid"], layers, colours)
        else:
            rec = data.sample_record(row, members, classes)
        rec.update(write_thumbs(out, row["uid"], data.image_bytes(members)))
        records[row["uid"]] = rec
    built = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report = {"tool": f"tsdistill {__version__}", "built": built,
              "limits": {"mixes": mixes, "per_class": per_class, "disagreements": DISAGREEMENTS_SHOWN},
              "release": summary, "generation": data.generation_stats(release),
              "mixes": [records[r["uid"]] for r in top],
              "real": [records[r["uid"]] for r in real],
              "others": [records[u] for u in others],   # parents of the mixes, disagreements
              "runs": run_records, "compares": compares}
    if seg:   # only a segmentation report has it: a classification one is written as before
        report["segmentation"] = dict(settings, mask_pixels=data_seg.mask_pixels(list(records.values()), len(classes)))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    index = write_site(out, report)
    return {"index": index, "mixes": len(report["mixes"]), "real": len(report["real"]), "runs": len(run_records),
            "compares": len(compares), "seconds": report["seconds"]}


def add_arguments(p) -> None:
    p.add_argument("release", help="release folder or fsspec URL")
    p.add_argument("runs", nargs="*", metavar="RUN_OR_COMPARE",
                   help="`tsd train` run folders and `tsd compare` output folders to show")
    p.add_argument("--out", required=True, help="local folder the site is written to (DIR/index.html)")
    p.add_argument("--mixes", type=int, default=DEFAULT_MIXES, help="show the N highest-entropy mixes")
    p.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="real images shown per class")
    p.add_argument("--serve", action="store_true", help="then serve the site on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=0, help="port for --serve (default: a free one)")


def run(args) -> int:
    if storage.is_url(args.out) and not str(args.out).startswith("file://"):
        raise UserError(f"--out {args.out}: the report is written to a local folder")
    done = build_report(args.release, args.runs, args.out, args.mixes, args.per_class)
    print(f"report: {done['index']} ({done['mixes']} mixes, {done['real']} real images, {done['runs']} runs, "
          f"{done['compares']} compares; {done['seconds']:.1f} s)")
    if args.serve:
        from .serve import serve
        serve(Path(done["index"]).parent, args.port)
    return 0
