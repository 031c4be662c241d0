"""Shared fixtures: one local Ray cluster per session, one small job and the release built from it by the
real pipeline,
and a real S3 API on loopback (`tests/support/s3_server.py`)."""
import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # a missing file must fail at once, not retry against a hub
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# downloaded weights go to a cache of this session, never the user's ~/.cache
_CACHE = tempfile.mkdtemp(prefix="tsd-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["TSD_CACHE"] = _CACHE

import pytest  # noqa: E402

pytest_plugins = ["s3_server"]   # tests/support/s3_server.py: moto_server, s3_bucket


@pytest.fixture(scope="session")
def ray_cluster(request):
    import ray

    try:  # the S3 server's environment first: Ray workers inherit the environment ray.init sees
        request.getfixturevalue("moto_server")
    except pytest.skip.Exception:
        pass
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_job(tmp_path_factory):
    """The 'small' demo job up to its job file: source images, tiny models, the ingest index, job.yaml.
    No model has run and no Ray is started: enough for the plan, config and storage tests, so a bug in
    generation fails the tests of generation, not theirs."""
    from pipeline.demo.runner import prepare_job

    out = tmp_path_factory.mktemp("small-release")
    return {"root": out, **prepare_job(out, "small")}


@pytest.fixture(scope="session")
def small_release(small_job, ray_cluster):
    """A real release made by ingest → probe → plan → generate (Ray) → release on the 'small' demo size
    (in small_job's folder: what it made is reused).

    Shared by many tests: treat it as read-only (copy it before changing anything)."""
    from pipeline.demo.runner import build_release

    return {"root": small_job["root"], **build_release(small_job["root"], "small")}
