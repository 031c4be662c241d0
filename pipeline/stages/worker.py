"""The shard worker: one planned shard in, one published shard out. No Ray in here.

Per batch of planned samples: load the parents (mixes) or the source image (real), generate the
mix, encode the stored image, decode those stored bytes, run the teacher on the K recorded views,
and assemble the members. CPU work (loading, encoding, decoding) runs in threads, overlapped with
the device's work on the neighbouring batches. The tar is published atomically, then its stats.
"""
from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..config import JobConfig
from ..contract import storage
from ..contract.device import resolve_device, to_device, torch_dtype
from ..contract.generators import render_prompt
from ..contract.images import decode_image, pil_to_tensor, store_image, tensor_to_pil
from ..contract.layout import HEAD_FILE, shard_kind_split
from ..contract.errors import UserError
from ..contract.samples import (M_FEATURES, M_JSON, M_MASK, SampleMeta, dense_summary, encode_dense, encode_teacher,
                                npy_bytes, teacher_summary)
from ..contract.shards import publish_shard, read_stats, shard_identity, tar_bytes
from ..contract.views import normalize, views_batch
from ..models.teacher import Teacher, load_teacher
from ..runtime import quiet_libraries
from ..sources.decode import ImageRejected, open_rgb
from ..sources.index import decode_limits
from .planfile import PlanRow
from .segmentation import is_segmentation, stored_mask


@dataclass
class Made:
    """What the worker made of one planned sample: its members and index record, or why it failed."""
    row: PlanRow
    members: dict | None = None
    record: dict | None = None    # uid, teacher top-1 and entropy: the release's index columns
    failure: str | None = None


class Failure(Exception):
    """A sample that cannot be made: recorded with its reason in the shard stats; the job goes on."""


TEACHER_LOADS = 0   # teachers this process has loaded (a worker shared by a family's releases loads one)


