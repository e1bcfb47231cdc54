"""Question profiles: the paper's ten SEM families with every sub-question, dataset profiles, the reply check."""

from __future__ import annotations

import pytest

from maemi.teachers.questions import (COT_INSTRUCTION, PROFILES, TASKS, Question, TeacherReply, TeacherReplyError,
                                      check_reply, get_profile)

SEM_FAMILIES = {  # family -> number of sub-questions in the paper
    "basics": 2, "morphology": 3, "size_distribution": 3, "surface": 2, "composition": 2,
    "interactions": 2, "environment": 2, "technique": 2, "functional": 2, "application": 2,
}


def test_sem_profile_has_the_ten_families_with_every_sub_question_plus_caption_and_classify():
    sem = get_profile("sem")
    counts: dict[str, int] = {}
    for q in sem.questions:
        counts[q.family] = counts.get(q.family, 0) + 1
    # plus the count-and-size question a microscopist asks first (not in the paper's list)
    assert counts == {**SEM_FAMILIES, "size_distribution": 4, "caption": 1, "classify": 1}
    assert sem.question("size_distribution.count").text.startswith("How many")
    assert sem.classify_question.text == "What category of nanomaterial does this image show?"
    assert sem.question("caption.describe").text.startswith("Describe this")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_is_well_formed(name):
    p = get_profile(name)
    keys = [q.key for q in p.questions]
    assert len(keys) == len(set(keys)), "question keys must be unique"
    assert {q.task for q in p.questions} == {"caption", "vqa", "classify"}
    for q in p.questions + tuple(p.compare_questions.values()):
        assert q.task in TASKS and q.text.endswith(("?", ".")) and q.key.startswith(q.family.split(".")[0])
        assert "<image>" not in q.text
    assert set(p.compare_questions) == {"inter_class", "intra_class", "spatial"}
    assert all(q.task == "compare" for q in p.compare_questions.values())


def test_dataset_profiles_ask_the_papers_questions():
    neu = " ".join(q.text for q in get_profile("neu").questions).lower()
    for phrase in ("central feature", "contrast between", "orientation of the scratch", "centralised or dispersed",
                   "well-defined boundaries", "bright, dark or neutral"):
        assert phrase in neu
    assert "d1654" in " ".join(q.text for q in get_profile("cmi").questions).lower()
    kth = " ".join(q.text for q in get_profile("kth").questions).lower()
    assert all(w in kth for w in ("material", "colour", "pattern", "uniform", "lit"))


def test_unknown_profile_error_lists_the_names():
    with pytest.raises(ValueError, match="sem, neu, kth, cmi, generic"):
        get_profile("tem")


def test_cot_instruction_asks_to_think_step_by_step_and_for_both_lengths():
    assert "step by step" in COT_INSTRUCTION and "short" in COT_INSTRUCTION and "long" in COT_INSTRUCTION


def test_check_reply_names_the_missing_or_empty_answer():
    qs = [Question("a.x", "a", "X?", "vqa"), Question("a.y", "a", "Y?", "vqa")]
    check_reply(TeacherReply({"a.x": {"short": "s", "long": "l"}, "a.y": {"short": "s", "long": "l"}}), qs)
    with pytest.raises(TeacherReplyError, match="no answer for question 'a.y'"):
        check_reply(TeacherReply({"a.x": {"short": "s", "long": "l"}}), qs)
    with pytest.raises(TeacherReplyError, match="'a.x': the long answer"):
        check_reply(TeacherReply({"a.x": {"short": "s", "long": " "}, "a.y": {"short": "s", "long": "l"}}), qs)
