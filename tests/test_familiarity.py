"""The familiarity score per block of image statistics (evaluate.familiarity): an image foreign in one block is
flagged even where the cosine of the whole vector let it through; the one-block score is the old one; save and load
give the same scores; a calibration written before the blocks keeps its score and says to re-run `maemi calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maemi.evaluate.familiarity import FILE, STATISTICS_BLOCKS, Familiarity, knn_distance

NEU = Path(__file__).resolve().parents[2] / "shared" / "data" / "neu-det"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def statistics_like(n: int, rng: np.random.Generator, centres: list[np.ndarray], texture_shift: float = 0.0):
    """n vectors shaped like image_statistics around `centres`: three unit blocks (grey histogram, orientations,
    texture; the histograms vary most, the texture least), the whole vector unit; `texture_shift` moves the texture."""
    histogram, orientations, texture = centres
    shift = np.zeros_like(texture)
    shift[:4] = texture_shift
    blocks = [unit(histogram + 0.3 * rng.random((n, len(histogram)))),
              unit(orientations + 0.05 * rng.random((n, len(orientations)))),
              unit(texture + 0.02 * rng.random((n, len(texture))) + shift)]
    return unit(np.concatenate(blocks, axis=1)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_image_foreign_in_one_block_is_flagged_where_the_whole_vector_cosine_let_it_through(seed):
    rng = np.random.default_rng(seed)
    centres = [rng.random(width) for width in STATISTICS_BLOCKS]
    train, new = statistics_like(200, rng, centres), statistics_like(100, rng, centres)
    foreign = statistics_like(20, rng, centres, texture_shift=0.04)  # familiar grey levels and edges, new texture

    per_block, concatenated = Familiarity.fit(train), Familiarity.fit(train, blocks=(train.shape[1],))
    assert per_block.blocks == STATISTICS_BLOCKS and concatenated.blocks == (sum(STATISTICS_BLOCKS),)
    assert (per_block.score(foreign) > per_block.threshold).all()
    assert (concatenated.score(foreign) > concatenated.threshold).mean() <= 0.25  # the old score misses most
    assert (per_block.score(new) <= per_block.threshold).mean() >= 0.9  # new draws of the training kind pass


def test_one_block_is_the_cosine_knn_of_the_whole_vector():
    rng = np.random.default_rng(1)
    train, queries = rng.normal(size=(120, 16)), rng.normal(size=(30, 16))
    familiarity = Familiarity.fit(train)  # not the width of image statistics: one block
    assert familiarity.blocks == (16,)
    bank = np.asarray(familiarity.bank)
    own = knn_distance(bank, bank, familiarity.k, leave_one_out=True)
    expected = knn_distance(queries, bank, familiarity.k) / familiarity.block_thresholds[0]
    np.testing.assert_allclose(familiarity.score(queries), expected, rtol=1e-5)
    assert familiarity.threshold * familiarity.block_thresholds[0] == pytest.approx(np.quantile(own, 0.95), rel=1e-5)


def test_save_then_load_scores_the_same(tmp_path):
    rng = np.random.default_rng(2)
    centres = [rng.random(width) for width in STATISTICS_BLOCKS]
    train, queries = statistics_like(100, rng, centres), statistics_like(20, rng, centres, texture_shift=0.04)
    fitted = Familiarity.fit(train)
    entry = json.loads(json.dumps(fitted.save(tmp_path)))  # through calibration.json's JSON
    loaded = Familiarity.load(tmp_path, entry)
    assert loaded.threshold == fitted.threshold and loaded.blocks == fitted.blocks
    np.testing.assert_allclose(loaded.score(queries), fitted.score(queries), rtol=1e-6)


def test_a_calibration_written_before_the_blocks_keeps_its_score_and_says_to_recalibrate(tmp_path):
    from safetensors.torch import save_file
    import torch

    rng = np.random.default_rng(3)
    bank = unit(rng.normal(size=(60, sum(STATISTICS_BLOCKS)))).astype(np.float32)
    save_file({"bank": torch.from_numpy(bank).half()}, str(tmp_path / FILE))  # what the old code wrote
    old_entry = {"k": 3, "threshold": 0.25, "recall": 0.95, "images": 60}
    with pytest.warns(UserWarning, match="maemi calibrate"):
        loaded = Familiarity.load(tmp_path, old_entry)
    queries = rng.normal(size=(10, sum(STATISTICS_BLOCKS)))
    assert loaded.threshold == 0.25
    np.testing.assert_allclose(loaded.score(queries), knn_distance(queries, loaded.bank, 3), rtol=1e-6)


@pytest.mark.skipif(not NEU.is_dir(), reason="needs ../shared/data/neu-det")
def test_real_steel_images_train_it_and_synthetic_sem_images_are_flagged(tmp_path):
    """60 NEU-SDD images per class as the training images; held-out ones pass, and all ten synthetic SEM images (one
    per class) are flagged, where the cosine of the whole vector flagged half of them."""
    from maemi.data.images import crop_info_bar, load_grey
    from maemi.data.synth import synthesize
    from maemi.teachers.sampling import image_statistics

    def statistics(paths):
        return np.stack([image_statistics(crop_info_bar(load_grey(p))) for p in paths])

    files = {c.name: sorted(c.glob("*.jpg")) for c in sorted(NEU.iterdir()) if c.is_dir() and any(c.glob("*.jpg"))}
    train = statistics([p for f in files.values() for p in f[:60]])
    held = statistics([p for f in files.values() for p in f[250:260]])
    synthesize(tmp_path, per_class=1, seed=7, workers=1)
    sem = statistics(sorted(tmp_path.rglob("*.png")))
    assert len(files) == 6 and len(sem) == 10

    per_block, concatenated = Familiarity.fit(train), Familiarity.fit(train, blocks=(train.shape[1],))
    assert (per_block.score(sem) > per_block.threshold).all()
    assert (concatenated.score(sem) > concatenated.threshold).mean() <= 0.6
    assert (per_block.score(held) <= per_block.threshold).mean() >= 0.8
