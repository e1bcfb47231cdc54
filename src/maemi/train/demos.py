"""Few-shot training records with their demonstrations chosen again by the warm-started ViT (`few_shot_demos =
"vision"`).

`maemi teach` runs before there is a model, so it picks each few-shot record's K demonstrations by a handcrafted
embedding (teachers.sampling). Inference picks them by the ViT's cls embedding (Assistant.demonstrations, RICES), which
after the warm start separates the classes far better: on NEU-SDD, 178 of the teacher's 600 training records hold a
demonstration of another class than the query, 6 under the warm-started ViT (seed 0). Trained on the teacher's, the
decoder learnt to leave demonstrations aside: a test image whose five ViT neighbours were four of its class got the
zero-shot answer anyway (README, NEU-SDD benchmark). Chosen again here by the same embedding and rule as at inference
(the K most similar other labelled training images), the demonstrations the decoder learns from are as good as those it
will be given. Their order is shuffled as the teacher's is, seeded by the query's path.

The choice is written to the run folder (few_shot_demos.json) and read back on --resume: a ViT that goes on learning
during instruction tuning would otherwise give other neighbours after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from maemi.data.images import ImageReadError
from maemi.fileio import atomic_write_json
from maemi.model import IMAGE_TOKEN
from maemi.model.vision import VisionEncoder
from maemi.seeds import derived_seed
from maemi.teachers.records import demonstration_labels, few_shot_prompt
from maemi.teachers.sampling import few_shot_demos
from maemi.train.data import ImageCache, chunks

DEMOS_FILE = "few_shot_demos.json"


def is_few_shot(record: dict) -> bool:
    return record["family"] == "few_shot" and record["task"] == "classify" and len(record["images"]) > 1


def support_pool(records: Sequence[dict], cache: ImageCache) -> tuple[list[str], list[str]]:
    """The labelled training images demonstrations come from, as at inference (Assistant.support_set): the images of
    single-image records with a class label, sorted, the unreadable ones left out."""
    labels = demonstration_labels(records)
    paths = []
    for path in sorted(labels):
        try:
            cache.get(path)
        except ImageReadError:
            continue  # the instruction dataset reports it
        paths.append(path)
    return paths, [labels[p] for p in paths]


@torch.no_grad()
def cls_embeddings(vision: VisionEncoder, paths: Sequence[str], cache: ImageCache, device: torch.device,
                   batch_size: int) -> np.ndarray:
    """[N, Dv] L2-normalised cls embeddings in float32 and eval mode, as Assistant.embed computes them."""
    was_training = vision.training
    vision.eval()
    rows = []
    for batch in chunks(list(paths), batch_size):
        cls = vision(torch.stack([cache.get(p) for p in batch]).to(device))[1]
        rows.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy())
    vision.train(was_training)
    return np.concatenate(rows) if rows else np.zeros((0, vision.config.dim), dtype=np.float32)


def choose_demos(records: Sequence[dict], paths: Sequence[str], embeddings: np.ndarray) -> dict[str, list[str]]:
    """record id -> its new demonstrations (image paths, in prompt order), for every few-shot record whose query is
    among `paths` (the support pool, with its embeddings [N, D])."""
    position = {path: i for i, path in enumerate(paths)}
    chosen: dict[str, list[str]] = {}
    for record in records:
        query = record["images"][-1]
        shots = len(record["images"]) - 1
        if not is_few_shot(record) or query not in position or len(paths) <= shots:
            continue
        qi = position[query]
        demos = [paths[i] for i in few_shot_demos(embeddings[qi], embeddings, shots, exclude=[qi])]
        np.random.default_rng(derived_seed("few-shot-order", query)).shuffle(demos)  # as the teacher orders them
        chosen[record["id"]] = demos
    return chosen


def with_demos(records: Sequence[dict], chosen: dict[str, list[str]], labels: dict[str, str]) -> list[dict]:
    """The records with each chosen few-shot record's images and prompt rebuilt around its new demonstrations (the
    question and the answer stay as they were)."""
    out = []
    for record in records:
        demos = chosen.get(record["id"])
        if demos is None:
            out.append(record)
            continue
        question = record["conversations"][0]["value"].rsplit(IMAGE_TOKEN, 1)[1].strip()
        prompt = few_shot_prompt(question, [labels[p] for p in demos])
        conversations = [{**record["conversations"][0], "value": prompt}, *record["conversations"][1:]]
        out.append({**record, "images": [*demos, record["images"][-1]], "conversations": conversations})
    return out


def few_shot_demos_by_vision(records: Sequence[dict], vision: VisionEncoder, cache: ImageCache, device: torch.device,
                             batch_size: int, out: Path, resuming: bool, write: bool,
                             log: Callable[[str], None] = print) -> list[dict]:
    """The training records with the few-shot demonstrations chosen by `vision`, or, when `resuming` from a checkpoint,
    as out/few_shot_demos.json says they were chosen when the run started. `write`: this process writes that file."""
    paths, labels = support_pool(records, cache)
    label_of = dict(zip(paths, labels))
    file = out / DEMOS_FILE
    if resuming and file.is_file():
        chosen = json.loads(file.read_text())
        log(f"few-shot demonstrations: {len(chosen)} records as the ViT chose them when this run started ({file})")
    else:
        chosen = choose_demos(records, paths, cls_embeddings(vision, paths, cache, device, batch_size))
        if write:
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(file, chosen)

        def strays(record: dict, demos: Sequence[str]) -> bool:  # a demonstration of another class than the query's
            return any(label_of.get(p) != record.get("label") for p in demos)

        fewshot = [r for r in records if r["id"] in chosen]
        log(f"few-shot demonstrations chosen again by the warm-started ViT for {len(chosen)} records: "
            f"{sum(strays(r, chosen[r['id']]) for r in fewshot)} with one of another class than the query "
            f"(the teacher's: {sum(strays(r, r['images'][:-1]) for r in fewshot)})")
    return with_demos(records, chosen, label_of)
