"""`tsd compare CONFIG --out DIR`: the paper's rows from one config, at one budget, over N seeds.

The rows (after Marrie et al., TMLR 2024: the comparisons their claims rest on; the table is ours):
- finetune: the student trained on the labels only (CE), no teacher;
- KD on real images (loss mode kd-real);
- KD + the mixes of each generator the teacher's releases hold (mixup, cutmix, SD-Mixup, …);
and the teacher rows again for every other teacher listed (e.g. a finetuned one, against probing);
the mix rows again on fractions of their pool (`pool_fractions`: the pool's first shards, read with
`data.mix_pool`, no new generation); every row again for each further student (`students`).

The budget is equal by construction: every run makes the same number of optimizer steps
(`optim.steps`, or `optim.epochs` passes over the real set) with the same number of real images in
each batch, so every row sees the same real images; rows with mixes read `data.batch_size` samples
per step, `data.mix_ratio` of them mixes, and rows without read only the real part of that batch.
Each run states its budget in its metrics, and the compare refuses to tabulate runs whose budgets
differ. Outputs in DIR: runs/<row>/seed-<s>/ (an ordinary `tsd train` run folder each),
results.json (per-seed numbers), results.md (mean, std and a 95 % t interval over seeds per row, and
paired differences between rows, seed by seed: trainer/stats.py) and results.png (the same intervals).
A finished run is reused (`contract.files.reuse`); a run that was cut short resumes from its latest
checkpoint, so a killed compare, rerun, continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import yaml

from pipeline.contract.configlib import ConfigError, documented, load, parse_overrides, path_field, ranged, to_dict
from pipeline.contract.errors import Interrupted
from pipeline.contract.files import atomic_write, read_json, reuse, write_json
from pipeline.contract.ids import fingerprint
from pipeline.contract.logs import get_logger
from pipeline.contract.manifest import manifest_task
from pipeline.contract.tasks import headline

from .cost import ShardSeconds, row_hours
from .config import DataConfig, OptimConfig, RunSettings, StudentConfig, TrainConfig, check_releases
from .release import ReleaseSet
from .runfiles import METRICS
from .stats import CONFIDENCE, paired, summary

log = get_logger(__name__)

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"
RUNS = "runs"
# beside each run folder (which stays an ordinary `tsd train` folder): its inputs, once started and once done
STARTED, DONE = ".started.json", ".done.json"
# the paper's order: the classical augmentations, then the diffusion generators
# (sd-text, the text-prompted baseline SD-Mixup answers, just before them)
KIND_ORDER = ("mixup", "cutmix", "sd-text", "image-mixer", "sd-image-variations", "unclip")
KIND_LABELS = {"mixup": "KD + Mixup", "cutmix": "KD + CutMix", "sd-text": "KD + SD text prompts (class names)",
               "image-mixer": "KD + SD-Mixup (ImageMixer)", "sd-image-variations": "KD + SD image variations",
               "unclip": "KD + Stable unCLIP"}
BASE_ROWS = ("finetune", "kd")


@dataclass
class TeacherReleases:
    """The releases one teacher labelled: the first holds the real shards; the others add the mixes
    of other generators (e.g. `tsd generate` with generator.kinds writes them under generators/)."""
    name: str                                 # how the teacher is called in the table, e.g. probed, finetuned
    releases: list[str] = path_field()

    def check(self):
        if not self.releases:
            raise ConfigError("releases: at least one release is needed")


@dataclass
class StudentRecipe:
    """Another student of the compare: every row again with this student, at the same budget (the
    same steps and real images per step), under its own optimizer recipe."""
    name: str                                 # the rows' suffix (@name) and the table's student column
    student: StudentConfig = field(default_factory=StudentConfig)
    optim: Optional[OptimConfig] = None       # null = the compare's optim; optim.steps is always the compare's budget
    rows: Optional[list[str]] = None          # this student's rows (as the compare's `rows`); null = the compare's


@dataclass
class CompareConfig(RunSettings):
    """The rows' shared training settings (a training config without releases) and the teachers'
    releases. `loss.mode` and `data.generators` are set per row; `runtime.seed` is the first seed."""
    teachers: list[TeacherReleases] = documented(default_factory=list, doc=(
            "required: [{name, releases}], the first release of each holding its real shards"))
    rows: Optional[list[str]] = documented(None, doc="finetune, kd and generator kinds; null = all the releases allow")
    seeds: int = ranged(3, ge=1, doc="runs per row: seeds runtime.seed, runtime.seed + 1, …")
    students: list[StudentRecipe] = documented(default_factory=list, doc=(
            "more students beside `student`: [{name, student, optim, rows}]"))
    pool_fractions: list[float] = documented(default_factory=lambda: [1.0], doc=(
            "the mix rows again on the first shards of each pool holding these fractions of its mixes (no new "
            "generation: the plan draws the pairs independently, so a pool's first shards are a smaller pool)"))
    pool_kinds: Optional[list[str]] = documented(None, doc=(
            "the generator kinds whose rows get pool_fractions; null = all (others: 1.0)"))

    def check(self):
        if not self.teachers:
            raise ConfigError("teachers: at least one teacher's releases are needed")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"teachers: names must differ, got {names}")
        if self.rows is not None and len(set(self.rows)) != len(self.rows):
            raise ConfigError(f"rows: listed twice: {self.rows}")
        if not self.pool_fractions or len(set(self.pool_fractions)) != len(self.pool_fractions) or \
                any(not 0 < f <= 1 for f in self.pool_fractions):
            raise ConfigError(f"pool_fractions: distinct values in (0, 1] are needed, got {self.pool_fractions}")
        extra = [s.name for s in self.students]
        if len(set(extra)) != len(extra) or any(not n or "/" in n or n.startswith(".") for n in extra):
            raise ConfigError(f"students: names must differ and be usable as folder names, got {extra}")


@dataclass(frozen=True)
class Row:
    id: str                  # its folder under runs/
    label: str
    teacher: str | None      # None: the row uses no teacher (finetune)
    student: str | None      # the StudentRecipe's name; None: the compare's own `student`
    mode: str                # loss.mode
    generator: str | None    # the mixes it reads
    pool: float              # the fraction of the generator's pool it reads (data.mix_pool)
    config: TrainConfig      # seed 0's config; the seeds differ in runtime.seed only
    releases: ReleaseSet


@dataclass(frozen=True)
class Budget:
    steps: int
    real_per_step: int
    mix_per_step: int        # in the rows with mixes
    real_train: int          # real training images in the releases


def load_compare(path, overrides: dict | None = None) -> CompareConfig:
    return load(CompareConfig, path, overrides)


def row_plan(config: CompareConfig) -> tuple[list[Row], Budget]:
    """Every row, checked against its releases (manifests only), and the budget they share; a
    problem is one ConfigError line naming the key."""
    from .data import batch_split, steps_per_epoch

    base = TrainConfig(task=config.task, releases=list(config.teachers[0].releases[:1]), student=config.student,
                       loss=config.loss, data=replace(config.data, generators=None), optim=config.optim,
                       runtime=config.runtime)
    n_real, n_mix = batch_split(replace(base, loss=replace(config.loss, mode="distill")))
    teachers = [_teacher_releases(config, i) for i in range(len(config.teachers))]
    real_train = teachers[0].count("real", "train")
    budget = Budget(config.optim.total_steps(steps_per_epoch(real_train, n_real)), n_real, n_mix, real_train)
    for i, releases in enumerate(teachers[1:], 1):
        if releases.classes != teachers[0].classes or releases.count("real", "train") != real_train:
            raise ConfigError(f"teachers[{i}]: its releases hold other classes or another number of real training "
                              f"images than teachers[0]'s: the rows would not be comparable")
    recipes = [(None, config.student, config.optim, config.rows)] + \
        [(s.name, s.student, s.optim or config.optim, s.rows if s.rows is not None else config.rows)
         for s in config.students]
    available = set(BASE_ROWS).union(*(r.generator_kinds() for r in teachers))
    listed = [("rows", config.rows)] + [(f"students[{j}].rows", s.rows) for j, s in enumerate(config.students)] + \
        [("pool_kinds", config.pool_kinds)]
    for key, names in listed:
        for i, name in enumerate(names or ()):
            if name not in available:
                raise ConfigError(f"{key}[{i}]: {name!r} is not a row these releases allow (have: "
                                  f"{', '.join(sorted(available))})")

    several = len(config.teachers) > 1

    def make(row_id, label, teacher, mode, generator, roots, opened: ReleaseSet, pool: float = 1.0) -> Row:
        if pool != 1.0:
            row_id, label = f"{row_id}-{pool:g}x", f"{label}, {pool:g}× pool"
        row_id += (f".{teacher}" if several and teacher else "") + (f"@{student_name}" if student_name else "")
        if generator and not n_mix:
            raise ConfigError(f"data.mix_ratio: {config.data.mix_ratio} leaves no mixes in the batches of row {row_id}")
        # the rows with mixes read the whole batch; the others only its real part
        data = replace(config.data, generators=[generator], mix_pool=pool) if generator else \
            replace(config.data, batch_size=n_real, mix_ratio=0.0, generators=None, mix_pool=1.0)
        train = replace(base, releases=list(roots), student=student, loss=replace(config.loss, mode=mode), data=data,
                        optim=replace(optim, steps=budget.steps))
        try:
            checked = check_releases(train, opened)   # opened once per teacher, by _teacher_releases
        except ConfigError as e:
            raise ConfigError(f"row {row_id}: {e}") from None
        return Row(row_id, label, teacher, student_name, mode, generator, pool, train, checked)

    rows = []
    for student_name, student, optim, wanted in recipes:
        if wanted is None or "finetune" in wanted:
            first = config.teachers[0]
            rows.append(make("finetune", "finetune (CE on labels)", None, "finetune", None, first.releases[:1],
                             _first(teachers[0])))
        for spec, releases in zip(config.teachers, teachers):
            if wanted is None or "kd" in wanted:
                rows.append(make("kd", "KD on real images", spec.name, "kd-real", None, spec.releases[:1],
                                 _first(releases)))
            kinds = releases.generator_kinds()
            for kind in sorted(kinds, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k)):
                if wanted is not None and kind not in wanted:
                    continue
                pools = config.pool_fractions if config.pool_kinds is None or kind in config.pool_kinds else [1.0]
                for pool in sorted(pools):
                    rows.append(make(f"kd+{kind}", KIND_LABELS.get(kind, f"KD + {kind}"), spec.name,
                                     "distill", kind, spec.releases, releases, pool))
    if not rows:
        raise ConfigError("rows: no row to run")
    return rows, budget


def _first(releases: ReleaseSet) -> ReleaseSet:
    """The first release of a teacher's, already open: the one with its real shards."""
    return ReleaseSet(releases.releases[:1])


