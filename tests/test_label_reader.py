"""Tests for the learned scale-bar label reader (fast, CPU)."""

import os

import pytest
import torch

from maemi.measure.label_reader import DEFAULT_WEIGHTS, LabelReader, parse_length_label
from maemi.measure.label_render import HELD_OUT_FONT, TRAIN_FONTS, render_clean


@pytest.mark.parametrize("text,expected", [
    ("100 nm", (100.0, "nm")),
    ("2 \u03bcm", (2.0, "µm")),      # Greek mu
    ("2 \u00b5m", (2.0, "µm")),      # micro sign
    ("0.5 um", (0.5, "µm")),
    (".2 um", (0.2, "µm")),
    ("500nm", (500.0, "nm")),
    ("1,5 µm", (1.5, "µm")),
    ("10 µ m", (10.0, "µm")),
    ("1 mm", (1.0, "mm")),
    ("200 pm", (200.0, "pm")),
    ("50x 200 um WD", (200.0, "µm")),
    ("1um   WD 3.1mm", (1.0, "µm")),
    ("b1", None),
    ("hello", None),
    ("", None),
])
def test_parse_length_label(text, expected):
    assert parse_length_label(text) == expected


def test_shipped_weights_load_with_safetensors():
    from safetensors import safe_open

    assert os.path.getsize(DEFAULT_WEIGHTS) <= 2_000_000  # float16: small enough to ship in the package
    with safe_open(DEFAULT_WEIGHTS, framework="pt") as f:
        assert "config" in f.metadata()
    assert isinstance(LabelReader.load(), LabelReader)


def test_reads_clean_renders_in_unseen_font():
    torch.set_num_threads(1)
    assert HELD_OUT_FONT not in [f for f, _ in TRAIN_FONTS]
    reader = LabelReader.load()
    cases = [([("200", 0), ("nm", 1)], (200.0, "nm"), True),
             ([("5", 0), ("\u00b5", 1), ("m", 0)], (5.0, "µm"), True),
             ([("5", 0), ("\u00b5", 1), ("m", 0)], (5.0, "µm"), False)]  # light on dark
    crops = [render_clean(pieces, HELD_OUT_FONT, height=40, dark_on_light=d) for pieces, _, d in cases]
    for (text, conf), (_, expected, _) in zip(reader.read_batch(crops), cases):
        assert parse_length_label(text) == expected, text
        assert 0.0 <= conf <= 1.0
