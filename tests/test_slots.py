"""Measured answers: templates with {slots}, filled from the measurement of the image (maemi.measure.slots), and
numeric fidelity (maemi.evaluate.numeric)."""

from __future__ import annotations

import pytest

from maemi.data.datasets import metadata_for, scan_dataset
from maemi.data.synth import synthesize
from maemi.evaluate.numeric import numeric_fidelity, reproduced
from maemi.measure.slots import SLOT_RE, fill, numbers, template_from_text
from maemi.teachers.measure import ANSWERERS, MeasureTeacher, measure_pixels
from maemi.teachers.questions import get_profile
from maemi.teachers.pipeline import image_records
from maemi.teachers.records import validate_record, RecordError, with_measured


def test_fill_replaces_known_slots_and_says_unknown_for_the_rest():
    filled = fill("{object_count} objects, {diameter_mean} across, {nn_distance_mean} apart; image {x#2}",
                  {"object_count": "104", "diameter_mean": "24.5 nm", "x#2": "7"})
    assert filled.text == "104 objects, 24.5 nm across, unknown apart; image 7"
    assert filled.used == {"object_count": "104", "diameter_mean": "24.5 nm", "x#2": "7"}
    assert filled.missing == ["nn_distance_mean"]
    assert fill("no slots {} or {Upper} here", {}).text == "no slots {} or {Upper} here"  # not slot names


def test_numbers_are_read_as_answers_write_them():
    assert numbers("1,234 objects, 24.5 nm, 0.526, 12.3% and EHT5 -3") == [1234, 24.5, 0.526, 12.3, -3]
    assert numbers("No 3D rendering, no 2.5D stack; 24.") == [24]  # a dimension is a word, not a quantity


