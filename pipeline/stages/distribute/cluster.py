"""Joining a Ray cluster (token authentication checked first, one line when refused) or starting a
local one, and sizing the pool to what the cluster can place: never a wait for resources that
will not come."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from ...config import GenerateConfig, JobConfig
from ...contract import storage
from ...contract.errors import UserError, first_line


def token_file() -> str:
    """Where this process's Ray looks for the cluster token (after RAY_AUTH_TOKEN itself)."""
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def auth_hint(address: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE") or "unset"
    return (f"the Ray cluster at {address} refused this driver's authentication (RAY_AUTH_MODE is {mode}, "
            f"token file {token_file()}): set RAY_AUTH_MODE=token and give it the cluster's token in that file "
            "(or RAY_AUTH_TOKEN_PATH=<file> / RAY_AUTH_TOKEN=<token>), as on every node")


def is_auth_failure(exc: BaseException) -> bool:
    """True when `exc` (e.g. ray.init's ConnectionError) comes from token authentication; Ray keeps the
    AuthenticationError only as text in the chain's messages."""
    from ray.exceptions import AuthenticationError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc) \
                or "AuthenticationError" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _stderr_captured():
    """Ray's C++ client logs every failed try on file descriptor 2; keep them out of the user's way
    (the one-line error says what went wrong), and give them back when the connection works."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def check_cluster(address: str) -> None:
    """A quick look at the cluster's GCS before `ray.init`: a driver without the cluster's token
    would otherwise retry for 20 s and end in a traceback. One UserError line instead."""
    try:
        from ray._raylet import GcsClient  # what ray.init itself calls (private: skipped if it moves)
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        with _stderr_captured():
            GcsClient(address=address)
    except AuthenticationError:
        raise UserError(auth_hint(address)) from None
    except Exception as e:  # noqa: BLE001 - RpcError and friends: the cluster is not there
        raise UserError(f"cannot reach the Ray cluster at {address}: {first_line(e)}") from None


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join a cluster (address) or start a local one. Returns True when this call started Ray.

    Quiet: Ray's own INFO lines ("Started a local Ray instance") are off; workers' output still
    reaches the driver. A local cluster lives only as long as this job and runs only its actors,
    so it starts without token authentication (RAY_AUTH_MODE=disabled, unless the environment sets
    a mode), which also drops Ray's notice about that default on every run."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    if address:
        if not address.startswith("ray://") and address != "auto":
            check_cluster(address)
        try:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        except ConnectionError as e:
            if is_auth_failure(e):
                raise UserError(auth_hint(address)) from None
            raise UserError(f"cannot connect to the Ray cluster at {address}: {first_line(e)}") from None
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    return True


def check_reachable_paths(job: JobConfig) -> None:
    """The job's files are opened on every node: a path inside a Ray job's package folder (a
    per-node scratch copy) would name a file that only the driver's node has, there."""
    for key, value in (("data.index", job.data.index), ("teacher.weights", job.teacher.weights),
                       ("generator.path", job.generator.path if job.generator else None)):
        if value and storage.is_local(value) and storage.RAY_PACKAGE_DIR in str(value).replace(os.sep, "/"):
            raise UserError(f"{key}: {value} lies in Ray's per-node package folder (a relative path of a job "
                            "submitted with --working-dir); give an absolute path on a disk every node "
                            "mounts, or a URL")


def placeable(cpus_per_worker: float, gpu: bool) -> int:
    """Workers the cluster's live nodes can hold at once (each asks cpus_per_worker CPUs, and one GPU
    when there are GPUs): more would wait forever for resources."""
    import ray

    count = 0
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources", {})
            fit = int(res.get("CPU", 0) / cpus_per_worker + 1e-9)
            count += min(fit, int(res.get("GPU", 0))) if gpu else fit
    return count


def clamp_workers(gen: GenerateConfig, gpu: bool) -> tuple[int, int]:
    """(workers asked for, workers to start now): clamped to what the cluster can place, with a note;
    a one-line refusal when it can place none. Never a wait."""
    import ray

    resources = ray.cluster_resources()
    asked = gen.workers or max(int(resources.get("GPU", 0)), 1)
    fits = placeable(gen.cpus_per_worker, gpu)
    each = f"{gen.cpus_per_worker:g} CPU{'s' if gen.cpus_per_worker != 1 else ''}" + (" and 1 GPU" if gpu else "")
    if fits == 0:
        raise UserError(f"generate.cpus_per_worker: no node of the cluster can hold a worker of {each} "
                        f"(the cluster has {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
                        f"over {sum(1 for n in ray.nodes() if n.get('Alive'))} node(s))")
    if asked > fits:
        print(f"generate: note: {asked} workers asked (generate.workers), the cluster holds {fits} of {each}: "
              f"starting {fits}, more if nodes join", file=sys.stderr)
    return asked, min(asked, fits)


def describe(info: dict) -> str:
    return f"node {str(info.get('node_id'))[:12]}, host {info.get('host')}, pid {info.get('pid')}"
