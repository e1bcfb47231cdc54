"""Classification metrics on hand-made cases with known answers, and the confusion-matrix PNG."""

from __future__ import annotations

import pytest
from PIL import Image

from maemi.evaluate.classification import classification_metrics, plot_confusion_matrix

CLASSES = ["Fibres", "Nanowires", "Particles", "Powder", "Tips", "Biological"]


def ranking(first: str, *rest: str) -> list[str]:
    """A full ranking starting with the given classes, the others after them in CLASSES order."""
    head = [first, *rest]
    return head + [c for c in CLASSES if c not in head]


def test_known_case():
    y_true = ["Fibres", "Fibres", "Fibres", "Nanowires", "Nanowires", "Particles"]
    ranked = [
        ranking("Fibres"),                                   # right
        ranking("Fibres"),                                   # right
        ranking("Nanowires", "Fibres"),                      # wrong, true class 2nd
        ranking("Nanowires"),                                # right
        ranking("Fibres", "Particles", "Powder", "Tips", "Biological", "Nanowires"),  # wrong, true class 6th
        ranking("Particles"),                                # right
    ]
    m = classification_metrics(y_true, ranked, CLASSES)
    assert m["n"] == 6
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == pytest.approx(5 / 6)  # only sample 5 has its class outside the first five
    # Predictions: Fibres, Fibres, Nanowires, Nanowires, Fibres, Particles.
    # Fibres: predicted 3 times, 2 right -> P 2/3; 3 true, 2 found -> R 2/3.
    # Nanowires: predicted 2, 1 right -> P 1/2; 2 true, 1 found -> R 1/2.  Particles: P 1, R 1.
    fibres, nanowires, particles = (m["per_class"][c] for c in ("Fibres", "Nanowires", "Particles"))
    assert (fibres["precision"], fibres["recall"], fibres["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert fibres["f1"] == pytest.approx(2 / 3)
    assert (nanowires["precision"], nanowires["recall"], nanowires["f1"]) == (0.5, 0.5, 0.5)
    assert (particles["precision"], particles["recall"], particles["f1"], particles["support"]) == (1, 1, 1, 1)
    # Classes absent from y_true (Powder, Tips, Biological) stay in the table with support 0 but out of the macro.
    assert m["per_class"]["Powder"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # Rows true, columns predicted, in CLASSES order.
    assert m["classes"] == CLASSES
    assert m["confusion_matrix"] == [
        [2, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]


def test_precision_and_recall_differ():
    # Everything predicted as "Tips": Tips P = 1/3 (one of three right), R = 1; the others P = R = 0.
    y_true = ["Tips", "Powder", "Biological"]
    m = classification_metrics(y_true, [ranking("Tips")] * 3, CLASSES)
    tips = m["per_class"]["Tips"]
    assert tips["precision"] == pytest.approx(1 / 3) and tips["recall"] == 1.0 and tips["f1"] == pytest.approx(0.5)
    assert m["per_class"]["Powder"]["recall"] == 0.0 and m["per_class"]["Powder"]["support"] == 1
    assert m["top1"] == pytest.approx(1 / 3)
    # "Tips", "Powder" are in the first five of ranking("Tips"); "Biological" is 6th.
    assert m["top5"] == pytest.approx(2 / 3)


def test_short_rankings_and_fewer_than_five_classes():
    classes = ["a", "b", "c"]
    m = classification_metrics(["a", "b", "c"], [["a"], ["a", "b"], ["b", "a", "c"]], classes)
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top5"] == pytest.approx(1.0)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="2 true labels but 1 rankings"):
        classification_metrics(["a", "b"], [["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="sample 0: true class 'z'"):
        classification_metrics(["z"], [["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="sample 0: ranking names unknown classes \\['q'\\]"):
        classification_metrics(["a"], [["q", "a"]], ["a", "b"])
    with pytest.raises(ValueError, match="sample 0: empty ranking"):
        classification_metrics(["a"], [[]], ["a", "b"])
    with pytest.raises(ValueError, match="duplicates"):
        classification_metrics(["a"], [["a"]], ["a", "a"])


def test_confusion_matrix_png(tmp_path):
    m = classification_metrics(["Fibres", "Nanowires", "Tips"], [ranking("Fibres"), ranking("Fibres"),
                                                                 ranking("Tips")], CLASSES)
    path = plot_confusion_matrix(m["confusion_matrix"], CLASSES, tmp_path / "plots" / "cm.png", title="zero-shot")
    assert path == tmp_path / "plots" / "cm.png"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 300 <= w <= 2000 and 300 <= h <= 2000
        # not a blank canvas: the matrix, counts and labels put many distinct colours on it
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["cm.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix([[1, 2], [3, 4]], CLASSES, tmp_path / "bad.png")
