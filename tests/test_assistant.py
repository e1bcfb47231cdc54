"""The inference API (maemi.assistant) and `maemi ask|caption|classify` on a tiny run trained here: three visibly
different classes of 40x40 images (dark, bright, striped), a tiny BERT text encoder, a few dozen steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import maemi.cpu
from maemi.assistant import (DIHEDRAL_VIEWS, Assistant, RunError, caveats, dihedral_view, measurement_record,
                             objects_caveat, question_prompt, area_caveat, tilt_caveat)
from maemi.teachers.records import few_shot_prompt
from maemi.cli import app
from maemi.data.datasets import scan_dataset
from maemi.data.images import ImagePreprocessConfig, ImageReadError, load_image, load_model_input
from maemi.model import MAEMI, AnswerVocab
from maemi.model.lora import dylora_modules, sample_dylora_rank_
from maemi.teachers.pipeline import TeachConfig, _few_shot_records
from maemi.teachers.questions import get_profile
from maemi.measure.measurements import SEPARATION_MIN
from maemi.measure.slots import fill
from maemi.teachers.measure import MeasureTeacher, measured_context
from maemi.teachers.records import make_record
from maemi.train.data import record_examples
from tiny_text_models import one_thread, save_tiny_bert, tiny_config  # noqa: F401

CLASSES = ("bright", "dark", "striped")
CAPTION_Q = "Describe this image."
CLASSIFY_Q = "What category does this image belong to?"
BRIGHT_Q = "Is the image bright or dark?"
COMPARE_Q = "Which image is brighter?"
GREY_Q = "What is the mean grey level?"  # answered from the measurement: "Mean grey level {brightness_mean}."
CAPTIONS = {"bright": "A bright, even field with fine grain.", "dark": "A dark, even field with fine grain.",
            "striped": "Vertical stripes cross the whole field."}
BRIGHTNESS = {"bright": "Bright.", "dark": "Dark.", "striped": "Neither: it is striped."}


def draw(label: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.05, (40, 40))
    if label == "striped":
        base = np.tile((np.arange(40) // 4 % 2).astype(float), (40, 1))  # vertical: no flat rows like an info bar
    else:
        base = np.full((40, 40), 0.85 if label == "bright" else 0.15)
    return np.clip(base + noise, 0, 1)


def write_images(root: Path, per_class: int, seed: int) -> list[str]:
    rels = []
    for c, label in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"{label}/{label}_{seed}_{i}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray((draw(label, seed * 100 + c * 10 + i) * 255).astype(np.uint8)).save(root / rel)
            rels.append(rel)
    return rels


def image_records(rels: list[str], root: Path) -> list[dict]:
    """The records a measuring teacher writes: every answer but the class has a template (and the measurement in
    words); the grey-level answer has a slot, filled from the image's measurement."""
    teacher = MeasureTeacher("generic")

    def facts(rel: str, index: int | None = None):
        f = teacher.facts(root / rel, rel.split("/")[0], {})[0]
        f.index = index
        return f

    records = []
    for rel in rels:
        label, f = rel.split("/")[0], facts(rel)
        grey = ("basics.grey", GREY_Q, "Mean grey level {brightness_mean}.", "vqa")
        for key, question, answer, task in (("caption.describe", CAPTION_Q, CAPTIONS[label], "caption"),
                                            ("classify.category", CLASSIFY_Q, label, "classify"),
                                            ("basics.brightness", BRIGHT_Q, BRIGHTNESS[label], "vqa"), grey):
            measured = {} if task == "classify" else {
                "template": answer, "slots": fill(answer, f.values).used, "measured": measured_context([f])}
            records.append(make_record([rel], question, fill(answer, f.values).text, task=task,
                                       family=key.split(".")[0], length="short", label=label, teacher="test",
                                       question_key=key, **measured))
    by_label = {label: [r for r in rels if r.startswith(label + "/")] for label in CLASSES}
    for dark, bright in zip(by_label["dark"], by_label["bright"]):
        for pair, answer in (([dark, bright], "The second image."), ([bright, dark], "The first image.")):
            records.append(make_record(pair, COMPARE_Q, answer, task="compare", family="compare.brightness",
                                       length="short", label=[p.split("/")[0] for p in pair], teacher="test",
                                       question_key="compare.brightness", template=answer, slots={},
                                       measured=measured_context([facts(p, i + 1) for i, p in enumerate(pair)])))
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build_tiny_run(base: Path, steps: int = 300) -> dict:
    """Images (2 train + 1 test per class), train/test records, and runs/tiny trained on the train records."""
    torch.set_num_threads(1)  # module-scoped callers: the autouse one_thread fixture is not active yet
    images = base / "images"
    train_rels, test_rels = write_images(images, 2, seed=0), write_images(images, 1, seed=1)
    train, test = image_records(train_rels, images), image_records(test_rels, images)
    train_path, test_path = write_jsonl(base / "train.jsonl", train), write_jsonl(base / "test.jsonl", test)

    examples = [record_examples(r)[0] for r in train]  # templates, with the measurement in the prompt
    vocab = AnswerVocab.train([e.answer for e in examples], vocab_size=300)
    torch.manual_seed(0)
    model = MAEMI(tiny_config(save_tiny_bert(base / "bert"), vocab), vocab)
    processor, preprocess = model.processor, ImagePreprocessConfig(size=32)
    batch = processor.collate([processor([load_model_input(images / p, preprocess) for p in e.images], e.prompt,
                                         e.answer) for e in examples])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ranks = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(steps):
        sample_dylora_rank_(model.text.model, ranks)
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    run = base / "runs" / "tiny"
    model.eval()
    model.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({
        "images_root": str(images), "train_data": str(train_path), "val_data": None, "image_size": 32,
        "classes": sorted(CLASSES), "class_answers": {c: c for c in CLASSES}, "classify_prompt": CLASSIFY_Q,
        "caption_prompt": CAPTION_Q, "measured_answers": True, "train_config": {"steps": steps},
        "best": {"epoch": 0, "val_loss": None}}))
    return {"run": run, "images": images, "train": train_rels, "test": test_rels, "test_data": test_path,
            "losses": losses}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    built = build_tiny_run(tmp_path_factory.mktemp("tiny"))
    torch.set_num_threads(threads)
    return built