def _teacher_releases(config: CompareConfig, index: int) -> ReleaseSet:
    """One teacher's releases, opened and checked to be labelled by that one teacher."""
    spec = config.teachers[index]
    probe = TrainConfig(task=config.task, releases=list(spec.releases), data=DataConfig(mix_ratio=0.0))
    try:
        releases = check_releases(probe)
    except ConfigError as e:
        raise ConfigError(f"teachers[{index}].{e}") from None
    first = _teacher_identity(releases.releases[0].teacher)
    for j, release in enumerate(releases.releases[1:], 1):
        if _teacher_identity(release.teacher) != first:
            raise ConfigError(f"teachers[{index}].releases[{j}]: {release.root} was labelled by another teacher "
                              f"than {releases.releases[0].root} (teacher arch, weights or head differ)")
    return releases


def _teacher_identity(teacher: dict) -> tuple:
    return (teacher.get("arch"), json.dumps(teacher.get("weights"), sort_keys=True), teacher.get("head_sha256"))


def seeds(config: CompareConfig) -> list[int]:
    return [config.runtime.seed + i for i in range(config.seeds)]


# -- running ------------------------------------------------------------------------------------
def run_compare(config: CompareConfig, out: str | Path, log=print) -> dict:
    """Train every row × seed not yet done into `out`/runs, then write the results; returns them."""
    out = Path(out)
    rows, budget = row_plan(config)
    log(f"[compare] {len(rows)} rows × {config.seeds} seeds; each run: {budget.steps} steps, "
        f"{budget.real_per_step} real images per step (+ {budget.mix_per_step} mixes in the rows with mixes)")
    finished: dict[str, list[dict]] = {}
    key, label = headline(task_of(rows))
    for row in rows:
        finished[row.id] = []
        for seed in seeds(config):
            metrics, reused = run_one(row, seed, out)
            finished[row.id].append(metrics)
            log(f"[compare] {row.id} seed {seed}: val {label} {metrics['val'][key]:.4f}"
                f"{' (reused)' if reused else ''}")
    results = tabulate(config, rows, budget, finished, out)
    write_results(results, out)
    return results


