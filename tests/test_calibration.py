"""Calibrated confidence and the out-of-distribution flag (issue 25): temperature scaling, ECE, the reliability
diagram, the familiarity score, and `maemi calibrate` on the tiny run of test_assistant."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from typer.testing import CliRunner

from maemi.assistant import Assistant
from maemi.cli import app
from maemi.evaluate.calibration import (expected_calibration_error, fit_temperature, probabilities, reliability,
                                        reliability_png)
from maemi.evaluate.familiarity import Familiarity, flag
from test_assistant import BRIGHT_Q, draw, tiny  # noqa: F401  (a fixture: the tiny trained run)
from tiny_text_models import one_thread  # noqa: F401


def overconfident(n: int = 4000, classes: int = 5, factor: float = 3.0, seed: int = 0):
    """Scores `factor` times sharper than the probabilities the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(logits, axis=1)])
    return logits * factor, labels


def test_temperature_scaling_recovers_the_sharpening_and_lowers_the_ece():
    scores, labels = overconfident()
    t = fit_temperature(scores, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = (expected_calibration_error(probabilities(scores, x), labels) for x in (1.0, t))
    assert before > 0.1 and after < 0.03
    assert (probabilities(scores, t).argmax(1) == probabilities(scores).argmax(1)).all()  # top-1 never moves


def test_a_validation_split_without_errors_leaves_the_temperature_at_one():
    scores, labels = overconfident()
    right = scores.argmax(1)  # every label the top class: the NLL would fall to the lower bound of T
    assert fit_temperature(scores, right) == 1.0
    assert fit_temperature(scores, labels) != 1.0


def test_reliability_bins_and_diagram():
    scores, labels = overconfident(400)
    rows = reliability(probabilities(scores), labels)
    assert sum(r["n"] for r in rows) == 400 and len(rows) == 15
    png = reliability_png(probabilities(scores), labels, "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    perfect = np.eye(3)[[0, 1, 2, 0]]  # confident and right: no gap
    assert expected_calibration_error(perfect, np.array([0, 1, 2, 0])) == 0.0


def test_familiarity_passes_the_training_cloud_and_flags_what_lies_outside():
    rng = np.random.default_rng(1)
    centre = rng.normal(size=16)
    train = centre + 0.05 * rng.normal(size=(200, 16))
    familiarity = Familiarity.fit(train)
    near, far = centre + 0.05 * rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    assert (familiarity.score(near) <= familiarity.threshold).mean() > 0.85
    assert (familiarity.score(far) > familiarity.threshold).all()
    assert flag(0.99, float(familiarity.score(far[:1])[0]), familiarity.threshold) == "unfamiliar"
    assert flag(0.3, None, None) == "low_confidence" and flag(0.9, None, None) == "ok"


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):
    """A copy of the tiny run, calibrated (its test records stand in for a validation split here)."""
    run = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny["run"], run)
    result = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(tiny["test_data"]), "--quiet",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "temperature" in result.stdout and (run / "calibration.json").is_file()
    return run


def foreign(path):
    """Nothing like the tiny run's flat or striped 40x40 fields: a smooth radial ramp with bright speckles."""
    y, x = np.mgrid[0:64, 0:64]
    image = np.hypot(x - 32, y - 32) / 45
    image[np.random.default_rng(0).random((64, 64)) > 0.97] = 1.0
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_image_statistics_tell_new_images_of_the_training_kind_from_foreign_ones(tmp_path):
    """The familiarity score on real image statistics: 60 training-like images, new draws of the same kinds pass,
    a foreign image does not."""
    from maemi.teachers.sampling import image_statistics

    kinds = ("bright", "dark", "striped")
    train = np.stack([image_statistics(draw(k, seed)) for k in kinds for seed in range(20)])
    familiarity = Familiarity.fit(train)
    new = familiarity.score(np.stack([image_statistics(draw(k, 1000 + seed)) for k in kinds for seed in range(10)]))
    assert (new <= familiarity.threshold).mean() >= 0.85
    strange = np.asarray(Image.open(foreign(tmp_path / "strange.png")), dtype=np.float32) / 255
    assert familiarity.score(image_statistics(strange)[None])[0] > familiarity.threshold


def test_a_foreign_image_is_flagged_and_a_training_image_is_not(tiny, calibrated, tmp_path):
    familiar = tiny["images"] / tiny["train"][0]  # a bright training image: the run's own domain
    strange = foreign(tmp_path / "strange.png")
    entry = json.loads((calibrated / "calibration.json").read_text())
    assert entry["familiarity"]["images"] == 6 and entry["familiarity"]["k"] == 1 and entry["temperature"] > 0
    assert entry["val_views"] == 8 * entry["val_images"] == 24  # each validation image in its 8 dihedral views

    result = CliRunner().invoke(app, ["classify", str(calibrated), str(familiar), str(strange), "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = {row["image"]: row for row in json.loads(result.stdout)}
    assert rows[str(strange)]["flag"] == "unfamiliar"
    assert rows[str(familiar)]["flag"] == "ok" and rows[str(familiar)]["predictions"][0]["label"] == "bright"
    assert rows[str(strange)]["ood_score"] > entry["familiarity"]["threshold"] >= rows[str(familiar)]["ood_score"]

    assistant = Assistant.load(calibrated, device="cpu")
    warned, plain = assistant.ask_detailed([strange, familiar], BRIGHT_Q)
    assert warned.text.startswith("Warning: This image is unlike the images this model was trained on")
    assert warned.warning and plain.warning is None and not plain.text.startswith("Warning")


def test_screen_flags_the_foreign_image(tiny, calibrated, tmp_path):
    from maemi.serve.screen import ScreenConfig, screen_folder

    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(tiny["images"] / tiny["train"][0], folder / "known.png")
    foreign(folder / "strange.png")
    assistant = Assistant.load(calibrated, device="cpu")
    for config in (ScreenConfig(), ScreenConfig(caption=True)):  # with and without the measuring path
        out = tmp_path / f"screen-{config.caption}.jsonl"
        screen_folder(assistant, folder, out, config, progress=False)
        rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert rows["strange.png"]["flag"] == "unfamiliar" and rows["known.png"]["flag"] == "ok"
        assert rows["strange.png"]["ood_score"] > rows["known.png"]["ood_score"]


def test_the_server_flags_the_foreign_image_and_warns_in_its_answer(tiny, calibrated, tmp_path):
    import httpx

    from serve_process import maemi_serve

    strange = foreign(tmp_path / "strange.png")
    known = tiny["images"] / tiny["train"][0]
    with maemi_serve(calibrated, tmp_path / "serve.log") as url:
        def post(path, image, **fields):
            with open(image, "rb") as f:
                return httpx.post(url + path, files={"image": (image.name, f.read(), "image/png")}, data=fields,
                                  timeout=60)

        assert post("/v1/classify", strange).json()["flag"] == "unfamiliar"
        ok = post("/v1/classify", known).json()
        assert ok["flag"] == "ok" and ok["ood_score"] is not None
        answer = post("/v1/ask", strange, question=BRIGHT_Q).json()
        assert answer["answer"].startswith("Warning: This image is unlike") and answer["warning"]
        assert post("/v1/ask", known, question=BRIGHT_Q).json()["warning"] is None
