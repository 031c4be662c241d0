"""Nothing stale, ever: a shard records what made it (plan, teacher head and weights, generator), and
generate, release and verify compare that with what the job makes now.

The user's story (issue 22): a probe rerun with other settings in a finished job folder, then plan,
generate and release, kept every shard labelled by the old head under a manifest naming the new one."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.cli import main
from pipeline.config import load_job
from pipeline.contract import storage
from pipeline.contract.errors import UserError
from pipeline.contract.layout import HEAD_FILE, MANIFEST
from pipeline.contract.shards import IDENTITY_FIELDS, NO_IDENTITY, shard_url, stats_url
from pipeline.stages.distribute import generate_stage
from pipeline.stages.plan import plan_stage
from pipeline.stages.probe import probe_stage
from pipeline.stages.release import release_stage
from pipeline.tools.verify import verify_release


def copied(small_release, tmp_path):
    """The small release's finished job folder, copied (the fixture is shared)."""
    out = tmp_path / "job"
    shutil.copytree(small_release["root"], out)
    return out


def stats_of(out, name: str) -> dict:
    return json.loads((out / f"{name}.stats.json").read_text())


def test_a_new_probe_redoes_every_shard_its_head_labelled(small_release, tmp_path):
    out = copied(small_release, tmp_path)
    before = json.loads((out / MANIFEST).read_text())
    old = {s["name"]: s["sha256"] for s in before["shards"]}
    job = load_job(small_release["job_path"])
    job = load_job(small_release["job_path"], {"probe": {"epochs": job.probe.epochs + 1}})

    _, reused = probe_stage(job, out, device="cpu")
    assert not reused
    _, reused = plan_stage(job, out)
    assert reused                                    # the plan does not depend on the head
    s = generate_stage(job, out, progress=False)
    assert (s.done, s.skipped, s.redone) == (len(old), 0, len(old))   # every shard: the teacher labels them all
    assert s.stale_reasons == (("head sha256 differs", len(old)),)
    release_stage(job, out)

    manifest = json.loads((out / MANIFEST).read_text())
    head = storage.sha256(str(out / HEAD_FILE))
    assert manifest["teacher"]["head_sha256"] == head != before["teacher"]["head_sha256"]
    for shard in manifest["shards"]:
        assert stats_of(out, shard["name"])["head_sha256"] == head
        assert shard["sha256"] != old[shard["name"]], shard["name"]   # new logits in every tar
    assert verify_release(out) == []
    # and a rerun of generate finds nothing stale
    assert (generate_stage(job, out, progress=False).redone) == 0


def test_a_stale_shard_is_reported_refused_and_redone(small_release, tmp_path, capsys):
    out = copied(small_release, tmp_path)
    job = load_job(small_release["job_path"])
    edited, legacy = "real/train-000000", "real/val-000000"
    stats = stats_of(out, edited)
    (out / f"{edited}.stats.json").write_text(json.dumps(dict(stats, head_sha256="0" * 64)))

    # verify (quick mode too: the stats are small) names it as damage
    for quick in (False, True):
        assert verify_release(out, quick=quick) == [(edited, "stale: head sha256 differs")]
    assert main(["verify", str(out), "--quick"]) == 1
    assert f"STALE {edited}: head sha256 differs" in capsys.readouterr().out

    # release refuses it in one line naming the shard and the field, and writes no manifest over the good one
    manifest = (out / MANIFEST).read_bytes()
    with pytest.raises(UserError, match=rf"{edited}\.tar: stale shard \(head sha256 differs\)") as e:
        release_stage(job, out)
    assert "\n" not in str(e.value) and (out / MANIFEST).read_bytes() == manifest

    # a shard from before shards recorded their maker: unknown, so stale
    old = {k: v for k, v in stats_of(out, legacy).items() if k not in IDENTITY_FIELDS}
    storage.publish_bytes(stats_url(str(out), legacy), json.dumps(old).encode())

    # generate --keep-stale refuses, naming the first stale shard and what differs
    with pytest.raises(UserError, match=rf"{edited}\.tar: stale shard \(head sha256 differs; 2 stale"):
        generate_stage(job, out, progress=False, keep_stale=True)
    # generate redoes exactly those two: the same head makes the same bytes again
    tar = (out / f"{edited}.tar").read_bytes()
    s = generate_stage(job, out, progress=False)
    assert (s.done, s.redone) == (2, 2)
    assert dict(s.stale_reasons) == {"head sha256 differs": 1, NO_IDENTITY: 1}
    assert storage.read_bytes(shard_url(str(out), edited)) == tar
    assert stats_of(out, edited)["head_sha256"] == stats["head_sha256"]
    release_stage(job, out)
    assert verify_release(out) == []