def task_of(rows: list[Row]) -> str:
    """The compare's task: its releases' (the trainer refuses a release of another task than its config)."""
    return manifest_task(rows[0].releases.releases[0].manifest)


def metric_of(results: dict) -> tuple[str, str]:
    """(key, label) of the metric a results.json ranks by (top-1 in results written before segmentation)."""
    m = results.get("metric") or {"key": "top1", "label": "top-1"}
    return m["key"], m["label"]


def run_dir(out: Path, row: Row, seed: int) -> Path:
    return out / RUNS / row.id / f"seed-{seed}"


def run_one(row: Row, seed: int, out: Path) -> tuple[dict, bool]:
    """(metrics, reused): a finished run with this config is reused; one cut short is resumed from
    its latest checkpoint; a folder left by another config is started over."""
    from .checkpoints import checkpoint_dirs
    from .train import run_training

    config = replace(row.config, runtime=replace(row.config.runtime, seed=seed))
    folder = run_dir(out, row, seed)
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    # the releases' shard hashes too: a regenerated release (another teacher, other mixes) is another run
    inputs = fingerprint([text, [[s.get("sha256") for s in r.manifest.get("shards") or ()] for r in row.releases]])
    # the trackers group a compare's runs by these tags; they change no result, so they stay out of `inputs`
    tags = {**config.runtime.tags, "compare": out.name, "row": row.id, "seed": str(seed)}
    config = replace(config, runtime=replace(config.runtime, tags=tags))

    def train():
        started = folder.with_name(folder.name + STARTED)
        if folder.exists() and (read_json(started) or {}).get("fingerprint") != inputs:
            shutil.rmtree(folder)   # left by another config or other releases: not resumable
        resume = bool(checkpoint_dirs(folder))
        write_json(started, {"fingerprint": inputs})
        # cut short before its first checkpoint: nothing to resume, so its folder is started over
        metrics = run_training(config, folder, resume=resume, overwrite=not resume, releases=row.releases)
        return {"val": metrics["val"], "train": metrics["train"]}

    return reuse(folder.with_name(folder.name + DONE), inputs, train, outputs=[folder / METRICS])