@pytest.fixture(scope="module")
def assistant(tiny):
    return Assistant.load(tiny["run"], device="cpu", batch_size=4)


def paths(tiny, rels: list[str]) -> list[Path]:
    return [tiny["images"] / rel for rel in rels]


# ------------------------------------------------------------------------------------------------ prompts


def test_prompts_follow_the_training_records():
    record = make_record(["a.png", "b.png"], COMPARE_Q, "x", task="compare", family="f", length="short", label=None,
                         teacher="t", question_key="k")
    assert question_prompt(2, COMPARE_Q) == record["conversations"][0]["value"]
    assert question_prompt(1, "What is it?", context="  Sample 7, 5 kV.  ") == (
        "<image>\nContext: Sample 7, 5 kV.\nWhat is it?")
    assert question_prompt(2, "Compare <image> with <image>.") == "Compare <image> with <image>."


def test_few_shot_prompt_is_the_teachers_few_shot_record(tmp_path):
    root = tmp_path / "ds"
    write_images(root, 2, seed=3)
    samples = scan_dataset(root)
    embeddings = np.eye(len(samples), dtype=np.float32) + 0.1 * np.arange(len(samples))[:, None]
    profile = get_profile("generic")
    (record,) = _few_shot_records(samples, embeddings, profile, TeachConfig(few_shot=1, shots=3))
    demo_labels = [rel.split("/")[0] for rel in record["images"][:-1]]
    assert few_shot_prompt(profile.classify_question.text, demo_labels) == record["conversations"][0]["value"]


# ------------------------------------------------------------------------------------------------ the API


def test_load_gives_an_eval_model_with_adapters_at_full_rank(tiny, assistant):
    assert tiny["losses"][-1] < 0.2 * tiny["losses"][0]
    assert not assistant.model.training
    r_max = assistant.model.config.text.lora.r_max
    assert {a.rank for a in dylora_modules(assistant.model.text.model)} == {r_max}
    assert assistant.classes == sorted(CLASSES)


