"""`tsd bench scale`: how planning, the driver's bookkeeping and the release step grow with the job.

For each size (default 10 k, 100 k and 1 M samples) it writes a synthetic ingest index (no images:
only the rows a real one has), then runs, each in a fresh process so its peak memory is its own:
- plan: `write_plan` (pairs, weights, seeds, views, shards; one Parquet row group per shard);
- bookkeeping: what `tsd generate`'s driver does before dispatching work: the plan's footer, the
  listing of finished shards, the leftovers sweep (after every shard was "made": fake tars and the
  stats files a worker writes, per-sample records included);
- release: index.parquet (streamed shard by shard) and manifest.json from the plan and the stats.
It prints the seconds and the peak resident memory of each, against the target: 1 M samples planned
and indexed in under 60 s and 2 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from ..contract.tasks import CLASSIFICATION, SEGMENTATION, TASKS

SIZES = (10_000, 100_000, 1_000_000)
TARGET_S, TARGET_GIB = 60.0, 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=",".join(str(n) for n in SIZES),
                   help="total planned samples per run, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (default 256)")
    p.add_argument("--views", type=int, default=10, help="recorded views per train sample (default 10)")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--task", choices=TASKS, default=CLASSIFICATION,
                   help="the synthetic index's task: segmentation rows carry their mask's path and sha256 "
                        "(default classification)")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)   # internal: one phase in this process
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)


# -- the synthetic job --------------------------------------------------------------------------
def counts_for(total: int) -> tuple[int, int]:
    """(train, val) real images so that train + val + a 1x mix pool is about `total` samples."""
    train = round(total * 9 / 19)
    return train, round(train / 9)


def job_dict(folder: str, total: int, shard_size: int, views: int) -> dict:
    return {"seed": 0, "data": {"index": os.path.join(folder, "ingest", "index.parquet"), "store_size": 256},
            "views": {"k": views}, "plan": {"pool_size": "1x"},
            "generator": {"kind": "mixup", "size": 256},
            "generate": {"shard_size": shard_size}, "release": {"name": f"bench-scale-{total}"}}


def write_index(folder: str, total: int, task: str = CLASSIFICATION) -> None:
    """A synthetic ingest index; a segmentation one as ingest writes it (label -1, no class name, each
    row's mask path and sha256: the two columns that make its index larger), over 150 classes."""
    import numpy as np

    from ..contract.ids import make_uid
    from ..sources.index import write_index as write

    train, val = counts_for(total)
    n = train + val
    rng = np.random.default_rng(0)
    segmentation = task == SEGMENTATION
    classes = [f"class{c:03d}" for c in range(150 if segmentation else 100)]
    labels = [-1] * n if segmentation else rng.integers(0, len(classes), n).tolist()
    widths, heights = rng.integers(300, 800, n).tolist(), rng.integers(300, 800, n).tolist()
    rows = [{"uid": make_uid("bench", i), "path": f"/data/bench/{i:07d}.jpg", "relpath": f"{i:07d}.jpg",
             "label": labels[i], "class_name": "" if segmentation else classes[labels[i]],
             "split": "train" if i < train else "val", "sha256": "0" * 64, "width": widths[i], "height": heights[i],
             "source_mode": "RGB"} for i in range(n)]
    if segmentation:
        for i, row in enumerate(rows):
            row["mask_path"], row["mask_sha256"] = f"/data/bench/masks/{i:07d}.png", f"{i:064x}"
    rows.sort(key=lambda r: r["uid"])
    write(os.path.join(folder, "ingest", "index.parquet"), rows, classes, {"min_size": 16}, task=task)


def load(folder: str):
    from ..config import JobConfig
    from ..contract.configlib import build

    with open(os.path.join(folder, "job.json")) as f:
        return build(JobConfig, json.load(f))


# -- the phases (each run in its own process) ----------------------------------------------------
def phase_plan(folder: str) -> dict:
    from ..stages.jobdir import plan_path
    from ..stages.plan import write_plan

    plan = write_plan(load(folder), plan_path(folder))
    return {"samples": len(plan), "shards": len(plan.shard_names())}


def phase_fake_shards(folder: str) -> dict:
    """What the workers would leave: a small tar and the stats of every shard (not timed as a result)."""
    from ..contract.files import atomic_write
    from ..contract.layout import HEAD_FILE
    from ..contract.shards import publish_shard, shard_identity
    from ..stages.jobdir import JobFolder, plan_path
    from ..stages.plan import read_plan

    plan = read_plan(plan_path(folder))
    atomic_write(os.path.join(folder, HEAD_FILE), b"not read: the release records its sha256")
    makers = JobFolder(load(folder), folder).makers(plan.fingerprint)
    for name in plan.shard_names():
        uids = plan.table(name, ["uid"]).column("uid").to_pylist()
        samples = [{"uid": u, "teacher_top1": i % 100, "teacher_entropy": 1.5} for i, u in enumerate(uids)]
        publish_shard(folder, name, b"\0" * 1024, {"kind": name.split("/")[0], "count": len(uids), "planned": len(uids),
                                                  "failures": [], "samples": samples, "seconds": 0.0, "device": "none",
                                                  **shard_identity(name, **makers)})
    return {}


def phase_bookkeeping(folder: str) -> dict:
    from ..stages.distribute.pending import pending_shards, remove_leftovers
    from ..stages.jobdir import JobFolder, plan_path
    from ..stages.plan import read_plan

    plan = read_plan(plan_path(folder))
    names = plan.shard_names()
    todo, _ = pending_shards(folder, names, JobFolder(load(folder), folder).makers(plan.fingerprint))
    remove_leftovers(folder, names)
    return {"pending": len(todo), "shards": len(names)}


def phase_release(folder: str) -> dict:
    from ..contract.files import write_json
    from ..contract.layout import PROBE_METRICS
    from ..stages.jobdir import plan_path
    from ..stages.plan import read_plan
    from ..stages.release import write_release

    write_json(os.path.join(folder, PROBE_METRICS), {"val_top1": 0.0})
    manifest = write_release(load(folder), folder, read_plan(plan_path(folder)))
    return {"indexed": sum(manifest["counts"].values())}


PHASES = {"plan": phase_plan, "fake-shards": phase_fake_shards, "bookkeeping": phase_bookkeeping,
          "release": phase_release}


def run_phase(folder: str, phase: str) -> dict:
    """Run one phase in a fresh interpreter: (seconds, peak RSS of that process, its result)."""
    cmd = [sys.executable, "-m", "pipeline.bench.scale", "--phase", phase, "--dir", folder]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench scale {phase}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss() -> int:
    """This process's peak resident memory (bytes): VmHWM, which a new program starts afresh
    (getrusage's ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_process(args) -> int:
    """`--phase`: do it here and print one JSON line (seconds, peak RSS after imports, result)."""
    base = peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    result = PHASES[args.phase](args.dir)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss()
    print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_bytes": peak,
                      "start_bytes": base, **result}))
    return 0


if __name__ == "__main__":  # one phase, without the CLI's imports (their memory is not the phase's)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(in_process(parser.parse_args()))


def measure(args) -> list[dict]:
    results = []
    for total in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            with open(os.path.join(folder, "job.json"), "w") as f:
                json.dump(job_dict(folder, total, args.shard_size, args.views), f)
            write_index(folder, total, args.task)
            row = {"size": total, "task": args.task}
            for phase in ("plan", "fake-shards", "bookkeeping", "release"):
                got = run_phase(folder, phase)
                if phase != "fake-shards":
                    row[phase] = got
            results.append(row)
            print(line(row), flush=True)
    return results


def line(row: dict) -> str:
    gib = 1 << 30
    plan, book, rel = row["plan"], row["bookkeeping"], row["release"]
    total_s = plan["seconds"] + rel["seconds"]
    peak = max(plan["peak_bytes"], rel["peak_bytes"], book["peak_bytes"]) / gib
    verdict = ""
    if row["size"] >= 1_000_000:
        ok = total_s < TARGET_S and peak < TARGET_GIB
        verdict = f"  [{'within' if ok else 'OVER'} the target: {TARGET_S:.0f} s, {TARGET_GIB:.0f} GiB]"
    def cell(p):
        return f"{p['seconds']:6.1f} s ({p['cpu_seconds']:.1f} s CPU) {p['peak_bytes'] / gib:5.2f} GiB"
    return (f"{row['size']:>9,} samples, {plan['shards']:>5} shards: plan {cell(plan)} | bookkeeping {cell(book)} | "
            f"release {cell(rel)} | plan + release {total_s:.1f} s{verdict}")


def run(args) -> int:
    if args.phase:
        return in_process(args)
    print(f"bench scale: plan, the driver's bookkeeping and the release index; shard size {args.shard_size}, "
          f"{args.views} views; wall and CPU seconds, and the peak resident memory of each step's own process "
          "(the interpreter and its imports included)", flush=True)
    results = measure(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0