# -- results ------------------------------------------------------------------------------------
def tabulate(config: CompareConfig, rows: list[Row], budget: Budget, finished: dict, out: Path) -> dict:
    """results.json's content: per row its seeds, budget, the task's headline metric per seed (val
    top-1 or mIoU: `val_<key>`), mean, std and interval, the pool it read and what its data cost; the
    paired differences between rows."""
    key, label = headline(task_of(rows))
    table = []
    seconds = ShardSeconds()
    for row in rows:
        runs = finished[row.id]
        spent = {(m["train"]["steps"], m["train"]["budget"]["real_images"]) for m in runs}
        expected = (budget.steps, budget.steps * budget.real_per_step)
        if spent != {expected}:
            raise RuntimeError(f"row {row.id}: runs spent {sorted(spent)} (steps, real images), the budget is "
                               f"{expected}: not comparable")
        values = [m["val"][key] for m in runs]
        stats = summary(values)
        teacher = row.releases.releases[0].teacher if row.teacher else {}
        table.append({
            "id": row.id, "label": row.label, "teacher": row.teacher, "mode": row.mode, "generator": row.generator,
            "student": row.config.student.arch, "student_name": row.student,
            f"teacher_val_{key}": teacher.get(f"val_{key}"),
            "teacher_adaptation": (teacher.get("adaptation") or {}).get("mode", "probe") if row.teacher else None,
            "releases": [r.root for r in row.releases],
            "seeds": seeds(config),
            "steps": budget.steps,
            "real_images": runs[0]["train"]["budget"]["real_images"],
            "mix_images": runs[0]["train"]["budget"]["mix_images"],
            "pool": row.pool if row.generator else None,
            "pool_mixes": sum(s.count for s in row.releases.mix_pool([row.generator], row.pool))
            if row.generator else 0,
            "data_cost": row_hours(seconds, row.releases, row.teacher is not None, row.generator, row.pool),
            f"val_{key}": values,
            "mean": stats["mean"],
            "std": stats["std"],
            "interval": stats["interval"],
            "agreement": [m["val"].get("agreement") for m in runs],
            "runs": [str(run_dir(out, row, s).relative_to(out)) for s in seeds(config)],
        })
    return {
        "metric": {"key": key, "label": label},
        "budget": {"steps": budget.steps, "real_per_step": budget.real_per_step,
                   "mix_per_step": budget.mix_per_step, "real_images": budget.steps * budget.real_per_step,
                   "real_train": budget.real_train,
                   "epochs_of_real": round(budget.steps * budget.real_per_step / budget.real_train, 3)},
        "std": "sample standard deviation over the seeds (n - 1)",
        "interval": f"two-sided {CONFIDENCE:.0%} Student-t interval of the mean over the seeds (null with one seed)",
        "confidence": CONFIDENCE,
        "differences": differences(table, key),
        "student": config.student.arch,
        "students": [config.student.arch] + [s.student.arch for s in config.students],
        "classes": rows[0].releases.num_classes,
        "rows": table,
        "config": to_dict(config),
    }


