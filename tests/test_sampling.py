"""Similarity sampling (paper appendix A.6): few-shot demonstrations, inter-/intra-class pairs, heterogeneous groups."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maemi.teachers.sampling import (HandcraftedEmbedder, few_shot_demos, inter_class_pairs, intra_class_pairs,
                                     spatial_heterogeneous)


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_few_shot_demos_are_the_top_k_by_cosine_most_similar_last():
    support = unit([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5], [0.99, 0.01]])
    assert few_shot_demos(np.array([1.0, 0.0]), support, 3).tolist() == [1, 4, 0]
    assert few_shot_demos(np.array([1.0, 0.0]), support, 2, exclude=[0]).tolist() == [1, 4]
    # ties go to the lower index, whatever the order of computation
    tied = unit([[1, 0], [1, 0], [1, 0]])
    assert few_shot_demos(np.array([1.0, 0.0]), tied, 2).tolist() == [1, 0]


def test_inter_class_pairs_are_the_most_similar_across_classes_each_image_once():
    embs = unit([[1, 0], [0.98, 0.2], [0.97, 0.25], [0, 1], [0.1, 1]])
    labels = ["a", "b", "a", "b", None]
    pairs = inter_class_pairs(embs, labels, 5)
    assert pairs == [(1, 2), (0, 3)]  # the closest cross-class pair, then the closest among the images left
    assert all(labels[i] != labels[j] and None not in (labels[i], labels[j]) for i, j in pairs)
    flat = [i for p in pairs for i in p]
    assert len(flat) == len(set(flat))


def test_intra_class_pairs_are_the_least_similar_within_a_class_from_every_class():
    embs = unit([[1, 0], [0.9, 0.4], [0, 1], [1, 1], [1, 0.9], [0.2, 1]])
    labels = ["a", "a", "a", "b", "b", "b"]
    pairs = intra_class_pairs(embs, labels, 2)
    assert pairs == [(0, 2), (4, 5)]  # class a's most dissimilar pair, then class b's


def test_spatial_heterogeneous_groups_most_uneven_first():
    het = [0.1, 0.9, np.nan, 0.5, 0.7, 0.3, 0.9]
    assert spatial_heterogeneous(het, 2, per_record=2) == [[1, 6], [4, 3]]
    assert spatial_heterogeneous(het, 10, per_record=3) == [[1, 6, 4], [3, 5, 0]]
    with pytest.raises(ValueError, match="2 to 4"):
        spatial_heterogeneous(het, 1, per_record=5)


def test_handcrafted_embedder_is_normalised_deterministic_and_separates_textures(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        x = np.linspace(0, 8 * np.pi, 64)
        stripes = np.sin(x + i * 0.3)[None, :].repeat(64, 0)  # vertical stripes, shifted a little
        noise = rng.random((64, 64))
        for name, img in ((f"stripes{i}.png", stripes * 0.5 + 0.5), (f"noise{i}.png", noise)):
            Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / name)
            paths.append(tmp_path / name)
    emb = HandcraftedEmbedder().embed(paths)
    assert emb.shape == (8, HandcraftedEmbedder().dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb, HandcraftedEmbedder().embed(paths))
    labels = [p.name.rstrip("0123456789.png") for p in paths]
    for qi in range(len(paths)):  # each image's nearest other image has its texture
        demo = few_shot_demos(emb[qi], emb, 1, exclude=[qi])[0]
        assert labels[demo] == labels[qi]


def test_embedding_ahead_in_worker_processes_gives_the_same_rows_and_leaves_a_bad_file_to_raise(tmp_path):
    from maemi.data.images import ImageReadError

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ahead = HandcraftedEmbedder()
    ahead.embed_ahead([*paths, bad], workers=2)
    assert len(ahead._cache) == len(paths)  # embedded in the workers, the bad file left out
    assert np.array_equal(ahead.embed(paths), HandcraftedEmbedder().embed(paths))
    with pytest.raises(ImageReadError, match="bad.png"):
        ahead.embed_one(bad)
