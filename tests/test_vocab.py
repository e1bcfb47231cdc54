"""AnswerVocab: exact round trip for any string (case, numbers, units, unicode, special-token text), save/load."""

from __future__ import annotations

import random

import pytest

from maemi.model import AnswerVocab

ANSWERS = ["This SEM image shows clusters of spherical nanoparticles, magnified 11,000 times.",
           "Nanowires about 50 nm wide; scale bar 1 µm.", "TEM", "Rating 7 (ASTM-D1654)."] * 3


@pytest.fixture(scope="module")
def vocab() -> AnswerVocab:
    return AnswerVocab.train(ANSWERS, vocab_size=320)


def test_round_trip_is_exact_for_any_string(vocab):
    rng = random.Random(0)
    alphabet = "abcXYZ 0123,.;:nmµÅ°\n\t  -_<>/éü中😀"
    strings = ANSWERS + ["", " ", "  leading and trailing  ", "<eos> typed <pad> as text<bos>", "SEM\nTEM"]
    strings += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    for text in strings:
        assert vocab.decode(vocab.encode(text)) == text


def test_specials_are_distinct_ids_and_typed_specials_stay_text(vocab):
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    ids = vocab.encode("<eos>")
    assert vocab.eos_id not in ids and len(ids) > 1


def test_decode_stops_at_eos_and_drops_bos(vocab):
    ids = [vocab.bos_id] + vocab.encode("11,000 nm") + [vocab.eos_id] + vocab.encode("junk")
    assert vocab.decode(ids) == "11,000 nm"


def test_training_learns_merges_for_frequent_answers(vocab):
    assert len(vocab.encode("magnified 11,000 times")) < len("magnified 11,000 times".encode())


def test_save_load_gives_the_same_ids(vocab, tmp_path):
    vocab.save(tmp_path / "tokenizer.json")
    loaded = AnswerVocab.load(tmp_path / "tokenizer.json")
    assert loaded.size == vocab.size
    for text in ANSWERS + ["<eos>"]:
        assert loaded.encode(text) == vocab.encode(text)


def test_broken_file_is_named_in_the_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        AnswerVocab.load(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        AnswerVocab.load(tmp_path / "missing.json")