def comparisons(rows: list[dict]) -> list[tuple[str, str]]:
    """(row, against) pairs a reader asks about: every teacher row against the finetune row (did
    distillation help?), and every mix row against KD on real images from the same teacher (did
    the mixes help?)."""
    finetune_of = {r["student_name"]: r["id"] for r in rows if r["mode"] == "finetune"}
    kd_of = {(r["student_name"], r["teacher"]): r["id"] for r in rows if r["mode"] == "kd-real"}
    pairs = []
    for r in rows:   # always within one student: a student's seed s is paired with the same student's
        if r["teacher"] is not None and r["student_name"] in finetune_of:
            pairs.append((r["id"], finetune_of[r["student_name"]]))
        if r["generator"] and (r["student_name"], r["teacher"]) in kd_of:
            pairs.append((r["id"], kd_of[(r["student_name"], r["teacher"])]))
    return pairs


def differences(rows: list[dict], key: str = "top1") -> list[dict]:
    """Paired differences of the headline metric, seed by seed (the same seed shares the data order)."""
    by_id = {r["id"]: r for r in rows}
    return [{"row": a, "against": b, **paired(by_id[a][f"val_{key}"], by_id[b][f"val_{key}"])}
            for a, b in comparisons(rows)]


def _pool_cell(row: dict) -> str:
    return f"{row['pool_mixes']:,} ({row['pool']:g}×)" if row["generator"] else "—"


