"""Generation metrics against values counted by hand on fixed strings.

METEOR runs a Java process: it starts once for the whole file (the scorer is a per-process singleton) and the
module-scoped fixture below makes that first start happen once, up front.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from maemi.evaluate import metrics
from maemi.evaluate.metrics import METRICS, generation_metrics, per_sample_scores, tokenize

REF_CAT = "The cat is on the mat."
HYP_CAT = "the cat sat on the mat"
REF_PARTICLES = "A small cluster of round particles"
HYP_PARTICLES = "Round particles, in a cluster."


@pytest.fixture(scope="module")
def cat_and_particles() -> dict:
    """Both worked examples scored in one call; this first call also starts METEOR's JVM."""
    return per_sample_scores([REF_CAT, REF_PARTICLES], [HYP_CAT, HYP_PARTICLES])


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def test_tokenize_lowercases_drops_punctuation_keeps_numbers_and_units():
    assert tokenize("This SEM image shows clusters, magnified 11,000 times.") == [
        "this", "sem", "image", "shows", "clusters", "magnified", "11,000", "times"]
    assert tokenize("Pores of 3.5 nm (about 20%), well-defined; 5.2nm at 45°.") == [
        "pores", "of", "3.5", "nm", "about", "20", "%", "well-defined", "5.2nm", "at", "45", "°"]
    assert tokenize("Rough, don’t you think?") == ["rough", "don't", "you", "think"]


def test_bleu2_worked_example(cat_and_particles):
    # Sample 1. hyp: the cat sat on the mat (6 tokens); ref: the cat is on the mat (6 tokens).
    #   unigrams: the x2 (ref has 2) + cat + on + mat = 5 clipped matches of 6; "sat" unmatched.
    #   bigrams: "the cat", "on the", "the mat" match; "cat sat", "sat on" do not: 3 of 5.
    #   lengths equal: brevity penalty 1.  BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2).
    # Sample 2. hyp: round particles in a cluster (5); ref: a small cluster of round particles (6).
    #   unigrams: round, particles, a, cluster = 4 of 5; bigrams: only "round particles" = 1 of 4.
    #   hyp shorter than ref: brevity penalty exp(1 - 6/5).  BLEU-2 = sqrt(4/5 * 1/4) * exp(-0.2).
    expected = [math.sqrt(5 / 6 * 3 / 5), math.sqrt(4 / 5 * 1 / 4) * math.exp(1 - 6 / 5)]
    np.testing.assert_allclose(cat_and_particles["BLEU-2"], expected, rtol=1e-6)
    # BLEU-4 of sample 1: no 4-gram of the hypothesis (4 of them) is in the reference, so BLEU-4 is ~0.
    assert cat_and_particles["BLEU-4"][0] < 1e-3


def test_rouge_worked_example(cat_and_particles):
    # Sample 1: 5 of 6 unigrams in common, 3 of 5 bigrams; LCS "the cat on the mat" has 5 tokens. P = R everywhere.
    # Sample 2: hyp "round particles in a cluster" (5), ref "a small cluster of round particles" (6).
    #   ROUGE-1: common round, particles, a, cluster = 4: P = 4/5, R = 4/6.
    #   ROUGE-2: common bigram "round particles" only: P = 1/4, R = 1/5.
    #   ROUGE-L: longest common subsequence is "round particles" (or "a cluster"), 2 tokens: P = 2/5, R = 2/6.
    np.testing.assert_allclose(cat_and_particles["ROUGE-1"], [5 / 6, f1(4 / 5, 4 / 6)], rtol=1e-9)
    np.testing.assert_allclose(cat_and_particles["ROUGE-2"], [3 / 5, f1(1 / 4, 1 / 5)], rtol=1e-9)
    np.testing.assert_allclose(cat_and_particles["ROUGE-L"], [5 / 6, f1(2 / 5, 2 / 6)], rtol=1e-9)


def test_meteor_ranks_the_closer_answer_higher(cat_and_particles):
    meteor = cat_and_particles["METEOR"]
    assert 0.0 < meteor[1] < meteor[0] < 1.0


