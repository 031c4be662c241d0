"""Releases → batches: WebDataset streams in which every sample replays one recorded view.

Determinism (what makes `--resume` exact): the batches of an epoch are a pure function of
(seed, epoch, rank, number of workers):
- shard order: one permutation per (seed, epoch, stream, pass), the same on every rank; the shards
  are then split by rank (`wds.split_by_node`) and by DataLoader worker (`wds.split_by_worker`);
- sample order: each reader's shuffle buffer is seeded by (seed, epoch, stream, pass, rank, slot);
- the view a sample replays: seeded by (seed, epoch, uid) (see trainer.samples);
- batch b of the epoch comes from reader slot b mod W (its shards split like DataLoader worker
  b mod W's), whichever loader worker makes it: one loader serves the whole run (`TrainBatches`);
- each batch is `n_real` real samples then `n_mix` mix samples (the mix ratio is exact in every
  batch), drawn from two endless streams that start over (new shard order) when they run out, so
  every rank makes exactly `steps_per_epoch` batches and DDP never waits on an exhausted rank.
webdataset provides the splitting and the shuffle buffer; shards are read by the format's own tar
reader (`contract.shards.read_shard`, local files or fsspec URLs): no webdataset decoder (their
defaults include pickle), and tar member names never reach the filesystem.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
from dataclasses import dataclass, field

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pipeline.contract.configlib import ConfigError
from pipeline.contract.errors import UserError
from pipeline.contract.ids import derive_seed
from pipeline.contract.shards import iter_shard_samples
from pipeline.contract.views import normalize, view_pixels

from .release import ReleaseSet
from .samples import Corrupt, CorruptCounter, DataError, Replay, collate, parse_sample
from .stopping import defer_stop_signals


def _tar_samples(shards, counter: "CorruptCounter"):
    """webdataset stage: shard URLs → samples, read by the format's own tar reader. A shard that
    cannot be opened or read to its end is reported to `counter` (raise, or skip and count the
    samples it did not give)."""
    for item in shards:
        url = item["url"]
        read = 0
        try:
            for sample in iter_shard_samples(url):
                read += 1
                yield sample
        except UserError as e:  # the storage itself (credentials, endpoint): no shard can be read
            raise DataError(str(e)) from None
        except (OSError, ValueError) as e:
            counter.unreadable(url, e, read)


def _samples(urls, counter):
    """This rank's and worker's share of `urls`, in the given order (shards split by node then worker)."""
    return wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.split_by_node, wds.split_by_worker,
                            lambda shards: _tar_samples(shards, counter))


class Reader:
    """One endless sample stream (real or mix) of one rank and reader slot, for one epoch. Slot s of
    W reads the rank's shards s, s+W, … (what DataLoader worker s of W reads with split_by_worker)."""

    def __init__(self, stream: str, urls: tuple, replay: Replay, epoch: int, shuffle_buffer: int,
                 counter: CorruptCounter, slot: int = 0, slots: int = 1):
        self.stream, self.urls, self.replay, self.epoch = stream, urls, replay, epoch
        self.shuffle_buffer, self.counter, self.slot, self.slots = shuffle_buffer, counter, slot, slots
        self.kind = "mix" if stream.startswith("mix") else "real"
        self._samples = self._passes()
        self._usable = 0

    def _passes(self):
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        seed, worker = self.replay.seed, self.slot
        for n in itertools.count():
            order = list(self.urls)
            random.Random(derive_seed(seed, f"{self.stream}/{self.epoch}/{n}", "shard-order")).shuffle(order)
            reader_seed = derive_seed(seed, f"{self.stream}/{self.epoch}/{n}/{rank}/{worker}", "shuffle")
            mine = order[rank::world][worker::self.slots]   # split_by_node, then by reader slot
            ds = wds.DataPipeline(wds.SimpleShardList(mine), lambda shards: _tar_samples(shards, self.counter))
            if self.shuffle_buffer > 1:
                ds = ds.compose(wds.shuffle(self.shuffle_buffer, seed=reader_seed))
            usable = self._usable
            yield from ds
            if self._usable == usable:
                raise DataError(f"{self.stream}: rank {rank}, worker {worker}: no usable sample in its share of "
                                f"{len(self.urls)} shards ({self.urls[0]}, …)")

    def skip(self, n: int) -> None:
        """Consume n samples without decoding them (replaying an epoch up to a resume point)."""
        for _ in range(n):
            next(self._samples)
            self._usable += 1

    def take(self, n: int) -> list[dict]:
        items = []
        while len(items) < n:
            sample = next(self._samples)
            try:
                items.append(parse_sample(sample, self.kind, self.replay, self.epoch))
                self._usable += 1
            except Corrupt as e:
                self.counter.corrupt(str(e), sample.get("__url__", "?"))
        return items