def _hours_cell(cost: dict) -> str:
    return "—" if cost["hours"] is None else f"{cost['hours']:.3g}"


def _pct_interval(interval) -> str:
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "—"


def row_label(results: dict, row: dict) -> str:
    """The row's label, with its student's architecture when the compare has several students."""
    return f"{row['label']} · {row['student']}" if len(results["students"]) > 1 else row["label"]


def markdown(results: dict) -> str:
    key, label = metric_of(results)
    b = results["budget"]
    lines = [
        f"# tsd compare: {' and '.join(results['students'])} students, {results['classes']} classes",
        "",
        f"Every run: {b['steps']:,} optimizer steps with {b['real_per_step']} real images each, so "
        f"{b['real_images']:,} real images seen ({b['epochs_of_real']:g} passes over the {b['real_train']:,} real "
        f"training images); the rows with mixes read {b['mix_per_step']} mixes per step on top. "
        f"Val {label} (%) is the mean ± {results['std']}; the interval is the {results['interval']}.",
        "",
        f"| row | teacher | val {label} (%) | {results['confidence']:.0%} interval | seeds | steps | real images "
        f"| mix images | mix pool | data hours |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        teacher = "—"
        if r["teacher"]:
            own = r.get(f"teacher_val_{key}")
            teacher = r["teacher"] + (f" ({100 * own:.1f})" if own is not None else "")
        lines.append(f"| {row_label(results, r)} | {teacher} | {100 * r['mean']:.1f} ± {100 * r['std']:.1f} "
                     f"| {_pct_interval(r['interval'])} | {len(r['seeds'])} "
                     f"| {r['steps']:,} | {r['real_images']:,} | {r['mix_images']:,} "
                     f"| {_pool_cell(r)} | {_hours_cell(r['data_cost'])} |")
    lines += ["", f"The teacher column gives the teacher's own val {label} (%) in brackets. Mix pool: the mixes the "
                  "row's runs drew from (the first shards of the generator's pool, the fraction in brackets). "
                  "Data hours: the device hours that made what the row reads (the teacher's labels of the real "
                  "images, plus its share of the mix pool's), from the seconds each shard's stats recorded; "
                  "— where a shard recorded none (`tsd plan JOB --dry-run` estimates them)."]
    if results["differences"]:
        lines += ["", f"Paired differences of val {label} (points), row minus the row it is set against, seed by seed "
                      f"(the same seed shares the data order); **bold**: the {results['confidence']:.0%} interval "
                      f"excludes zero.", "",
                  f"| row | against | per seed | mean | {results['confidence']:.0%} interval |",
                  "| --- | --- | --- | ---: | ---: |"]
        for d in results["differences"]:
            mark = "**" if d["excludes_zero"] else ""
            seeds_text = ", ".join(f"{100 * v:+.1f}" for v in d["differences"])
            lines.append(f"| {d['row']} | {d['against']} | {seeds_text} | {mark}{100 * d['mean']:+.1f}{mark} "
                         f"| {mark}{_pct_interval(d['interval'])}{mark} |")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> bool:
    """results.png (`results_figure`) at `path`; False when matplotlib is absent."""
    import io

    try:
        fig = results_figure(results)
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'tsdistill[viz]'): no results.png")
        return False
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())
    return True


