"""The release contract: ids, seeds, views, teacher encodings, deterministic tars, safe reading."""
import io
import tarfile

import numpy as np
import pytest
import torch

from pipeline.contract.ids import derive_seed, is_uid, make_uid, sha256_bytes
from pipeline.contract.samples import SampleMeta, dense_logits, encode_teacher, npy_load
from pipeline.contract.shards import NO_IDENTITY, publish_shard, read_shard, read_stats, shard_identity, \
    stale_reason, tar_bytes
from pipeline.contract.views import Views, center_view, sample_views, view_box, view_pixels


def test_uids_are_stable_hex_without_dots():
    uid = make_uid("real", "ab" * 32, "cls/img.01.jpg")
    assert is_uid(uid) and "." not in uid
    assert uid == make_uid("real", "ab" * 32, "cls/img.01.jpg") != make_uid("real", "ab" * 32, "x.jpg")


def test_seeds_depend_on_global_seed_and_uid_only():
    assert derive_seed(0, "a" * 32) == derive_seed(0, "a" * 32)
    assert len({derive_seed(s, u) for s in (0, 1) for u in ("a" * 32, "b" * 32)}) == 4


def test_views_are_deterministic_and_inside_the_image():
    spec = Views(scale=(0.08, 1.0))
    a = sample_views(7, 500, 375, 16, spec)
    assert a == sample_views(7, 500, 375, 16, spec) != sample_views(8, 500, 375, 16, spec)
    for v in a + center_view(500, 375, spec):
        x0, y0, x1, y1 = view_box(v, 500, 375)
        assert 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 375


def test_view_pixels_crop_and_flip():
    image = torch.arange(3 * 8 * 16).reshape(3, 8, 16).remainder(251).to(torch.uint8)
    left_half = [0.0, 0.0, 0.5, 1.0, 0]
    out = view_pixels(image, left_half, 8)
    assert torch.allclose(out * 255, image[:, :, :8].float(), atol=1e-3)
    flipped = view_pixels(image, left_half[:4] + [1], 8)
    assert torch.equal(flipped, torch.flip(out, dims=[2]))


def test_topk_logits_keep_the_top_and_the_rest_mass():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 3
    members, rest = encode_teacher(logits, topk=5)
    meta = SampleMeta("a" * 32, "train", "real", 1, 0, [[0, 0, 1, 1, 0]] * 3, 8, 8, topk_rest=rest)
    dense = dense_logits(members, meta, 50)
    p, q = (np.exp(z - z.max(1, keepdims=True)) for z in (logits, dense))
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    top = np.argsort(-logits, 1)[:, :5]
    assert np.allclose(np.take_along_axis(p, top, 1), np.take_along_axis(q, top, 1), atol=2e-3)
    assert np.allclose(q.sum(1), 1) and (dense.argmax(1) == logits.argmax(1)).all()


def test_full_logits_round_trip_as_float16():
    logits = np.linspace(-3, 3, 20, dtype=np.float32).reshape(2, 10)
    members, rest = encode_teacher(logits, topk=None)
    meta = SampleMeta("a" * 32, "train", "real", 1, 0, [[0, 0, 1, 1, 0]] * 2, 8, 8)
    assert rest is None and np.allclose(dense_logits(members, meta, 10), logits, atol=1e-2)
    with pytest.raises(ValueError, match="expected \\[K, 12\\]"):
        dense_logits(members, meta, 12)


def test_npy_members_refuse_pickled_objects():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="bad npy member"):
        npy_load(buf.getvalue(), "shard.tar")


def test_tars_are_byte_identical_and_read_back(tmp_path):
    samples = [(make_uid(i), {"json": b"{}", "jpg": bytes([i]) * 10, "logits.npy": b"x"}) for i in range(3)]
    data = tar_bytes(samples)
    assert data == tar_bytes(samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o644)}
    assert infos[0].name.endswith(".jpg")  # image first within a sample
    back = list(read_shard(io.BytesIO(data)))
    assert [k for k, _ in back] == [k for k, _ in samples] and back[0][1]["jpg"] == samples[0][1]["jpg"]
    with pytest.raises(ValueError, match="must not contain"):
        tar_bytes([("a.b", {"json": b"{}"})])


