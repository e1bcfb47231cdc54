"""few_shot_demos = "vision": the few-shot records' demonstrations chosen again after the warm start by the ViT's cls
embedding with inference's rule, the prompt rebuilt around them, and the choice kept for --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maemi.assistant import Assistant
from maemi.seeds import derived_seed
from maemi.teachers.records import few_shot_prompt, make_record
from maemi.teachers.sampling import few_shot_demos
from maemi.train.config import ConfigError, TrainConfig, load_train_config
from maemi.train.demos import DEMOS_FILE, choose_demos, with_demos
from maemi.train.trainer import train
from test_train import CLASSIFY_QUESTION, make_tiny_inputs, records_for, write_images, write_jsonl
from tiny_text_models import one_thread  # noqa: F401

SHOTS = 2


def few_shot_record(demos: list[tuple[str, str]], query: tuple[str, str]) -> dict:
    return make_record([path for path, _ in demos] + [query[0]],
                       few_shot_prompt(CLASSIFY_QUESTION, [label for _, label in demos]), query[1], task="classify",
                       family="few_shot", length="short", label=query[1], teacher="label",
                       question_key="classify.few_shot")


def wrong_class_records(items: list[tuple[str, str]]) -> list[dict]:
    """One few-shot record per image whose demonstrations all come from other classes (a poor teacher's choice)."""
    return [few_shot_record([other for other in items if other[1] != query[1]][:SHOTS], query) for query in items]


def test_demos_are_the_nearest_other_images_and_the_prompt_follows_them():
    paths = ["a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png"]
    labels = dict(zip(paths, ["a", "a", "a", "b", "b"]))
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    record = few_shot_record([("b/1.png", "b"), ("b/2.png", "b")], ("a/1.png", "a"))
    single = records_for([("a/1.png", "a")])[0]  # not a few-shot record: left as it is

    chosen = choose_demos([record, single], paths, embeddings)
    assert list(chosen) == [record["id"]]
    demos = chosen[record["id"]]
    assert sorted(demos) == ["a/2.png", "a/3.png"]  # the query itself is never its own demonstration
    expected = [paths[i] for i in few_shot_demos(embeddings[0], embeddings, SHOTS, exclude=[0])]
    np.random.default_rng(derived_seed("few-shot-order", "a/1.png")).shuffle(expected)
    assert demos == expected  # the teacher's shuffle, seeded by the query's path
    assert choose_demos([record], paths, embeddings) == chosen

    new, kept = with_demos([record, single], chosen, labels)
    assert kept is single
    assert new["images"] == demos + ["a/1.png"]
    assert new["conversations"][0]["value"] == few_shot_prompt(CLASSIFY_QUESTION, ["a", "a"])
    assert new["conversations"][1:] == record["conversations"][1:] and new["id"] == record["id"]
    assert record["images"][:SHOTS] == ["b/1.png", "b/2.png"]  # the input records are not changed


def test_training_chooses_the_demonstrations_by_the_warm_started_vit(tmp_path):
    tiny = make_tiny_inputs(tmp_path / "inputs")
    items = write_images(tiny.images, 4, seed=2)  # four per class: every query has three of its class to pick from
    data = write_jsonl(tmp_path / "train.jsonl", records_for(items) + wrong_class_records(items))
    flags = ["--max_steps=1", "--warmstart_epochs=12", "--warmstart_lr=1e-2", "--warmstart_batch_size=6",
             "--vision_lr_scale=0", "--few_shot_demos=vision"]
    messages: list[str] = []
    out = tmp_path / "run"
    train(load_train_config(tiny.config, flags), data, None, tiny.images, out, log=messages.append)

    chosen = json.loads((out / DEMOS_FILE).read_text())
    assert len(chosen) == len(items)
    assert any("12 records: 0 with one of another class than the query (the teacher's: 12)" in m for m in messages), messages
    labels = dict(items)
    # The images tell the class (grey levels far apart), so the ViT's neighbours are of the query's class, where the
    # teacher's were all of other classes; and they are the ones inference would pick: the same embedding and rule.
    assistant = Assistant.load(out, device="cpu")
    paths = sorted(labels)
    embeddings = assistant.embed([tiny.images / p for p in paths])
    for record in wrong_class_records(items):
        query = record["images"][-1]
        demos = chosen[record["id"]]
        assert {labels[d] for d in demos} == {labels[query]}
        qi = paths.index(query)
        assert sorted(demos) == sorted(paths[i] for i in few_shot_demos(embeddings[qi], embeddings, SHOTS,
                                                                         exclude=[qi]))

    # --resume takes the choice the run started with, not a new one.
    messages.clear()
    train(load_train_config(tiny.config, [*flags[1:], "--max_steps=2"]), data, None, tiny.images, out, resume=True,
          log=messages.append)
    assert any("as the ViT chose them when this run started" in m for m in messages), messages


def test_vision_demonstrations_need_a_trained_vit(tmp_path):
    tiny = make_tiny_inputs(tmp_path / "inputs")
    items = write_images(tiny.images, 2, seed=2)
    data = write_jsonl(tmp_path / "train.jsonl", records_for(items) + wrong_class_records(items))
    config = load_train_config(tiny.config, ["--max_steps=1", "--warmstart_epochs=0", "--few_shot_demos=vision"])
    with pytest.raises(ConfigError, match="needs a trained ViT"):
        train(config, data, None, tiny.images, tmp_path / "run", log=lambda message: None)
    with pytest.raises(ConfigError, match="few_shot_demos must be teacher or vision"):
        TrainConfig(few_shot_demos="random")
