"""maemi.measure.boxes: experts' YOLO boxes read in pixels, objects matched one to one by centroid, boxes drawn as
instances; the segmenter's training keeping the checkpoint that annotated real-style images prefer, and fine-tuning
on them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from maemi.measure.boxes import annotated_images, box_instances, match, read_yolo_boxes, score_against_boxes


def test_yolo_lines_become_pixel_boxes(tmp_path):
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.5 0.2 0.1\n\n# a comment line\n1 0.1 0.2 0.1 0.2 0.93\n")
    boxes = read_yolo_boxes(label, width=200, height=100)
    assert boxes == pytest.approx(np.array([[80, 45, 40, 10], [10, 10, 20, 20]]))


def test_an_annotated_folder_pairs_images_with_label_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels/"):
        annotated_images(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("b", "a", "unlabelled"):
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "b.txt").write_text("")
    cases = annotated_images(tmp_path)
    assert [p.name for p, _ in cases] == ["a.png", "b.png"]
    assert cases[0][1] == pytest.approx(np.array([[12, 8, 6, 4]])) and cases[1][1].shape == (0, 4)


def test_objects_match_boxes_one_to_one_by_centroid():
    boxes = np.array([[0, 0, 10, 10], [20, 0, 10, 10]], float)
    centroids = np.array([[5, 5], [4, 6], [50, 50]], float)  # two in the first box, one in none
    obj, box = match(centroids, boxes)
    assert list(box) == [0] and list(obj) == [0]  # the one nearer the box's centre
    labels = np.zeros((40, 40), int)
    labels[3:7, 3:7] = 1  # in box 0
    labels[2:5, 22:25] = 2  # in box 1
    labels[30:35, 30:35] = 3  # in no box
    score = score_against_boxes(labels, boxes)
    assert (score.measured, score.boxes, score.matched) == (3, 2, 2) and score.count_error == pytest.approx(0.5)


def test_boxes_become_their_inscribed_ellipses():
    boxes = np.array([[10, 10, 20, 10], [40, 40, 8, 8], [42, 38, 4, 4], [55, 55, 10, 10]], float)
    labels = box_instances(boxes, (60, 60))
    areas = np.bincount(labels.ravel(), minlength=5)[1:]
    assert areas[0] == pytest.approx(np.pi * 10 * 5, rel=0.05)  # the ellipse's area, inside its box
    rows, cols = np.nonzero(labels == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 10, 29)
    # the small box overlapping the larger one keeps its whole ellipse; the larger keeps the rest
    assert areas[2] == (box_instances(boxes[2:3], (60, 60)) > 0).sum() and 0 < areas[1] < np.pi * 16
    assert 0 < areas[3] < np.pi * 25 / 2  # cut by the image's edge, no error
    assert box_instances(np.zeros((0, 4)), (5, 5)).max() == 0


def annotated_scene_folder(root, seed: int = 5):
    """A YOLO folder of one rendered STEM scene whose boxes are its particles' extents."""
    from maemi.measure.scenes import render_scene

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    scene = render_scene(seed, "stem_particles", (96, 128))
    Image.fromarray((scene.image * 255).astype(np.uint8)).save(root / "images" / "s.png")
    lines = []
    for k in range(1, int(scene.instances.max()) + 1):
        rows, cols = np.nonzero(scene.instances == k)
        if len(rows):
            cy, cx = (rows.min() + rows.max() + 1) / 2 / 96, (cols.min() + cols.max() + 1) / 2 / 128
            h, w = (rows.max() - rows.min() + 1) / 96, (cols.max() - cols.min() + 1) / 128
            lines.append(f"0 {cx} {cy} {w} {h}")
    (root / "labels" / "s.txt").write_text("\n".join(lines))
    return scene