class TrainBatches(IterableDataset):
    """The batches of optimizer steps [start, stop) of a run on this rank, across epochs: one
    DataLoader serves the whole run (no worker start-up per epoch), and each batch is n_real real
    then n_mix mix samples.

    What batch b of epoch e holds does not depend on the loader: it is the (b // W)-th take of
    reader slot b mod W in that epoch (W = data.workers, at least 1). DataLoader worker j makes
    the steps start + j, start + j + W, … (its round-robin order); within an epoch those all fall
    in one slot, (start + j - e·steps_per_epoch) mod W, whose streams the worker opens for that
    epoch. So a run resumed at any step reads exactly the batches the uninterrupted run did; the
    batches of the resumed epoch before `start` are consumed in the worker (not decoded when
    on_corrupt is 'error'), never handed to the loop."""

    def __init__(self, plan: "TrainPlan", start: int, stop: int):
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self):
        return _carry_errors(self._batches())

    def _batches(self):
        plan, spe = self.plan, self.plan.steps_per_epoch
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        step = self.start + worker
        while step < self.stop:
            epoch, first = divmod(step, spe)
            slot = first % workers
            end = min(spe, self.stop - epoch * spe)
            counter = CorruptCounter(plan.replay.on_corrupt, plan.counts)
            streams = [(Reader(name, urls, plan.replay, epoch, plan.shuffle_buffer, counter, slot, workers), n)
                       for name, urls, n in (("real/train", plan.real_urls, plan.n_real),
                                             ("mix/train", plan.mix_urls, plan.n_mix)) if n]
            light = plan.replay.on_corrupt == "error"
            for _ in range(slot, first, workers):   # trained on before the resume point
                for reader, n in streams:
                    if light:
                        reader.skip(n)
                    else:  # skipping corrupt samples changed what later batches hold: replay it exactly
                        reader.take(n)
                counter.take()  # already counted in the checkpoint
            for _ in range(first, end, workers):
                items = [item for reader, n in streams for item in reader.take(n)]
                yield collate(items, counter.take())
            step = epoch * spe + first + len(range(first, end, workers)) * workers


@dataclass(frozen=True)
class TrainPlan:
    """What a rank reads each epoch: its share of every batch, from which shards, how."""
    real_urls: tuple
    mix_urls: tuple
    n_real: int          # real samples per rank per batch
    n_mix: int           # mix samples per rank per batch
    steps_per_epoch: int
    workers: int
    shuffle_buffer: int
    replay: Replay
    counts: dict = field(default_factory=dict)   # shard url → its sample count (the manifest's)


