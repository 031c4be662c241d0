"""`tsd regenerate` and `tsd subset` on a real release made by the pipeline (the small demo size)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.contract.errors import UserError
from pipeline.contract.ids import sha256_file
from pipeline.contract.layout import CARD, HEAD_FILE, INDEX, MANIFEST, SHARD_SUFFIX
from pipeline.contract.samples import M_LOGITS, npy_bytes, npy_load
from pipeline.contract.shards import read_shard, tar_bytes
from pipeline.tools.regenerate import regenerate
from pipeline.tools.subset import make_subset, read_uid_file
from pipeline.tools.verify import verify_release


def index_rows(root) -> list[dict]:
    return pq.read_table(Path(root) / INDEX).to_pylist()


def first(rows, **match) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def copy_release(root: Path, dst: Path) -> Path:
    """The release files only: its manifest's config still points at the fixture's work/ folder."""
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("work"))
    return dst


def rewrite_sample(root: Path, shard: str, uid: str, change) -> None:
    """Replace one sample's members in its shard by `change(members)` (a damaged release)."""
    path = root / f"{shard}{SHARD_SUFFIX}"
    with open(path, "rb") as f:
        samples = [(key, change(dict(members)) if key == uid else members) for key, members in read_shard(f)]
    path.write_bytes(tar_bytes(samples))


# -- regenerate ---------------------------------------------------------------------------------
def test_regenerated_real_and_mix_samples_are_byte_identical_on_cpu(small_release):
    rows = index_rows(small_release["root"])
    real, mix = first(rows, kind="real", split="train"), first(rows, kind="mix")
    results = regenerate(small_release["root"], [real["uid"], mix["uid"]], device="cpu")
    assert [(r.uid, r.kind, r.status) for r in results] == [(real["uid"], "real", "identical"),
                                                             (mix["uid"], "mix", "identical")]
    assert set(results[1].identical) == {"jpg", "json", M_LOGITS}


def test_a_changed_logit_is_reported(small_release, tmp_path, capsys):
    root = copy_release(small_release["root"], tmp_path / "release")
    rows = index_rows(root)
    val = first(rows, kind="real", split="val")

    def bump_logit(members):
        logits = npy_load(members[M_LOGITS]).copy()
        logits[0, 0] += np.float16(0.5)
        members[M_LOGITS] = npy_bytes(logits)
        return members

    rewrite_sample(root, val["shard"], val["uid"], bump_logit)
    args = ["regenerate", str(root), "--uid", val["uid"], "--device", "cpu"]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert f"{val['uid']}  real  {val['shard']}: differs: logits max diff 0.5" in out
    assert "1 differs" in out
    # within a tolerance, the same difference passes
    assert cli.main([*args, "--logit-tol", "0.6"]) == 0
    assert "within tolerance" in capsys.readouterr().out


def test_regenerate_unknown_uid_is_a_clear_error(small_release):
    with pytest.raises(UserError, match="no sample 0{32}"):
        regenerate(small_release["root"], ["0" * 32], device="cpu")


def test_regenerate_refuses_a_changed_teacher_head(small_release, tmp_path):
    root = copy_release(small_release["root"], tmp_path / "release")
    head = root / HEAD_FILE
    head.write_bytes(head.read_bytes() + b"\0")
    uid = first(index_rows(root), kind="real")["uid"]
    with pytest.raises(UserError, match="teacher head differs"):
        regenerate(root, [uid], device="cpu")


# -- subset -------------------------------------------------------------------------------------
def pick_subset(rows: list[dict]) -> list[str]:
    """Part of one train shard, all of another, a few mixes, and every val sample."""
    by_shard: dict[str, list[str]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r["uid"])
    return (by_shard["real/train-000000"][:5] + by_shard["real/train-000001"]
            + by_shard["mix/mix-000002"][:3] + by_shard["real/val-000000"])


def test_subset_is_a_valid_release_that_keeps_the_bytes(small_release, tmp_path, capsys):
    root = Path(small_release["root"])
    rows = index_rows(root)
    uids = pick_subset(rows)
    uid_file = tmp_path / "uids.txt"
    uid_file.write_text("# picked by the test\n" + "\n".join(uids) + "\n\n" + uids[0] + "\n")
    out = tmp_path / "subset"
    assert cli.main(["subset", str(root), "--uids", str(uid_file), "--out", str(out)]) == 0
    assert "subset:" in capsys.readouterr().out

    assert verify_release(out) == []
    manifest = json.loads((out / MANIFEST).read_text())
    parent = json.loads((root / MANIFEST).read_text())
    assert manifest["counts"] == {"real/train": 5 + 32, "real/val": parent["counts"]["real/val"], "mix/train": 3}
    kept_shards = {"real/train-000000", "real/train-000001", "real/val-000000", "mix/mix-000002"}
    assert [s["name"] for s in manifest["shards"]] == [s["name"] for s in parent["shards"] if s["name"] in kept_shards]
    assert manifest["subset_of"] == {"name": parent["name"], "manifest_sha256": sha256_file(root / MANIFEST),
                                     "samples": len(uids), "of": sum(parent["counts"].values())}
    assert manifest["name"] == f"{parent['name']}-subset" and manifest["classes"] == parent["classes"]
    # a whole shard is copied as is; a partial one holds its kept samples' members byte for byte
    for name in ("real/train-000001", "real/val-000000"):
        assert (out / f"{name}.tar").read_bytes() == (root / f"{name}.tar").read_bytes()
    with open(root / "real/train-000000.tar", "rb") as f:
        originals = dict(read_shard(f))
    with open(out / "real/train-000000.tar", "rb") as f:
        kept = list(read_shard(f))
    assert [k for k, _ in kept] == uids[:5]
    assert all(members == originals[key] for key, members in kept)
    # what the trainer reads: manifest, index, teacher head, the listed shards
    assert sorted(r["uid"] for r in index_rows(out)) == sorted(uids)
    assert (out / HEAD_FILE).read_bytes() == (root / HEAD_FILE).read_bytes()
    assert (out / CARD).read_text().count("## Subset") == 1
    from trainer.release import open_releases

    releases = open_releases([str(out)])
    assert (releases.count("real", "train"), releases.count("mix", "train")) == (37, 3)


def test_subset_unknown_uids_are_named(small_release, tmp_path):
    uid_file = tmp_path / "uids.txt"
    known = index_rows(small_release["root"])[0]["uid"]
    uid_file.write_text("\n".join([known, "a" * 32, "b" * 32, "c" * 32, "d" * 32]))
    with pytest.raises(UserError, match=r"4 uid\(s\) not in .*index.parquet: a{32}, b{32}, c{32} \(and 1 more\)"):
        make_subset(small_release["root"], read_uid_file(uid_file), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subset_uid_file_errors_name_the_line(tmp_path):
    uid_file = tmp_path / "uids.txt"
    uid_file.write_text("a" * 32 + "\nnot-a-uid\n")
    with pytest.raises(UserError, match=r"uids.txt:2: not a uid .*'not-a-uid'"):
        read_uid_file(uid_file)
    with pytest.raises(UserError, match="uid file not found"):
        read_uid_file(tmp_path / "missing.txt")


def test_subset_refuses_a_non_empty_output(small_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    uid = index_rows(small_release["root"])[0]["uid"]
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        make_subset(small_release["root"], [uid], out)