def test_caption_and_ask_give_the_trained_answers_in_batches(tiny, assistant):
    train = paths(tiny, tiny["train"])
    labels = [p.parent.name for p in train]
    assert assistant.caption(train) == [CAPTIONS[label] for label in labels]  # 6 images, batches of 4
    assert assistant.ask(train, BRIGHT_Q) == [BRIGHTNESS[label] for label in labels]
    one = train[0]
    assert assistant.ask(one, BRIGHT_Q) == [BRIGHTNESS[labels[0]]]
    assert assistant.ask(load_image(one), BRIGHT_Q) == assistant.ask(str(one), BRIGHT_Q)  # an array or a path
    dark, bright = (next(p for p in train if p.parent.name == c) for c in ("dark", "bright"))
    assert assistant.ask([[dark, bright], [bright, dark]], COMPARE_Q) == ["The second image.", "The first image."]
    with_context = assistant.ask([one], BRIGHT_Q, context="Sample 7, imaged at 5 kV.")
    assert len(with_context) == 1 and isinstance(with_context[0], str)


def test_a_measured_number_is_the_images_own_measurement(tiny, assistant):
    """The decoder writes the slot; the number is what the assistant measures on the image it is asked about, so it
    follows the image (a test image never seen in training, an array, a different image) and is never made up."""
    images = paths(tiny, tiny["train"] + tiny["test"])
    answers = assistant.ask_detailed(images, GREY_Q)
    for image, answer in zip(images, answers):
        measured = assistant.image_facts(image).values["brightness_mean"]
        assert answer.template == "Mean grey level {brightness_mean}."
        assert answer.text == f"Mean grey level {measured}." and answer.slots == {"brightness_mean": measured}
        assert answer.measurements[0]["values"]["brightness_mean"] == measured
    assert len({a.text for a in answers}) == 3  # the numbers follow the image: 0.15, 0.50, 0.85 by class
    array = load_image(images[0])
    assert assistant.ask(array, GREY_Q) == [answers[0].text]  # an upload (decoded pixels) is measured the same


