"""The configuration a run trains with: the YAML and its `--set`s when it starts, its own saved
`RUN/config.yaml` when it resumes.

A run writes its resolved configuration (every `--set` applied, paths made absolute) to
RUN/config.yaml when it starts. `--resume` trains with that file, so the command that continues a
run needs neither the YAML nor the `--set`s it was started with: `tsd train --out RUN --resume`
(the hint printed when a run stops). A `--set` given with `--resume` may change how the run
executes (`RESUMABLE`: device, checkpoint and logging cadence, validation cadence, checkpoints kept); one that would
change what the run computes is refused in one line naming the key, the run's value and the new one.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from pipeline.contract.configlib import ConfigError, load, to_dict
from pipeline.contract.errors import UserError

from .config import TrainConfig
from .runfiles import CONFIG as SAVED   # the run's own resolved config, what --resume trains with

# keys a resume may change: where and how often things happen, never what a step computes
RESUMABLE = ("runtime.device", "runtime.checkpoint_minutes", "runtime.checkpoint_epochs", "runtime.checkpoint_every",
             "runtime.log_every", "runtime.eval_every", "runtime.keep_checkpoints")


def flatten(data: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} → {'a.b': 1}: a config's dotted keys and their values."""
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def saved_config(out: Path, overrides: dict | None = None) -> TrainConfig:
    """The run's own config (RUN/config.yaml) with `overrides` applied, when each only changes a
    `RESUMABLE` key; a ConfigError naming the key and both values otherwise."""
    path = Path(out) / SAVED
    if not path.is_file():
        raise UserError(f"{out}: no {SAVED}, so no run to resume here (start one without --resume)")
    saved = load(TrainConfig, path)
    if not overrides:
        return saved
    config = load(TrainConfig, path, overrides)
    before, after = flatten(to_dict(saved)), flatten(to_dict(config))
    for key in sorted(after):
        if after[key] != before.get(key) and key not in RESUMABLE:
            raise ConfigError(f"--set {key}={_show(after[key])}: the run in {out} was started with {key}="
                              f"{_show(before.get(key))}; a resume continues the same run (only "
                              f"{', '.join(k.split('.')[-1] for k in RESUMABLE)} may change): drop this --set, "
                              "or start a new run folder")
    return config


def differences(config: TrainConfig, saved: TrainConfig) -> list[str]:
    """'key (given X, run Y)' for each key where `config` differs from the run's saved config."""
    given, run = flatten(to_dict(config)), flatten(to_dict(saved))
    return [f"{k} (given {_show(given[k])}, run {_show(run.get(k))})" for k in sorted(given)
            if given[k] != run.get(k) and k not in RESUMABLE]


def note_ignored(config_path: str, config: TrainConfig, saved: TrainConfig) -> None:
    """With --resume, a CONFIG given as well is not what trains: say so when it differs."""
    diff = differences(config, saved)
    if diff:
        print(f"note: --resume trains with the run's own {SAVED} (its --sets included), not {config_path}, "
              f"which differs in {'; '.join(diff)}", file=sys.stderr)


def resume_command(out) -> str:
    """The command that continues the run in `out` (its config and --sets are in RUN/config.yaml)."""
    return f"tsd train --out {shlex.quote(str(out))} --resume"


def _show(value) -> str:
    return "null" if value is None else str(value)