def test_identical_strings_score_top_and_disjoint_strings_zero(cat_and_particles):
    refs = [
        "This SEM image shows clusters of spherical nanoparticles, magnified 11,000 times.",
        "Long fibres cross each other at random angles over a smooth substrate.",
        "Nothing here matches",
        "alpha beta gamma delta",
    ]
    hyps = refs[:2] + ["completely different words", "epsilon zeta eta theta"]
    scores = per_sample_scores(refs, hyps)
    for name in ("BLEU-2", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"):
        np.testing.assert_allclose(scores[name][:2], 1.0, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(scores[name][2:], 0.0, atol=1e-6, err_msg=name)
    assert np.all(scores["METEOR"][:2] > 0.99)
    np.testing.assert_allclose(scores["METEOR"][2:], 0.0, atol=1e-9)
    # CIDEr-D: a hypothesis equal to its reference has cosine 1 at every n-gram order 1..4 (the first two share no
    # n-gram with the other references, so their tf-idf vectors are non-zero), times 10: exactly 10.
    np.testing.assert_allclose(scores["CIDEr"][:2], 10.0, rtol=1e-9)
    np.testing.assert_allclose(scores["CIDEr"][2:], 0.0, atol=1e-9)


def test_an_empty_answer_scores_zero():
    scores = per_sample_scores(["a round particle", "two long wires"], ["", "two long wires"])
    for name in METRICS:
        assert scores[name][0] == pytest.approx(0.0, abs=1e-6), name


def test_groups_split_and_std_across_samples():
    same = "dense clusters of round particles"
    refs = [same, "thin fibres on a film", same, "a porous sponge surface"]
    hyps = [same, "nothing alike here", same, "unrelated text only"]  # samples 0 and 2 right, 1 and 3 wrong
    result = generation_metrics(refs, hyps, groups={"task": ["caption", "vqa", "caption", "vqa"],
                                                    "family": ["basics", "basics", "surface", "surface"]})
    assert result["n"] == 4 and result["overall"]["n"] == 4
    overall = result["overall"]["ROUGE-L"]
    assert overall["mean"] == pytest.approx(0.5) and overall["std"] == pytest.approx(0.5)  # scores 1, 0, 1, 0
    by_task = result["groups"]["task"]
    assert list(by_task) == ["caption", "vqa"] and by_task["caption"]["n"] == 2
    for name in ("BLEU-2", "ROUGE-1", "ROUGE-L", "METEOR"):
        assert by_task["caption"][name]["mean"] > 0.99, name
        assert by_task["caption"][name]["std"] < 1e-6, name
        assert by_task["vqa"][name]["mean"] < 1e-6, name
    by_family = result["groups"]["family"]
    assert by_family["basics"]["ROUGE-1"]["mean"] == pytest.approx(0.5)
    assert by_family["basics"]["ROUGE-1"]["std"] == pytest.approx(0.5)


def test_std_is_the_population_std_of_per_sample_scores(cat_and_particles):
    result = metrics.summarise_scores(cat_and_particles)
    for name in METRICS:
        values = cat_and_particles[name]
        assert result["overall"][name]["mean"] == pytest.approx(values.mean())
        assert result["overall"][name]["std"] == pytest.approx(abs(values[0] - values[1]) / 2)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        generation_metrics(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="no samples"):
        generation_metrics([], [])
    with pytest.raises(ValueError, match=r"sample index \[1\]"):
        generation_metrics(["a b", "?!"], ["a b", "c"])
    with pytest.raises(ValueError, match="group 'task' has 1 values for 2 samples"):
        generation_metrics(["a b", "c d"], ["a b", "c d"], groups={"task": ["vqa"]})


def test_meteor_is_thread_safe(cat_and_particles):
    # _meteor_scores takes already tokenised text, as per_sample_scores passes it
    refs = [" ".join(tokenize(t)) for t in (REF_CAT, REF_PARTICLES)]
    hyps = [" ".join(tokenize(t)) for t in (HYP_CAT, HYP_PARTICLES)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: metrics._meteor_scores(refs, hyps), range(8)))
    for r in results:
        np.testing.assert_allclose(r, cat_and_particles["METEOR"])


def test_meteor_without_java_fails_clearly(monkeypatch, tmp_path, cat_and_particles):
    # A fresh process state (no scorer yet) on a PATH without java; monkeypatch restores the running scorer after.
    monkeypatch.setattr(metrics, "_meteor", None)
    monkeypatch.setattr(metrics, "_meteor_lock", threading.Lock())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(metrics.MeteorUnavailable, match="METEOR needs Java"):
        per_sample_scores(["a b c"], ["a b c"])