def test_an_image_that_cannot_be_measured_gets_unknown_and_why(tiny, assistant, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(small)
    (answer,) = assistant.ask_detailed(small, GREY_Q)
    said, note = answer.text.split(" (Not measured: ")
    assert "small.png could not be measured: image too small" in note and "error" in answer.measurements[0]
    assert answer.slots == {} and not any(ch.isdigit() for ch in said)  # no number stands in for a measurement
    assert fill("Mean grey level {brightness_mean}.", {}).text == "Mean grey level unknown."  # had it asked one


def test_ask_json_says_where_each_number_comes_from(tiny):
    image = str(paths(tiny, tiny["test"])[0])
    result = invoke("ask", tiny["run"], image, GREY_Q, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    (number,) = row["numbers"]
    assert number["slot"] == "brightness_mean" and row["answer"] == f"Mean grey level {number['value']}."
    assert row["measurements"][0]["values"]["brightness_mean"] == number["value"] and row["unknown"] == []


def test_zero_shot_probabilities_over_the_classes(tiny, assistant):
    train = paths(tiny, tiny["train"])
    ranked = assistant.classify(train, top_k=None)
    for path, row in zip(train, ranked):
        assert sorted(label for label, _ in row) == sorted(CLASSES)
        assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-5)
        assert [p for _, p in row] == sorted((p for _, p in row), reverse=True)
        assert row[0][0] == path.parent.name
    top2 = assistant.classify(train[0], top_k=2)
    assert len(top2) == 1 and [label for label, _ in top2[0]] == [label for label, _ in ranked[0][:2]]


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)  # no symmetry of its own
    views = [dihedral_view(image, k) for k in range(DIHEDRAL_VIEWS)]
    assert torch.equal(views[0], image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # all different
    for v in views:  # each a rearrangement of the pixels within each channel, the channels kept apart
        assert v.shape == image.shape and torch.equal(v[0].flatten().sort().values, image[0].flatten())
    # closed under composition: a view of a view is a view
    names = {tuple(v.flatten().tolist()) for v in views}
    assert all(tuple(dihedral_view(v, k).flatten().tolist()) in names for v in views for k in range(8))
    with pytest.raises(ValueError, match="view must be in"):
        dihedral_view(image, 8)


def test_classify_with_views_averages_the_class_log_probabilities_of_the_views(tiny, assistant):
    test = paths(tiny, tiny["test"])
    model, processor = assistant.model, assistant.model.processor
    candidates = [assistant.class_answer(c) for c in assistant.classes]
    prompt = question_prompt(1, CLASSIFY_Q)
    expected = []
    for path in test:
        image = assistant.image_tensor(path)
        batch = processor.collate([processor([dihedral_view(image, k)], prompt) for k in range(4)])
        expected.append(model.score(batch, candidates).log_softmax(-1).mean(0).softmax(-1))
    ranked = assistant.classify(test, top_k=None, views=4)
    for row, probs in zip(ranked, expected):
        assert dict(row) == pytest.approx(dict(zip(assistant.classes, probs.tolist())), abs=1e-5)
    # the views are not all alike, so the average differs from the single view
    single = assistant.classify(test, top_k=None)
    assert any(dict(a) != pytest.approx(dict(b), abs=1e-4) for a, b in zip(ranked, single))
    few = assistant.classify(test, shots=2, top_k=None, views=8)
    assert all(sum(p for _, p in row) == pytest.approx(1.0, abs=1e-5) for row in few)
    with pytest.raises(ValueError, match="views must be between 1 and 8"):
        assistant.classify(test, views=9)


def test_few_shot_puts_the_most_similar_support_image_last(tiny, assistant, tmp_path):
    support = tmp_path / "support"
    for rel in tiny["train"]:
        (support / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny["images"] / rel, support / rel)
    query = paths(tiny, tiny["test"])[2]  # a held-out striped image
    shutil.copy(query, support / "striped" / "copy_of_query.png")
    support_set = assistant.support_set(support)
    assert len(support_set.paths) == 7 and support_set.classes == sorted(CLASSES)
    np.testing.assert_allclose(np.linalg.norm(support_set.embeddings, axis=1), 1.0, atol=1e-5)
    (demos,) = assistant.demonstrations([query], 3, support_set)
    assert support_set.paths[demos[-1]].name == "copy_of_query.png"
    assert assistant.support_set(support) is support_set  # embedded once, then cached

    ranked = assistant.classify([query], shots=3, support=support, top_k=None)
    assert sum(p for _, p in ranked[0]) == pytest.approx(1.0, abs=1e-5)
    from_training = assistant.classify(paths(tiny, tiny["test"]), shots=2, top_k=None)  # support: run's train images
    assert all(len(row) == 3 for row in from_training)


def test_bad_inputs_are_named(tiny, assistant, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="broken.png"):
        assistant.ask([bad], BRIGHT_Q)
    with pytest.raises(ImageReadError, match="missing.png"):
        assistant.classify([tmp_path / "missing.png"])
    with pytest.raises(RunError, match=r"run.json: no such file"):
        Assistant.load(tmp_path)
    with pytest.raises(ValueError, match="shots must be between 1 and the 6 support images"):
        assistant.classify(paths(tiny, tiny["test"])[:1], shots=7)


# ------------------------------------------------------------------------------------------------ the CLI


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def test_cli_ask_caption_classify(tiny):
    run, train = tiny["run"], paths(tiny, tiny["train"])
    labels = [p.parent.name for p in train]
    result = invoke("ask", run, train[0], BRIGHT_Q, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == BRIGHTNESS[labels[0]]

    result = invoke("ask", run, train[0], train[2], "-q", BRIGHT_Q, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["answer"] for r in rows] == [BRIGHTNESS[labels[0]], BRIGHTNESS[labels[2]]]
    assert rows[0]["images"] == [str(train[0])] and rows[0]["question"] == BRIGHT_Q
    # each image's scale, with its source: these tiny images have none, and the reason is given
    assert rows[0]["scales"][0]["nm_per_pixel"] is None and rows[0]["scales"][0]["notes"]
    assert rows[0]["measurements"][0]["segmenter"] == "classical"
    result = invoke("ask", run, train[0], "-q", BRIGHT_Q, "--json", "--segmenter", "spots")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["measurements"][0]["segmenter"] == "spots"
    result = invoke("ask", run, train[0], "-q", BRIGHT_Q, "--segmenter", "magic")
    assert result.exit_code != 0 and "--segmenter must be one of" in result.output

    # the training records have no context: the answer may change with it, so only its plumbing is checked here
    result = invoke("ask", run, train[0], train[2], "--together", "--context", "5 kV", COMPARE_Q, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["images"] == [str(train[0]), str(train[2])] and row["context"] == "5 kV" and len(row["scales"]) == 2

    result = invoke("caption", run, *train[:3], "--json")
    assert result.exit_code == 0, result.output
    assert [r["caption"] for r in json.loads(result.stdout)] == [CAPTIONS[label] for label in labels[:3]]

    result = invoke("classify", run, train[0], "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["image"] == str(train[0]) and row["shots"] == 0 and len(row["predictions"]) == 2
    assert row["predictions"][0]["label"] == labels[0]
    result = invoke("classify", run, train[0], "--views", "8", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["views"] == 8 and row["predictions"][0]["label"] == labels[0]

    result = invoke("classify", run, train[0], train[4], "--shots", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{train[0]}: ")


def test_cli_errors_exit_1_with_the_cause(tiny, tmp_path):
    result = invoke("ask", tiny["run"], tmp_path / "nope.png", BRIGHT_Q)
    assert result.exit_code == 1 and "nope.png" in result.stderr
    result = invoke("ask", tiny["run"], BRIGHT_Q)
    assert result.exit_code == 1 and "no image" in result.stderr
    result = invoke("caption", tmp_path, tiny["images"] / tiny["train"][0])
    assert result.exit_code == 1 and "run.json" in result.stderr


def test_counts_and_sizes_where_one_threshold_cannot_split_the_image_carry_a_caveat(tiny, assistant):
    """A field of grain has no phases to separate (they lie apart as noise's do), bright squares on a dark ground two
    clean ones: answers that quote the grain's objects say they are uncertain; its grey level, or the squares'
    objects, need no caveat."""
    grain = measurement_record(assistant.image_facts(paths(tiny, [tiny["test"][0]])[0]))  # "bright": even grain
    squares = np.full((64, 64), 0.2) + np.random.default_rng(0).normal(0, 0.02, (64, 64))
    for top, left in ((8, 8), (8, 40), (40, 24)):
        squares[top:top + 12, left:left + 12] += 0.6
    squares = measurement_record(assistant.image_facts(np.clip(squares, 0, 1).astype(np.float32)))
    assert grain["objects_uncertain"] and grain["phase_separation"] < 3
    assert not squares["objects_uncertain"] and squares["phase_separation"] >= SEPARATION_MIN
    assert squares["values"]["object_count"] == "3"
    caveat = objects_caveat({"object_count": "2"}, [grain])
    assert caveat.startswith("(Uncertain: the objects of this image") and not any(ch.isdigit() for ch in caveat)
    assert objects_caveat({"brightness_mean": "0.85"}, [grain]) is None
    assert objects_caveat({"object_count": "3"}, [squares]) is None
    assert "of image 2 " in objects_caveat({"object_count#1": "3", "diameter_mean#2": "3 px"}, [squares, grain])
    assert objects_caveat({"object_count#1": "3"}, [squares, grain]) is None


def test_area_fractions_of_a_film_with_vacuum_beyond_it_say_they_are_of_the_film(tiny, assistant):
    """With vacuum beyond a holey film left out, an area fraction is a share of the film: an answer that quotes one
    says so (without a number of its own); a count, or an image with no vacuum, needs no such caveat."""
    from test_measurements import _film_with_vacuum

    holey, _, vacuum = _film_with_vacuum(3, dark_field=False, lacey=False)
    holey = measurement_record(assistant.image_facts(holey))
    plain = measurement_record(assistant.image_facts(paths(tiny, [tiny["test"][0]])[0]))
    assert holey["empty_fraction"] == pytest.approx(vacuum, abs=0.05) and plain["empty_fraction"] == 0
    caveat = caveats({"area_fraction": "4.1%"}, [holey])
    assert caveat == "(The area fractions of this image are of the support film: the vacuum beyond it is left out.)"
    assert caveats({"object_count": "40"}, [holey]) is None and area_caveat({"coverage": "sparse"}, [plain]) is None
    assert "of image 2 " in area_caveat({"background_fraction#2": "90%", "area_fraction#1": "5%"}, [plain, holey])
    both = caveats({"object_count": "2", "area_fraction": "3%"}, [{**holey, "objects_uncertain": True}])
    assert both.startswith("(Uncertain:") and both.endswith("is left out.)")


def test_area_fractions_of_a_field_partly_beyond_the_beam_say_they_are_of_the_lit_field(assistant):
    """The dark beyond a TEM beam's edge is left out like a vacuum, and said apart from it; the record carries how
    much of the image is clipped too."""
    from test_measurements import _beyond_a_beam

    image, _, dark, _ = _beyond_a_beam(0, 0.42, 4, 0.0)
    beam = measurement_record(assistant.image_facts(image))
    assert beam["unlit_fraction"] == pytest.approx(dark, abs=0.02) and beam["empty_fraction"] == 0
    assert beam["clipped_fraction"] > 0.02 and beam["black_fraction"] == 0  # clipped to black, and left out
    assert caveats({"area_fraction": "4%"}, [beam]) == ("(The area fractions of this image are of the lit field: the "
                                                       "dark beyond the edge of the illumination is left out.)")
    holey = {"empty_fraction": 0.3}
    assert area_caveat({"area_fraction#1": "4%", "coverage#2": "sparse"}, [beam, holey]) == (
        "(The area fractions of image 2 are of the support film: the vacuum beyond it is left out.) (The area "
        "fractions of image 1 are of the lit field: the dark beyond the edge of the illumination is left out.)")
    black = {"black_fraction": 0.27}
    assert area_caveat({"coverage": "sparse"}, [black]) == ("(The area fractions of this image are of the whole field, "
                                                            "with the black at its edge: if that is vacuum, not of the "
                                                            "support.)")


def test_measuring_ahead_in_worker_processes_gives_the_same_facts(tiny, assistant, tmp_path, monkeypatch):
    monkeypatch.setattr(maemi.cpu, "MIN_ITEMS_PER_WORKER", 1)  # workers even for these few images
    fresh = Assistant.load(tiny["run"], device="cpu")
    images = paths(tiny, tiny["test"])
    fresh.measure_ahead(images + [tmp_path / "missing.png"])  # a missing file is left for image_facts to report
    assert sorted(key[0] for key in fresh._measured_ahead) == sorted(str(p) for p in images)
    for image in images:
        assert measurement_record(fresh.image_facts(image)) == measurement_record(assistant.image_facts(image))
    assert not fresh._measured_ahead  # handed to the cache on first use
    assert "could not be measured" in fresh.image_facts(tmp_path / "missing.png")


def test_the_eval_reference_carries_the_caveat_the_assistant_adds(tiny, assistant):
    """maemi eval scores an answer against the teacher's with the same caveat rule on both sides."""
    from maemi.evaluate.evaluate import as_the_assistant_says_it

    def record(value: str, template: str, slots: dict) -> dict:
        return {"images": [tiny["test"][0]], "conversations": [  # the "bright" grain: objects uncertain
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": value, "template": template,
                                                        "slots": slots}]}

    counted = as_the_assistant_says_it(record("2 objects.", "{objects}.", {"objects": "2 objects"}), assistant,
                                       tiny["images"])
    assert counted == "2 objects. " + objects_caveat({"objects": "2 objects"}, [{"objects_uncertain": True}])
    grey = record("Mean grey level 0.85.", "Mean grey level {brightness_mean}.", {"brightness_mean": "0.85"})
    assert as_the_assistant_says_it(grey, assistant, tiny["images"]) == "Mean grey level 0.85."


def test_lengths_measured_on_a_tilted_stage_say_they_read_short():
    """A stage tilted without tilt correction foreshortens the lengths across the tilt axis: an answer quoting a size
    says so (without a number of its own: the scale's notes have the angle); a count, a corrected or a flat stage do
    not need it."""
    tilted = {"scale": {"stage_tilt_deg": 52.0, "tilt_corrected": False}}
    caveat = caveats({"diameter_mean": "40 nm"}, [tilted])
    assert caveat.startswith("(The stage was tilted for this image") and not any(ch.isdigit() for ch in caveat)
    assert tilt_caveat({"diameter_mean": "40 nm"}, [{"scale": {"stage_tilt_deg": 52.0}}])  # correction not stated
    assert tilt_caveat({"object_count": "40"}, [tilted]) is None
    corrected = {"scale": {"stage_tilt_deg": 52.0, "tilt_corrected": True}}
    assert tilt_caveat({"diameter_mean": "40 nm"}, [corrected]) is None
    assert tilt_caveat({"diameter_mean": "40 nm"}, [{"scale": {"stage_tilt_deg": 2.0}}, {"scale": None}]) is None
    assert "for image 2," in tilt_caveat({"diameter_mean#1": "4 nm", "nn_distance_mean#2": "9 nm"},
                                         [{"scale": None}, tilted])