def results_figure(results: dict):
    """Bars of the mean headline metric (val top-1, or mIoU for segmentation) with its t interval as
    error bars (dots: the seeds), a line per teacher at its own value (what the students chase), and
    beside them the paired differences with their intervals: a matplotlib Figure (ImportError without
    matplotlib)."""
    import textwrap

    from matplotlib.figure import Figure

    key, label = metric_of(results)
    rows, diffs = results["rows"], results["differences"]
    level = f"{results['confidence']:.0%}"
    # wrapped: side by side, long row names ("KD + SD-Mixup (ImageMixer)") ran into each other
    labels = [textwrap.fill(row_label(results, r), 16) + (f"\n[{r['teacher']} teacher]" if r["teacher"] else "") for r in rows]
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows)) + (4.0 if diffs else 0.0), 4.2), dpi=120)
    ax, dax = (fig.subplots(1, 2, width_ratios=[max(6.0, 1.3 * len(rows)), 4.0]) if diffs
               else (fig.add_subplot(), None))
    colours = ["#7f7f7f" if r["teacher"] is None else "#1f77b4" if r["generator"] is None else "#2ca02c"
               for r in rows]

    def half_widths(items):   # asymmetric error bars from the intervals (none with a single seed)
        return [[100 * (i["mean"] - i["interval"][0]) if i["interval"] else 0.0 for i in items],
                [100 * (i["interval"][1] - i["mean"]) if i["interval"] else 0.0 for i in items]]

    ax.bar(range(len(rows)), [100 * r["mean"] for r in rows], yerr=half_widths(rows), capsize=4, color=colours)
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r[f"val_{key}"]), [100 * v for v in r[f"val_{key}"]], s=10, color="black", zorder=3)
        ax.annotate(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}", (i, 0), xytext=(0, 4), textcoords="offset points",
                    ha="center", fontsize=7, color="white")
    teachers = {r["teacher"]: r[f"teacher_val_{key}"] for r in rows
                if r["teacher"] and r.get(f"teacher_val_{key}") is not None}
    for (name, value), style in zip(teachers.items(), ("--", ":", "-.", (0, (1, 3)))):   # what the students chase
        ax.axhline(100 * value, linestyle=style, linewidth=1, color="#d62728", label=f"{name} teacher ({100 * value:.1f})")
    if teachers:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(f"val {label} (%)")
    b = results["budget"]
    ax.set_title(f"{' and '.join(results['students'])}: {b['steps']} steps, {b['real_images']:,} real images per run; "
                 f"mean, {level} t interval over {len(rows[0]['seeds'])} seeds (dots: seeds)", fontsize=8)
    if dax is not None:
        ys = list(range(len(diffs)))[::-1]
        errors = half_widths(diffs)
        for y, d, low, high in zip(ys, diffs, *errors):
            dax.errorbar([100 * d["mean"]], [y], xerr=[[low], [high]], fmt="o", capsize=3, color="black",
                         ecolor="#d62728" if d["excludes_zero"] else "#7f7f7f")
        dax.axvline(0.0, color="#7f7f7f", linewidth=0.8, linestyle="--")
        dax.set_yticks(ys, [f"{d['row']}\n− {d['against']}" for d in diffs], fontsize=7)
        dax.set_xlabel(f"paired difference of val {label} (points)", fontsize=8)
        dax.set_title(f"same seed paired, {level} interval (red: excludes 0)", fontsize=8)
    fig.tight_layout()
    return fig


def write_results(results: dict, out: Path) -> None:
    write_json(out / RESULTS_JSON, results)
    atomic_write(out / RESULTS_MD, markdown(results).encode())
    chart(results, out / RESULTS_PNG)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="compare config (YAML), e.g. manifests/compare-demo.yaml")
    parser.add_argument("--out", required=True, help="output folder: runs/, results.json, results.md, results.png")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set seeds=3 (repeatable)")


def run(args: argparse.Namespace) -> int:
    config = load_compare(args.config, parse_overrides(args.set))
    try:
        results = run_compare(config, args.out)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}") from None
    except (Interrupted, KeyboardInterrupt) as e:  # finished runs are reused, the cut one resumes: the same command
        again = shlex.join(["tsd", "compare", args.config, "--out", args.out]
                           + [part for item in args.set for part in ("--set", item)])
        print(f"tsd compare: {e if isinstance(e, Interrupted) else 'interrupted'}; continue with: {again}",
              file=sys.stderr, flush=True)
        return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT
    print()
    print(markdown(results))
    print(f"→ {Path(args.out) / RESULTS_MD}, {RESULTS_JSON}, {RESULTS_PNG}")
    return 0
