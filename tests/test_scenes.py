"""The segmenter's synthetic scenes: reproducible, exact masks, every kind renders, the corpus round-trips on disk."""

import json

import numpy as np
import pytest

from maemi.measure.scenes import (CLASSES, KIND_SHARES, KINDS, batch_kinds, read_mask, render_scene, scene_batch,
                                  write_scenes)

SHAPE = (96, 128)  # small and not square: catches swapped axes


def _check_exact(scene):
    inst, n = scene.instances, len(scene.classes)
    assert scene.image.shape == inst.shape
    assert scene.image.dtype == np.float32 and inst.dtype == np.int32
    assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0
    assert inst.min() >= 0 and inst.max() == n  # ids 1..n, background 0
    counts = np.bincount(inst.ravel(), minlength=n + 1)
    assert (counts[1:] > 0).all()  # every id has pixels: no gaps
    assert set(scene.classes) <= set(CLASSES)


def test_same_seed_same_bytes():
    for kind in (None, *KINDS):
        a, b = render_scene(7, kind, SHAPE), render_scene(7, kind, SHAPE)
        assert a.image.tobytes() == b.image.tobytes() and a.instances.tobytes() == b.instances.tobytes()
        assert a.classes == b.classes and a.kind == b.kind
    assert render_scene(7, "stem_particles").image.tobytes() != render_scene(8, "stem_particles").image.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_renders_exact_masks(kind):
    scenes = [render_scene(seed, kind, SHAPE) for seed in range(6)]
    for scene in scenes:
        assert scene.kind == kind
        _check_exact(scene)
    counts = [len(s.classes) for s in scenes]
    if kind == "empty":
        assert counts == [0] * 6
    else:
        assert sum(counts) > 0
    expected = {"stem_particles": {"particle"}, "sem_clusters": {"particle"}, "fibres": {"fibre"},
                "nanowires": {"nanowire", "parasitic"}, "empty": set()}[kind]
    assert set().union(*(s.classes for s in scenes)) <= expected


def _touching_pairs(inst):
    a, b = inst[:, :-1], inst[:, 1:]
    c, d = inst[:-1], inst[1:]
    return int(((a > 0) & (b > 0) & (a != b)).sum() + ((c > 0) & (d > 0) & (c != d)).sum())


def test_clusters_have_touching_instances():
    assert any(_touching_pairs(render_scene(seed, "sem_clusters").instances) > 0 for seed in range(3))


def test_batch_mix_is_fixed_and_reproducible():
    kinds = batch_kinds(3, 50)
    assert kinds == batch_kinds(3, 50)
    for kind, share in zip(KINDS, KIND_SHARES):
        assert abs(kinds.count(kind) - share * 50) <= 1
    a, b = scene_batch(3, 4, SHAPE), scene_batch(3, 4, SHAPE)
    assert [s.instances.tobytes() for s in a] == [s.instances.tobytes() for s in b]


def test_write_scenes_round_trips(tmp_path):
    records = write_scenes(tmp_path, 5, seed=11, shape=SHAPE)
    lines = [json.loads(line) for line in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    assert lines == records and [r["name"] for r in lines] == [f"scene_{i:05d}" for i in range(5)]
    for rec, scene in zip(lines, scene_batch(11, 5, SHAPE)):
        assert np.array_equal(read_mask(tmp_path / rec["mask"]), scene.instances)
        assert rec["classes"] == scene.classes and rec["kind"] == scene.kind
        from PIL import Image

        with Image.open(tmp_path / rec["image"]) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), (scene.image * 255).round().astype(np.uint8))
    assert not list(tmp_path.glob(".*.tmp"))


def test_mask_png_keeps_16_bit_ids(tmp_path):
    from maemi.measure.scenes import _png

    ids = np.arange(96 * 128, dtype=np.int32).reshape(SHAPE) * 5  # up to 61435: beyond 8 bits
    (tmp_path / "m.mask.png").write_bytes(_png(ids.astype(np.uint16)))
    assert np.array_equal(read_mask(tmp_path / "m.mask.png"), ids)
