"""maemi.measure.boxes: experts' YOLO boxes read in pixels, objects matched one to one by centroid, and the
segmenter's training keeping the checkpoint that annotated real-style images prefer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from maemi.measure.boxes import annotated_images, match, read_yolo_boxes, score_against_boxes


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


def test_training_keeps_the_checkpoint_the_annotated_images_prefer(tmp_path, capsys):
    from maemi.measure.scenes import render_scene
    from maemi.measure.segmenter import SegmenterConfig
    from maemi.measure.train_segmenter import TrainConfig, train

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    scene = render_scene(5, "stem_particles", (96, 128))
    Image.fromarray((scene.image * 255).astype(np.uint8)).save(tmp_path / "images" / "s.png")
    lines = []
    for k in range(1, int(scene.instances.max()) + 1):
        rows, cols = np.nonzero(scene.instances == k)
        if len(rows):
            cy, cx = (rows.min() + rows.max() + 1) / 2 / 96, (cols.min() + cols.max() + 1) / 2 / 128
            h, w = (rows.max() - rows.min() + 1) / 96, (cols.max() - cols.min() + 1) / 128
            lines.append(f"0 {cx} {cy} {w} {h}")
    (tmp_path / "labels" / "s.txt").write_text("\n".join(lines))
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