class ShardWorker:
    def __init__(self, job: JobConfig, release_dir, device: str = "auto", threads: int = 4,
                 origin: dict | None = None, teacher: Teacher | None = None):
        """`release_dir`: a folder or a URL; `origin`: where this worker runs (the Ray node id), for the stats;
        `teacher`: one already loaded for this job's head (a family's releases share one), else loaded here."""
        quiet_libraries()
        self.job = job
        self.root = str(release_dir)
        self.origin = {"host": socket.gethostname(), "pid": os.getpid(), **(origin or {})}
        self.device = resolve_device(device)
        self._threads_before = torch.get_num_threads()
        if self.device.type == "cpu":
            # CPU kernels split reductions by thread count: fixing it keeps reruns byte-identical
            torch.set_num_threads(max(1, int(job.generate.cpus_per_worker)))
        self.teacher: Teacher = teacher if teacher is not None else self._load_teacher()
        # the task is the index's; the head must be of it (a stale head from another ingest is refused)
        self.dense = is_segmentation(job)
        if self.teacher.dense != self.dense:
            raise UserError(f"{storage.join(self.root, HEAD_FILE)}: a {'dense' if self.teacher.dense else 'classification'} "
                            f"head, but {job.data.index} is a {'segmentation' if self.dense else 'classification'} "
                            "index: run `tsd probe` again")
        self.limits = decode_limits(job.data.index)
        self._generator = None
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tsd-cpu")
        # stage drivers (load next batch, post-process previous one); they fan out into `pool`
        self.stages = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tsd-stage")

    def _load_teacher(self) -> Teacher:
        global TEACHER_LOADS
        TEACHER_LOADS += 1
        teacher = load_teacher(self.job.teacher, storage.join(self.root, HEAD_FILE)).to(self.device)
        # the backbone in the configured precision; the small head stays fp32 (Teacher casts features)
        teacher.backbone.to(torch_dtype(self.job.teacher.dtype, self.device))
        return teacher

    @property
    def generator(self):
        """Built on first use: a worker that only writes real shards never loads diffusion models."""
        if self._generator is None:
            from ..models.build import build_generator

            self._generator = build_generator(self.job.generator, self.device)
        return self._generator

    # -- one shard -------------------------------------------------------------------------------
    def run_shard(self, name: str, rows: list[PlanRow], makers: dict, skip_done: bool = True) -> dict:
        """Make shard `name` from its planned rows; `makers` (`JobFolder.makers`: the plan's fingerprint,
        the head's and weights' identities) give the shard identity its stats record."""
        identity = shard_identity(name, **makers)
        if skip_done and (stats := read_stats(self.root, name, identity)) is not None:
            return stats
        t0 = time.time()
        samples, records, failures = [], [], []
        for made in self.make_samples(rows):
            if made.failure:
                failures.append({"uid": made.row.uid, "reason": made.failure})
            else:
                samples.append((made.row.uid, made.members))
                records.append(made.record)
        kind, split = shard_kind_split(name)
        stats = {"kind": kind, "split": split, "count": len(samples), "planned": len(rows),
                 "failures": failures, "samples": records, "seconds": round(time.time() - t0, 3),
                 "device": str(self.device), **identity, **self.origin}
        return publish_shard(self.root, name, tar_bytes(samples), stats)

    def make_samples(self, rows: list[PlanRow]) -> list[Made]:
        """One `Made` per planned row, in plan order.

        A software pipeline over batches: while the device generates batch i, CPU threads load
        batch i+1 and encode/decode batch i-1; then the teacher labels batch i-1. The device only
        waits when the CPU side is slower than the generator."""
        size = self.job.generator.batch_size if rows and rows[0].kind == "mix" else 64
        batches = [rows[i:i + size] for i in range(0, len(rows), size)]
        results: dict[str, Made] = {}
        loading = self.stages.submit(self._load, batches[0]) if batches else None
        posting = None
        for i in range(len(batches)):
            loaded = loading.result()
            loading = self.stages.submit(self._load, batches[i + 1]) if i + 1 < len(batches) else None
            generated = self._generate(loaded, results)
            ready, posting = posting, self.stages.submit(self._post, generated, results)
            if ready is not None:
                self._teach(ready.result(), results)
        if posting is not None:
            self._teach(posting.result(), results)
        return [results[row.uid] for row in rows]

    def prompt_text(self, row: PlanRow) -> str:
        """A prompted mix's prompt: its planned template with its planned class."""
        templates = self.job.generator.templates
        if row.prompt >= len(templates):
            raise Failure(f"prompt template {row.prompt} planned, generator.prompts has {len(templates)}")
        return render_prompt(templates[row.prompt], row.class_name)

    # -- stages ----------------------------------------------------------------------------------
    def _load(self, rows: list[PlanRow]) -> list[tuple[PlanRow, object]]:
        """CPU: the source image (real, PIL) or both parents (mix, uint8 tensors), or a Failure."""
        def load(row):
            try:
                if row.kind == "real":
                    return row, open_rgb(row.path, **self.limits)
                if row.prompt is not None:   # a prompted mix: nothing to load, its prompt is its input
                    return row, self.prompt_text(row)
                return row, tuple(pil_to_tensor(open_rgb(p, **self.limits)) for p in row.parent_paths)
            except ImageRejected as e:
                return row, Failure(f"unreadable {'source' if row.kind == 'real' else 'parent'}: {e}")
            except Failure as e:
                return row, e
        return list(self.pool.map(load, rows))

    def _generate(self, loaded: list[tuple[PlanRow, object]], results: dict) -> list[tuple[PlanRow, object]]:
        """Device: mixes for the parent pairs; real images pass through. Failures go to `results`."""
        ok = []
        for row, item in loaded:
            if isinstance(item, Failure):
                results[row.uid] = Made(row, failure=str(item))
            else:
                ok.append((row, item))
        if not ok or ok[0][0].kind == "real":
            return ok
        rows = [r for r, _ in ok]
        if rows[0].prompt is not None:
            images, failures = self.generator.prompt([text for _, text in ok], [r.seed for r in rows])
        else:
            images, failures = self.generator.mix([p[0] for _, p in ok], [p[1] for _, p in ok],
                                                  [r.weight for r in rows], [r.seed for r in rows])
        out = []
        for row, image, failure in zip(rows, images, failures):
            if failure:
                results[row.uid] = Made(row, failure=failure)
            else:
                out.append((row, image))
        return out

    def _post(self, generated: list[tuple[PlanRow, object]], results: dict) -> list[tuple]:
        """CPU: encode the stored bytes, decode them back (what the student will see), cut the views;
        a real segmentation sample's mask stored at the stored image's size. Items: (row, image bytes,
        views, extra members)."""
        data_cfg = self.job.data

        def post(item):
            row, image = item
            pil = image if row.kind == "real" else tensor_to_pil(image)
            data = store_image(pil, data_cfg.store_size, data_cfg.image_format, data_cfg.quality)
            pixels = decode_image(data)
            if (pixels.shape[2], pixels.shape[1]) != (row.width, row.height):
                return row, Failure(f"stored size {pixels.shape[2]}x{pixels.shape[1]} differs from the plan's "
                                    f"{row.width}x{row.height} (source changed since ingest?)")
            extra = {}
            if self.dense and row.kind == "real":   # mixes carry no mask
                try:
                    extra[M_MASK], _ = stored_mask(self.job, row.mask_path, row.width, row.height)
                except (OSError, ValueError, TypeError) as e:
                    return row, Failure(f"mask: {e}" if row.mask_path else "no mask planned for a segmentation sample")
            return row, (data, views_batch(pixels, row.views, self.job.teacher.img_size), extra)
        out = []
        for row, item in self.pool.map(post, generated):
            if isinstance(item, Failure):
                results[row.uid] = Made(row, failure=str(item))
            else:
                out.append((row, *item))
        return out

    def _teach(self, posted: list[tuple], results: dict) -> None:
        """Device: the teacher on every view of the batch; the samples' members assembled."""
        logits, feats = self._teacher([views for _, _, views, _ in posted])
        for i, (row, data, _, extra) in enumerate(posted):
            members, record = self._members(row, data, logits[i], feats[i] if feats is not None else None, extra)
            results[row.uid] = Made(row, members, record)

    @torch.no_grad()
    def _teacher(self, views: list[torch.Tensor]) -> tuple[list, list | None]:
        """Teacher logits [K, C] (dense: [K, C, h, w]) and features [K, D] per sample, views batched
        across samples."""
        if not views:
            return [], None
        x = torch.cat(views)
        dtype = next(self.teacher.backbone.parameters()).dtype
        bs = self.job.teacher.batch_size
        features = self.job.generate.features
        logits, feats = [], []
        for i in range(0, len(x), bs):
            chunk = normalize(to_device(x[i:i + bs], self.device), self.teacher.mean, self.teacher.std).to(dtype)
            lg, ft = self.teacher(chunk)
            logits.append(lg.float())
            if features:
                feats.append(ft.float())
        # to the host once per batch, after every chunk is queued (a copy per chunk would stall the device)
        counts = [len(v) for v in views]
        logits = list(torch.cat(logits).cpu().split(counts))
        feats = list(torch.cat(feats).cpu().split(counts)) if features else None
        return logits, feats

    def _members(self, row: PlanRow, data: bytes, logits: torch.Tensor, feats: torch.Tensor | None,
                 extra: dict | None = None):
        gen = self.job.generate
        logits = logits.numpy()
        topk = gen.topk if gen.logits == "topk" else None
        if self.dense:   # per location, the rest mass a member of its own (contract.samples.encode_dense)
            teacher, rest = encode_dense(logits, topk), None
        else:
            teacher, rest = encode_teacher(logits, topk)
        meta = SampleMeta(
            uid=row.uid, split=row.split, kind=row.kind, label=int(row.label), seed=int(row.seed),
            views=[[*v[:4], int(v[4])] for v in row.views], width=int(row.width), height=int(row.height),
            parents=tuple(row.parents or ()), weight=row.weight,
            generator=self.job.generator.kind if row.kind == "mix" else None, topk_rest=rest,
            prompt_class=row.class_name if row.prompt is not None else None,
            prompt=self.prompt_text(row) if row.prompt is not None else None)
        members = {self.job.data.image_format: data, M_JSON: meta.to_json(), **(extra or {}), **teacher}
        if feats is not None:
            members[M_FEATURES] = npy_bytes(feats.numpy().astype(np.float16))
        top1, entropy = (dense_summary if self.dense else teacher_summary)(logits)
        return members, {"uid": row.uid, "teacher_top1": top1, "teacher_entropy": round(entropy, 6)}

    def close(self):
        self.stages.shutdown(wait=True)
        self.pool.shutdown(wait=True)
        torch.set_num_threads(self._threads_before)