def test_a_remote_answer_gets_slots_only_where_a_measurement_backs_its_number():
    values = {"object_count": "104", "diameter_mean": "24.5 nm", "area_fraction": "12.3%"}
    template, used = template_from_text("About 100 particles of roughly 25 nm cover 40% of it; 3 clusters, 24 px.",
                                        values)
    assert template == "About {object_count} particles of roughly {diameter_mean} cover 40% of it; 3 clusters, 24 px."
    assert used == {"object_count": "104", "diameter_mean": "24.5 nm"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    synthesize(root, per_class=1, seed=5, classes=["Particles", "Nanowires", "Films_Coated_Surface"])
    return root


def test_every_teacher_answer_is_its_template_filled_from_the_measurement(corpus):
    teacher = MeasureTeacher("sem")
    profile = get_profile("sem")
    for sample in scan_dataset(corpus):
        reply = teacher.answer([sample.path], list(profile.questions), label=sample.label, metadata=sample.metadata)
        assert reply.measured and "sizes in nanometres" in reply.measured
        for key, pair in reply.templates.items():
            for length, template in pair.items():
                filled = fill(template, reply.slots)
                assert filled.text == reply.answers[key][length] and not filled.missing
                # no number in a measured sentence is typed into the template: each comes from a slot
                if key in ("size_distribution.size", "size_distribution.count"):
                    assert SLOT_RE.search(template), template
        records = image_records(sample, profile.questions, reply, "measure", "sem")
        for record in records:
            validate_record(record, "test")
        size = next(r for r in records if r["question_key"] == "size_distribution.count" and r["length"] == "short")
        assert "template" in size["conversations"][1] and size["measured"] == reply.measured
        classify = next(r for r in records if r["task"] == "classify")
        assert "template" not in classify["conversations"][1]  # a label is not a measurement


def test_a_record_whose_template_does_not_give_its_answer_is_refused(corpus):
    sample = scan_dataset(corpus)[0]
    reply = MeasureTeacher("sem").answer([sample.path], [get_profile("sem").question("size_distribution.count")],
                                         metadata=sample.metadata)
    record = image_records(sample, (get_profile("sem").question("size_distribution.count"),), reply, "measure",
                           "sem")[0]
    record["conversations"][1]["slots"] = {k: "1" for k in record["conversations"][1]["slots"]}
    with pytest.raises(RecordError, match="filled from its slots is not the answer"):
        validate_record(record, "r")


def test_the_measurement_at_inference_is_the_teachers(corpus):
    """What the assistant measures from decoded pixels (uploads, screen: Assistant.prepare) with the metadata.jsonl row
    it finds itself gives the slot values the teacher rendered from the dataset's metadata."""
    from maemi.data.images import load_image
    from maemi.teachers.measure import ImageFacts

    for sample in scan_dataset(corpus):
        teacher_facts, _ = MeasureTeacher("sem").facts(sample.path, sample.label, sample.metadata)
        found = metadata_for(sample.path)
        assert found == sample.metadata and metadata_for(corpus / "nowhere.png") == {}
        at_inference = ImageFacts.unlabelled(measure_pixels(load_image(sample.path), sample.path, found), found)
        assert at_inference.values == teacher_facts.values and "nm_per_pixel" in at_inference.values


def test_with_measured_puts_the_line_before_the_question():
    assert with_measured("<image>\nContext: x\nHow many?", "many objects") == \
        "<image>\nContext: x\nMeasured: many objects\nHow many?"
    assert with_measured("<image>\nHow many?", None) == "<image>\nHow many?"


def test_numeric_fidelity_counts_reference_numbers_the_answer_states():
    assert reproduced("104 objects, 24.5 nm, 12.3%", "104 objects, 25 nm, 30%") == (3, 2, 1)
    result = numeric_fidelity(["104 objects", "no numbers", "7 and 8"], ["104 objects", "none", "7"],
                              {"family": ["a", "b", "a"]})
    assert result["overall"] == {"numbers": 3, "answers": 3, "within_10pct": pytest.approx(2 / 3),
                                 "exact": pytest.approx(2 / 3)}
    assert result["groups"]["family"]["b"]["within_10pct"] is None
    assert result["groups"]["family"]["a"]["numbers"] == 3


def test_the_shuffled_control_is_reported_beside_its_chance_floor():
    # the shuffled image has the same 512 px width (chance) but another count; the first answer follows its image,
    # the second repeats the reference's count whatever the image shows
    references = ["512 px wide, 104 objects", "512 px wide, 104 objects"]
    floors = ["512 px wide, 40 objects", "512 px wide, 40 objects"]
    result = numeric_fidelity(references, ["512 px wide, 40 objects", "512 px wide, 104 objects"], floors=floors)
    assert result["overall"]["within_10pct"] == pytest.approx(3 / 4)
    assert result["floor"]["within_10pct"] == pytest.approx(1 / 2)
    assert result["images_differ"] == {"numbers": 2, "answers": 2, "within_10pct": pytest.approx(1 / 2),
                                       "exact": pytest.approx(1 / 2)}
    assert reproduced("512 px, 104 objects", "512 px, 104 objects", unless="512 px, 40 objects") == (1, 1, 1)
    with pytest.raises(ValueError, match="1 floors"):
        numeric_fidelity(references, references, floors=floors[:1])


def test_every_sem_question_has_an_answerer():
    assert all(q.key in ANSWERERS for q in get_profile("sem").questions)


def test_a_remote_teachers_numbers_that_match_the_measurement_become_slots(corpus):
    from maemi.teachers.pipeline import matched_to_measurements
    from maemi.teachers.questions import TeacherReply

    teacher = MeasureTeacher("sem")
    sample = next(s for s in scan_dataset(corpus) if s.label == "Particles")
    facts, _ = teacher.facts(sample.path, sample.label, sample.metadata)
    count = int(facts.values["object_count"])
    remote = TeacherReply(answers={"size_distribution.count": {
        "short": f"I count about {round(count * 1.05)} particles.",
        "long": f"About {round(count * 1.05)} particles; perhaps 3 clusters."}})
    reply = matched_to_measurements(remote, teacher, sample)
    assert reply.templates["size_distribution.count"]["short"] == "I count about {object_count} particles."
    assert reply.answers["size_distribution.count"]["short"] == f"I count about {count} particles."  # as measured
    assert "3 clusters" in reply.answers["size_distribution.count"]["long"]  # no measurement backs it: kept
    for record in image_records(sample, (get_profile("sem").question("size_distribution.count"),), reply,
                                "openai:x", "sem"):
        validate_record(record, "test")
        assert record["measured"] == reply.measured


def test_measured_numbers_are_the_slot_values_of_a_reference():
    from maemi.evaluate.numeric import measured_numbers

    record = {"conversations": [{"from": "human", "value": "<image>\nq"}, {
        "from": "gpt", "value": "Ratio 0.82 (1 for a random pattern), 104 objects.",
        "template": "Ratio {clark_evans_r} (1 for a random pattern), {object_count} objects.",
        "slots": {"clark_evans_r": "0.82", "object_count": "104"}}]}
    assert measured_numbers(record) == "0.82 ; 104"
    assert numbers(measured_numbers(record)) == [0.82, 104]  # the fixed "1" is not a measurement
    record["conversations"][1] = {"from": "gpt", "value": "Ratio 0.82."}  # free text: nothing is known measured
    assert measured_numbers(record) == ""


def test_word_fidelity_counts_the_measured_words_the_answer_writes():
    from maemi.evaluate.numeric import measured_words, word_fidelity

    record = {"conversations": [{"from": "human", "value": "<image>\nq"}, {
        "from": "gpt", "value": "104 round objects, widely varied in size.",
        "template": "{object_count} {shape} objects, {uniformity}.",
        "slots": {"object_count": "104", "shape": "round", "uniformity": "widely varied in size"}}]}
    words = measured_words(record)
    assert words == ["round", "widely varied in size"]  # the count is a number, not a word
    result = word_fidelity([words, words], ["Round objects, widely varied in size.", "Round, uniform in size."])
    assert result == {"words": 4, "reproduced": 0.75}
    assert word_fidelity([[]], ["anything"]) == {"words": 0, "reproduced": None}
    with pytest.raises(ValueError):
        word_fidelity([words], [])
