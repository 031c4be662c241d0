"""A text-prompted pool (generator.kind sd-text) through plan → worker → shard, without Ray: each row
draws a class by the configured law and a template; the shard's samples record the prompted class and
the prompt; a plan written before the prompt column still reads."""
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.contract.generators import render_prompt
from pipeline.contract.samples import SampleMeta
from pipeline.contract.shards import read_shard
from pipeline.contract.layout import SHARD_SUFFIX
from pipeline.stages.draws import draw_classes, make_row
from pipeline.stages.jobdir import JobFolder
from pipeline.stages.plan import write_plan
from pipeline.stages.planfile import read_plan
from pipeline.stages.probe import run_probe
from pipeline.stages.worker import ShardWorker
from sd_text import TEMPLATES, sd_text_job


@pytest.fixture(scope="module")
def text_job(small_job, tmp_path_factory):
    return sd_text_job(small_job["job_path"], tmp_path_factory.mktemp("sd-text-model"))


@pytest.mark.parametrize("law", ["uniform", "frequency"])
def test_the_class_draw_follows_the_configured_law(text_job, law):
    job = replace(text_job, plan=replace(text_job.plan, class_law=law))
    train = [{"label": 0}] * 80 + [{"label": 2}] * 20    # class 1 has no train image
    drawn = draw_classes(job, train, 3, 6000, np.random.Generator(np.random.PCG64(0)))
    share = np.bincount(drawn, minlength=3) / len(drawn)
    expected = [1 / 3] * 3 if law == "uniform" else [0.8, 0.0, 0.2]
    assert np.allclose(share, expected, atol=0.025), share     # 6000 draws: std of a share <= 0.0065


def test_a_prompted_pool_goes_through_plan_and_worker_to_the_shard(text_job, tmp_path):
    plan = write_plan(text_job, tmp_path / "plan.parquet")
    mixes = [r for r in plan.iter_rows() if r.kind == "mix"]
    assert len(mixes) == 5 and {r.prompt for r in mixes} <= {0, 1}
    assert all(r.parents == [] and r.label == -1 and r.class_name in plan.classes for r in mixes)
    # regenerate's rebuild of a row (from the index's columns) is the planned row
    for r in mixes:
        assert make_row(text_job, r.uid, "train", "mix", label=-1, class_name=r.class_name, shard=r.shard) == r

    run_probe(text_job, tmp_path, device="cpu")
    worker = ShardWorker(text_job, tmp_path, device="cpu")
    stats = worker.run_shard(mixes[0].shard, mixes, JobFolder(text_job, str(tmp_path)).makers(plan.fingerprint))
    worker.close()
    assert stats["count"] == 5 and not stats["failures"]
    samples = dict(read_shard(str(tmp_path / f"{mixes[0].shard}{SHARD_SUFFIX}")))
    for r in mixes:
        meta = SampleMeta.from_json(samples[r.uid]["json"])
        assert (meta.label, meta.generator, meta.parents, meta.weight) == (-1, "sd-text", (), None)
        assert meta.prompt_class == r.class_name
        assert meta.prompt == render_prompt(TEMPLATES[r.prompt], r.class_name)
    # and a mix of another kind keeps its json as before: no prompt keys at all
    assert "prompt" not in json.loads(SampleMeta(uid="u", split="train", kind="mix", label=-1, seed=1, views=[],
                                                 width=8, height=8).to_json())


def test_a_plan_without_the_prompt_column_still_reads(text_job, tmp_path):
    write_plan(text_job, tmp_path / "plan.parquet")
    new = pq.ParquetFile(tmp_path / "plan.parquet")
    schema = new.schema_arrow.remove(new.schema_arrow.get_field_index("prompt"))
    with pq.ParquetWriter(tmp_path / "old.parquet", schema) as writer:   # row group i = shard i, as before
        for i in range(new.num_row_groups):
            writer.write_table(new.read_row_group(i).drop_columns(["prompt"]))
    rows = list(read_plan(tmp_path / "old.parquet").iter_rows())
    assert rows and all(r.prompt is None for r in rows)


def test_the_dry_run_counts_no_parent_embeddings_for_a_prompted_pool(text_job):
    from pipeline.stages.estimate import CLIP_L14_IMG_S, mix_seconds

    text, notes = mix_seconds(text_job)
    mixer, _ = mix_seconds(replace(text_job, generator=replace(text_job.generator, kind="image-mixer")))
    assert text["stock"] + 2 / CLIP_L14_IMG_S == pytest.approx(mixer["stock"], rel=1e-12)
    assert not any("ViT-L/14 embeddings" in n for n in notes)


def test_sd_text_as_a_family_member_beside_image_mixer(small_job, text_job, tmp_path):
    """generator.kinds [image-mixer, mixup, sd-text] with sd-text's own folder (prompted_path): the
    pair kinds share the planned pairs, the sd-text member plans a prompted pool of the same size."""
    from pipeline.config import load_job
    from pipeline.contract.configlib import ConfigError
    from pipeline.stages.jobdir import GENERATORS_DIR, members, plan_path
    from pipeline.stages.plan import plan_stage

    kinds = {"kinds": ["image-mixer", "mixup", "sd-text"], "prompts": TEMPLATES}
    with pytest.raises(ConfigError, match="at most one diffusion generator on generator.path"):
        load_job(small_job["job_path"], {"generator": kinds})
    job = load_job(small_job["job_path"], {"generator": {**kinds, "prompted_path": text_job.generator.path}})
    plan, _ = plan_stage(job, tmp_path)
    main = [r for r in plan.iter_rows() if r.kind == "mix"]
    mixup = list(read_plan(plan_path(tmp_path / GENERATORS_DIR / "mixup")).iter_rows())
    text = list(read_plan(plan_path(tmp_path / GENERATORS_DIR / "sd-text")).iter_rows())
    assert [r.parents for r in mixup] == [r.parents for r in main] and all(r.prompt is None for r in main)
    assert len(text) == len(main) and all(r.parents == [] and r.prompt in (0, 1) for r in text)
    member = {m.kind: m for m in members(job, tmp_path)}["sd-text"]
    assert member.job.generator.path == text_job.generator.path and member.job.generator.prompted_path is None