def test_reading_refuses_paths_and_links(tmp_path):
    for name, kind in (("../evil.json", tarfile.REGTYPE), ("abc.json", tarfile.SYMTYPE)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(ValueError):
            list(read_shard(io.BytesIO(buf.getvalue()), "bad.tar"))


def test_publish_then_stats_mark_the_shard_done(tmp_path):
    data = tar_bytes([(make_uid(1), {"json": b"{}"})])
    made_by = shard_identity("real/train-000000", "p1", "h" * 64, None, {"unet.safetensors": "f" * 64})
    assert made_by["generator_weights"] is None   # a real shard owes nothing to the generator
    publish_shard(tmp_path, "real/train-000000", data, {"count": 1, **made_by})
    assert read_stats(tmp_path, "real/train-000000", made_by)["sha256"] == sha256_bytes(data)
    for other in (dict(made_by, plan="p2"), dict(made_by, head_sha256="0" * 64), dict(made_by, teacher_weights="w")):
        assert read_stats(tmp_path, "real/train-000000", other) is None  # made by another plan, head, teacher
    (tmp_path / "real/train-000000.tar").write_bytes(data[:-512])
    assert read_stats(tmp_path, "real/train-000000") is None        # truncated tar: not done


def _views_one_call_at_a_time(seed, width, height, k, views):
    """The straightforward definition `sample_views_many` must equal: numpy draws one at a time."""
    import math

    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for _ in range(k):
        box = None
        for _attempt in range(10):
            target = width * height * rng.uniform(views.scale[0], views.scale[1])
            aspect = math.exp(rng.uniform(math.log(views.ratio[0]), math.log(views.ratio[1])))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
                break
        if box is None:
            side = min(width, height)
            box = ((width - side) // 2, (height - side) // 2, side, side)
        flip = int(views.flip and rng.random() < 0.5)
        x, y, w, h = box
        out.append([round(x / width, 6), round(y / height, 6), round(w / width, 6), round(h / height, 6), flip])
    return out


def test_vectorised_views_equal_drawing_them_one_call_at_a_time():
    import random

    from pipeline.contract.views import pcg64_raw, sample_views_many

    rnd = random.Random(0)
    specs = [Views(), Views(k=3, scale=(0.35, 1.0)), Views(k=4, scale=(0.01, 0.02), ratio=(0.1, 10.0), flip=False),
             Views(k=2, scale=(1.0, 1.0)), Views(k=2, scale=(0.9, 1.0), ratio=(3.0, 4.0))]  # the last: many misses
    for spec in specs:
        seeds = [rnd.getrandbits(rnd.choice([5, 32, 33, 63])) for _ in range(150)]
        widths = [rnd.choice([1, 2, 3, 40, 64, 255, 1000]) for _ in seeds]
        heights = [rnd.choice([1, 4, 48, 64, 375, 999]) for _ in seeds]
        # a short stream forces the path that redraws images whose rejections ran past it
        for n_raw in (None, 6):
            got = sample_views_many(seeds, widths, heights, spec.k, spec, n_raw=n_raw)
            for i, (s, w, h) in enumerate(zip(seeds, widths, heights)):
                assert [[*v[:4], int(v[4])] for v in got[i].tolist()] == _views_one_call_at_a_time(s, w, h, spec.k, spec)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1] + [rnd.getrandbits(63) for _ in range(200)]
    assert (pcg64_raw(seeds, 20) == np.stack([np.random.PCG64(s).random_raw(20) for s in seeds])).all()


def test_a_shard_identity_names_what_differs():
    made_by = shard_identity("mix/mix-000000", "p1", "h" * 64, "w" * 64, {"unet.safetensors": "f" * 64})
    assert stale_reason(made_by, made_by) is None
    assert stale_reason(made_by, dict(made_by, head_sha256="0" * 64)) == "head sha256 differs"
    other_unet = shard_identity("mix/mix-000000", "p1", "h" * 64, "w" * 64, {"unet.safetensors": "0" * 64})
    assert stale_reason(made_by, other_unet) == "generator weights differ"
    assert stale_reason({"plan": "p1"}, made_by) == NO_IDENTITY   # made before shards recorded their maker