def train_plan(releases: ReleaseSet, config, world: int, replay: Replay) -> TrainPlan:
    """Batch split and shard checks for `world` ranks; a problem is one ConfigError line."""
    data = config.data
    n_real, n_mix = batch_split(config, world)
    real_shards = releases.shards("real", "train")
    real = tuple(s.url for s in real_shards)
    mix_pool = releases.mix_pool(data.generators, data.mix_pool)
    mix = tuple(s.url for s in mix_pool) if n_mix else ()
    for stream, urls, n in (("real/train", real, n_real), ("mix/train", mix, n_mix)):
        if n:
            check_readers(stream, len(urls), world, data.workers, releases)
    # an epoch is one pass over the real training set (over the mixes when batches hold only mixes)
    per_step, total = (n_real, releases.count("real", "train")) if n_real \
        else (n_mix, sum(s.count for s in mix_pool))
    steps = steps_per_epoch(total, per_step, world)
    counts = {s.url: s.count for s in real_shards + releases.shards("mix", "train")}
    return TrainPlan(real, mix, n_real, n_mix, steps, data.workers, data.shuffle_buffer, replay, counts)


def steps_per_epoch(samples: int, per_step: int, world: int = 1) -> int:
    """Optimizer steps of one pass over `samples`, `per_step` of them per rank and step."""
    return max(1, math.ceil(samples / (per_step * world)))


def batch_split(config, world: int = 1) -> tuple[int, int]:
    """(real, mix) samples per rank in every batch: the global batch split over the ranks, mixes
    taking `data.mix_ratio` of it when the run reads mixes."""
    data = config.data
    if data.batch_size % world:
        raise ConfigError(f"data.batch_size: {data.batch_size} is not divisible by {world} ranks")
    per_rank = data.batch_size // world
    n_mix = round(data.mix_ratio * per_rank) if config.uses_mixes() else 0
    return per_rank - n_mix, n_mix


def check_readers(stream: str, n_shards: int, world: int, workers: int, releases: ReleaseSet) -> None:
    """Every reader (rank × DataLoader worker) needs a shard of its own: else it would idle or hang."""
    readers = world * max(workers, 1)
    if n_shards < readers:
        raise ConfigError(f"data.workers: {releases.describe()} has {n_shards} {stream} shard(s) for {world} "
                          f"rank(s) x {max(workers, 1)} DataLoader worker(s) = {readers} readers; each reader "
                          f"needs its own shard: lower data.workers or write the release with smaller shards")


def train_loader(plan: TrainPlan, start: int, stop: int, pin_memory: bool = False) -> DataLoader:
    """The one loader of a run: the batches of steps [start, stop), across epochs (`TrainBatches`)."""
    # An explicit generator: creating the loader iterator must not draw from the global torch RNG,
    # or a resumed run would drift from the uninterrupted one.
    generator = torch.Generator().manual_seed(derive_seed(plan.replay.seed, f"loader/{start}"))
    return DataLoader(TrainBatches(plan, start, stop), batch_size=None, num_workers=plan.workers,
                      pin_memory=pin_memory, generator=generator, worker_init_fn=defer_stop_signals,
                      prefetch_factor=2 if plan.workers else None)


class ValBatches(IterableDataset):
    """One pass over this rank's val shards, the single recorded view, no shuffle."""

    def __init__(self, urls: tuple, batch_size: int, replay: Replay, counts: dict):
        self.urls, self.batch_size, self.replay, self.counts = urls, batch_size, replay, counts

    def __iter__(self):
        return _carry_errors(self._batches())

    def _batches(self):
        counter = CorruptCounter(self.replay.on_corrupt, self.counts)
        items = []
        for sample in _samples(self.urls, counter):
            try:
                items.append(parse_sample(sample, "real", self.replay, None))
            except Corrupt as e:
                counter.corrupt(str(e), sample.get("__url__", "?"))
            if len(items) == self.batch_size:
                yield collate(items, counter.take())
                items = []
        if items:
            yield collate(items, counter.take())
        elif counter.count:
            lost = counter.take()
            yield {"skipped": sum(lost.values()), "skipped_shards": lost}


