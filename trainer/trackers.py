"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases (`runtime.loggers`).

Each tracker gets the resolved config as parameters, every scalar the run logs with its step, the
final metrics, and the student and metrics.json as artefacts. Only rank 0 opens one. The tracker's
run id is kept in the run folder (`TRACKER_FILE`), so `--resume` continues the same tracker run; the
steps it already holds (logged before a kill) are not logged again, so each step is there once.

A tracker that cannot be reached is one line at start-up (a ConfigError, before any training); one
that fails mid-run is one warning, and the run goes on without it.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from pipeline.contract.errors import ConfigError, first_line
from pipeline.contract.logs import get_logger

from .runfiles import TRACKER as TRACKER_FILE

LOGGERS = ("tensorboard", "mlflow", "wandb")
log = get_logger(__name__)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """{'optim.lr': '0.003', …}: a nested config as one level of strings (what trackers store)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return out


def numeric(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Ids:
    """The run folder's tracker.json."""

    def __init__(self, out: Path):
        self.path = out / TRACKER_FILE

    def get(self, name: str) -> str | None:
        try:
            return json.loads(self.path.read_text()).get(name)
        except (OSError, ValueError):
            return None

    def set(self, name: str, run_id: str) -> None:
        from pipeline.contract.files import atomic_write

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        data[name] = run_id
        atomic_write(self.path, json.dumps(data, indent=1).encode())


class Tracker:
    """One tracker run. Subclasses implement _scalars, _final and _close; a failure after start-up
    turns the tracker off with one warning."""
    name = "?"

    def __init__(self):
        self.broken = False

    def _guard(self, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:   # a tracker going away mid-run must not end the training
            self.broken = True
            log.warning(f"{self.name} logging stopped: {first_line(e)}")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._guard(self._scalars, values, step)

    def final(self, metrics: dict[str, float], files: list[Path]) -> None:
        self._guard(self._final, metrics, files)

    def close(self) -> None:
        self._guard(self._close)


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, out: Path, config: dict, uri: str, experiment: str, tags: dict, start_step: int):
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("runtime.loggers: mlflow is not installed (pip install 'tsdistill[mlflow]')") from None
        self.client = MlflowClient(tracking_uri=uri or None)   # None: $MLFLOW_TRACKING_URI, else MLflow's default
        self.uri = self.client.tracking_uri
        ids = _Ids(out)
        run_id = ids.get(self.name) if start_step > 0 else None
        try:
            with _quick_requests():
                exp = self.client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
                if run_id is not None:
                    self.client.update_run(run_id, status="RUNNING")
                    self.done = self._logged_steps(run_id)
                else:
                    run = self.client.create_run(exp_id, tags={k: str(v) for k, v in tags.items()}, run_name=out.name)
                    run_id = run.info.run_id
                    self.done = {}
                    self._params(run_id, flat_params(config))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"runtime.loggers: the MLflow server at {self.uri} cannot be reached: {first_line(e)}") \
                from None
        self.run_id = run_id
        self.finished = False
        ids.set(self.name, run_id)

    def _logged_steps(self, run_id: str) -> dict[str, int]:
        """{metric: last step the tracker run holds} (a resumed run logs only later steps)."""
        run = self.client.get_run(run_id)
        return {key: max(m.step for m in self.client.get_metric_history(run_id, key)) for key in run.data.metrics}

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):   # MLflow takes at most 100 parameters per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items() if step > self.done.get(k, -1)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def _final(self, metrics: dict[str, float], files: list[Path]) -> None:
        self._scalars({f"final/{k}": v for k, v in metrics.items()}, 0)
        for path in files:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def _close(self) -> None:
        if not self.finished:   # stopped (SIGTERM, Ctrl-C, an error): --resume sets it running again
            self.client.set_terminated(self.run_id, "KILLED")


class _quick_requests:
    """MLflow's HTTP client retries for minutes by default: at start-up, an unreachable server is told
    in seconds."""
    ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.ENV}
        for k, v in self.ENV.items():
            os.environ.setdefault(k, v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, out: Path, config: dict, experiment: str, tags: dict, start_step: int):
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise ConfigError("runtime.loggers: wandb is not installed (pip install 'tsdistill[wandb]')") from None
        ids = _Ids(out)
        run_id = ids.get(self.name) if start_step > 0 else None
        try:
            self.run = wandb.init(project=experiment, id=run_id or secrets.token_hex(4), resume="allow",
                                  dir=str(out), name=out.name, config=config, group=tags.get("compare"),
                                  tags=[f"{k}:{v}" for k, v in sorted(tags.items())] or None,
                                  settings=wandb.Settings(init_timeout=60, console="off", silent=True))
        except Exception as e:
            raise ConfigError(f"runtime.loggers: W&B cannot be reached: {first_line(e)} "
                              f"(WANDB_MODE=offline logs to the run folder)") from None
        # a resumed run continues at the step W&B already holds: steps up to it are not logged again
        self.last = int(self.run.step or 0) - 1 if run_id else -1
        ids.set(self.name, self.run.id)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if step > self.last:
            self.run.log(values, step=step)

    def _final(self, metrics: dict[str, float], files: list[Path]) -> None:
        import wandb

        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})
        artifact = wandb.Artifact(f"student-{self.run.id}", type="model")
        for path in files:
            if path.exists():
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def _close(self) -> None:
        self.run.finish()


def open_trackers(loggers: list[str], out: Path, config: dict, uri: str, experiment: str, tags: dict,
                  start_step: int) -> list[Tracker]:
    """The trackers named in `runtime.loggers` besides TensorBoard (which RunLog writes itself)."""
    trackers = []
    for name in loggers:
        if name == "mlflow":
            trackers.append(MLflowTracker(out, config, uri, experiment, tags, start_step))
        elif name == "wandb":
            trackers.append(WandbTracker(out, config, experiment, tags, start_step))
    return trackers


def open_run_trackers(config, out: Path, start_step: int, main: bool) -> list[Tracker]:
    """The trackers of a training run's `runtime` settings; none off rank 0 (under DDP only it logs)."""
    if not main:
        return []
    from pipeline.contract.configlib import to_dict

    rt = config.runtime
    return open_trackers(rt.loggers, out, to_dict(config), rt.mlflow_uri, rt.experiment, rt.tags, start_step)
