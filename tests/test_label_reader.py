"""Tests for the learned scale-bar label reader (fast, CPU)."""

import os

import numpy as np
import pytest
import torch

from maemi.measure.label_reader import (ALPHABET, DEFAULT_WEIGHTS, LabelReader, label_decode, label_probability,
                                        parse_length_label)
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

    for path in DEFAULT_WEIGHTS:
        assert os.path.getsize(path) <= 1_500_000  # float16: small enough to ship in the package
        with safe_open(path, framework="pt") as f:
            assert "config" in f.metadata()
    assert len(LabelReader.load().models) == len(DEFAULT_WEIGHTS) == 2


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


def _frames(*columns: dict[str, float]) -> np.ndarray:
    """CTC log-probabilities, one frame per column: {character or "_" for blank: probability}, the rest of the
    mass spread over the other classes."""
    out = np.empty((len(columns), len(ALPHABET) + 1))
    for t, column in enumerate(columns):
        rest = (1.0 - sum(column.values())) / (out.shape[1] - len(column))
        for k in range(out.shape[1]):
            out[t, k] = column.get("_" if k == 0 else ALPHABET[k - 1], rest)
    return np.log(out)


def test_label_decode_reads_only_well_formed_labels():
    # the best path spells "500 m" (no unit); the likeliest label is "500 nm", with the n's probability
    frames = _frames({"5": 0.97}, {"_": 0.97}, {"0": 0.97}, {"_": 0.97}, {"0": 0.97}, {" ": 0.97},
                     {"_": 0.7, "n": 0.28}, {"m": 0.97})
    text, probability = label_decode(frames)
    assert parse_length_label(text) == (500.0, "nm")
    assert 0.15 < probability < 0.35
    # a repeated digit needs a blank between its frames: "00" held over two frames is one "0"
    text, _ = label_decode(_frames({"1": 0.97}, {"0": 0.97}, {"0": 0.97}, {"n": 0.97}, {"m": 0.97}))
    assert parse_length_label(text) == (10.0, "nm")


def test_label_decode_sums_the_spellings_of_one_length():
    # "2 µm" and "2µm" split the space frame between them: one label, both spellings' probability
    frames = _frames({"2": 0.98}, {" ": 0.49, "_": 0.49}, {"µ": 0.98}, {"m": 0.98})
    text, probability = label_decode(frames)
    assert parse_length_label(text) == (2.0, "µm")
    assert probability > 0.85


def test_label_decode_gives_no_confidence_to_a_forced_reading():
    # digits and no unit: whatever label the grammar forces out of it has next to no probability
    _, probability = label_decode(_frames({"1": 0.98}, {"2": 0.98}, {"_": 0.98}, {"_": 0.98}))
    assert probability < 1e-3
    assert label_decode(_frames({"1": 0.98})) == ("", 0.0)  # one frame cannot hold a label


def test_fonts_not_installed_are_named_and_left_out():
    from maemi.measure.label_render import installed, missing_fonts

    fonts = (("DejaVuSans.ttf", 1.0), ("NoSuchFont-Regular.ttf", 1.0))
    assert missing_fonts(fonts) == ["NoSuchFont-Regular.ttf"]
    assert installed(fonts) == (("DejaVuSans.ttf", 1.0),)


def test_label_probability_agrees_with_the_decoder_and_is_zero_where_a_label_cannot_fit():
    frames = _frames({"2": 0.98}, {" ": 0.49, "_": 0.49}, {"µ": 0.98}, {"m": 0.98})
    text, probability = label_decode(frames)
    assert label_probability(torch.from_numpy(frames).float(), text) == pytest.approx(probability, rel=1e-3)
    assert label_probability(torch.from_numpy(frames).float(), "200 µm") == 0.0  # six characters, four frames