def test_training_keeps_the_checkpoint_the_annotated_images_prefer(tmp_path, capsys):
    from maemi.measure.segmenter import SegmenterConfig
    from maemi.measure.train_segmenter import TrainConfig, train

    annotated_scene_folder(tmp_path)
    out = tmp_path / "seg.safetensors"
    tc = TrainConfig(steps=4, batch=2, crop=64, val_size=2, warmup=1, select_on=str(tmp_path), select_every=2,
                     select_from=2, bf16=False)
    train(str(out), tc, SegmenterConfig())
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    import re

    scored = [(int(step), float(f1)) for step, f1 in
              re.findall(r"^step (\d+): annotated images f1 ([\d.]+)", capsys.readouterr().out, re.M)]
    assert [step for step, _ in scored] == [2, 4]
    best_step, best_f1 = max(scored, key=lambda s: (s[1], -s[0]))  # the first of equal scores
    assert meta["selected_step"] == str(best_step) and float(meta["selected_f1"]) == pytest.approx(best_f1, abs=1e-3)
    assert meta["selected_images"] == "1" and meta["selected_on"] == tmp_path.name


def test_finetuning_starts_from_weights_and_trains_on_the_annotated_crops(tmp_path):
    import torch
    from safetensors.torch import load_file

    from maemi.measure.segmenter import DEFAULT_WEIGHTS, Segmenter, SegmenterConfig, network_input
    from maemi.measure.train_segmenter import TrainConfig, annotated_training_images, _real_example, train

    folder = tmp_path / "lab"
    scene = annotated_scene_folder(folder)
    init = Segmenter.load(DEFAULT_WEIGHTS)
    real = annotated_training_images(annotated_images(folder), init.cfg)
    assert real[0].inputs == pytest.approx(network_input(np.asarray(Image.open(folder / "images" / "s.png"),
                                                                    np.float32) / 255, init.cfg))
    assert real[0].instances.max() == (np.bincount(scene.instances.ravel())[1:] > 0).sum()
    # a crop of the image as the network reads it, rotated or flipped, and the boxes' ellipses there
    x, fg, core = _real_example(real, seed=0, step=3, i=0, crop=64)
    assert x.shape == (2, 64, 64) and fg.shape == core.shape == (1, 64, 64)
    assert core.sum() > 0 and np.all(fg[core > 0] == 1)
    views = (np.rot90(real[0].inputs[:, a:a + 64, b:b + 64], k, axes=(1, 2))
             for a in range(96 - 63) for b in range(128 - 63) for k in range(4))
    assert any(np.array_equal(v, x) or np.array_equal(v[:, :, ::-1], x) for v in views)

    out = tmp_path / "tuned.safetensors"
    tc = TrainConfig(steps=3, batch=2, crop=64, val_size=2, warmup=1, lr=1e-3, bf16=False, init=DEFAULT_WEIGHTS,
                     finetune_on=(str(folder),))
    train(str(out), tc, init.cfg)
    tuned = Segmenter.load(str(out))
    assert tuned.metadata["finetuned_images"] == "1" and tuned.metadata["init"] == "segmenter.safetensors"
    before, after = load_file(DEFAULT_WEIGHTS), load_file(str(out))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # from the shipped weights (a few small steps: every weight near its start), not from a fresh network
    assert changed and all(torch.allclose(before[k].float(), after[k].float(), atol=0.05)
                           for k in before if k.endswith(("weight", "bias")))
    with pytest.raises(ValueError, match="segmenter.safetensors"):
        train(str(out), TrainConfig(steps=1, init=DEFAULT_WEIGHTS), SegmenterConfig(in_channels=1))
    with pytest.raises(ValueError, match="real_share"):
        train(str(out), TrainConfig(steps=1, real_share=1.5, finetune_on=(str(folder),)), init.cfg)


def test_the_command_fine_tunes_from_the_shipped_weights_by_default(tmp_path, monkeypatch):
    from maemi.measure import train_segmenter
    from maemi.measure.segmenter import Segmenter

    folder = tmp_path / "lab"
    annotated_scene_folder(folder)
    out = tmp_path / "tuned.safetensors"
    monkeypatch.setattr("sys.argv", ["train_segmenter", "--out", str(out), "--finetune-on", str(folder),
                                     "--steps", "2", "--batch", "2", "--crop", "64", "--no-bf16"])
    train_segmenter.main()
    meta = Segmenter.load(str(out)).metadata
    assert meta["init"] == "segmenter.safetensors" and meta["finetuned_on"] == "lab" and meta["steps"] == "2"