def val_loader(releases: ReleaseSet, batch_size: int, workers: int, replay: Replay, rank: int = 0,
               world: int = 1, pin_memory: bool = False) -> DataLoader:
    """Val batches of this rank; workers are capped by its shard count (an eval pass is finite)."""
    shards = releases.shards("real", "val")
    urls = tuple(s.url for s in shards)
    workers = min(workers, len(urls[rank::world]))
    return DataLoader(ValBatches(urls, batch_size, replay, {s.url: s.count for s in shards}), batch_size=None,
                      num_workers=workers, worker_init_fn=defer_stop_signals,
                      pin_memory=pin_memory, prefetch_factor=2 if workers else None)


def _carry_errors(stream):
    """A data error inside a loader worker travels as a batch, and is raised by `batches`.

    Raised in the worker, it would come back wrapped in a traceback, and the DataLoader would take
    seconds to shut that worker down."""
    try:
        yield from stream
    except DataError as e:
        yield {"error": str(e), "corrupt": isinstance(e, Corrupt)}


def batches(loader: DataLoader):
    """The loader's batches; a data error from a worker is raised here, as its one-line message."""
    for batch in loader:
        if "error" in batch:
            raise (Corrupt if batch["corrupt"] else DataError)(batch["error"])
        yield batch


def model_inputs(batch: dict, device, img_size: int, mean, std, channels_last: bool = False) -> torch.Tensor:
    """The normalised image batch on the device (decoding the JPEGs there for GPU decode)."""
    if "jpeg" in batch:
        pixels = decode_on_device(batch, img_size, device)
    else:
        pixels = batch["pixels"].to(device, non_blocking=True)
    x = normalize(pixels, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def decode_on_device(batch: dict, img_size: int, device, streams: "DecodeStreams | None" = None) -> torch.Tensor:
    """nvjpeg decode of a batch, then each sample's view through `pipeline.contract.views.view_pixels` on the
    device.

    The decode runs with a side stream of its own made current, never the training stream: nvjpeg
    writes its outputs without waiting for the stream it is given (pytorch/vision#9606), and the
    caching allocator hands it blocks freed on the current stream, which the training step's
    queued kernels may still be reading; the side stream's blocks serve only decodes, each finished
    when decode_jpeg returns. The training stream then waits for the side stream, and every output
    is recorded on it, so its memory goes back to the side stream only after the step used it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    streams = streams or DecodeStreams.for_device(device)
    consumer = streams.current()
    try:
        with streams.use(streams.side):
            images = decode_jpeg(batch["jpeg"], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        for data, url, uid in zip(batch["jpeg"], batch["url"], batch["uid"]):
            try:
                decode_jpeg(data, mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise Corrupt(f"{url}: sample {uid}: JPEG decode failed: {e}") from None
        raise
    consumer.wait_stream(streams.side)
    for image in images:
        streams.record(image, consumer)
    return torch.stack([view_pixels(image, view, img_size) for image, view in zip(images, batch["view"])])


class DecodeStreams:
    """The CUDA streams of a GPU decode: the caller's current one and a side stream per device
    (made once: a stream per batch would leak the allocator's per-stream pools)."""

    _side: dict = {}

    def __init__(self, device, side):
        self.device, self.side = device, side

    @classmethod
    def for_device(cls, device) -> "DecodeStreams":
        if torch.device(device).type != "cuda":
            return _HostDecode()   # the same code path on a CPU (tests): nothing runs asynchronously there
        if device not in cls._side:
            cls._side[device] = torch.cuda.Stream(device)
        return cls(device, cls._side[device])

    def current(self):
        return torch.cuda.current_stream(self.device)

    def use(self, stream):
        return torch.cuda.stream(stream)

    @staticmethod
    def record(tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)


class _HostDecode:
    """DecodeStreams' shape on a CPU device: one synchronous stream, so nothing to wait for or record."""

    side = None

    def current(self):
        return self

    def wait_stream(self, stream) -> None:
        pass

    def use(self, stream):
        return contextlib.nullcontext()

    @staticmethod
    def record(tensor: torch.Tensor, stream) -> None:
        pass
