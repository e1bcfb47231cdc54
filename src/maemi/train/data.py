"""Instruction records + images root -> model samples, with seeded augmentation and a deterministic batch order.

Every random choice here is a pure function of (seed, epoch, sample index): the order of an epoch, the augmentation
of a sample. A run resumed mid-epoch, or split over several processes, therefore sees exactly the batches and pixels
that one uninterrupted process would.

Each distinct image is decoded once and kept as its preprocessed tensor (a grey image as one channel: 3x less
memory), and each record is tokenised once; an epoch only re-draws the augmentation.

References: LLaVA's conversation records (Liu et al. 2023); PyTorch's DistributedSampler (shards of one global order).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from maemi.data.images import ImagePreprocessConfig, ImageReadError, load_model_input
from maemi.model.processor import MAEMIProcessor
from maemi.seeds import derived_seed
from maemi.teachers.records import with_measured
from maemi.train.config import AugmentConfig


def seeded_generator(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*key))


def augment_image(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """image [C, S, S] in [-1, 1] -> an augmented copy [C, S, S]. Every draw is made whether or not its switch is on,
    so turning one augmentation off does not change what the others do."""
    u = torch.rand(8, generator=generator).tolist()
    x = image
    size = x.shape[-1]
    if config.crop_min_scale < 1.0:
        scale = config.crop_min_scale + (1.0 - config.crop_min_scale) * u[0]  # area fraction kept
        side = max(1, round(size * math.sqrt(scale)))
        top, left = int(u[1] * (size - side + 1)), int(u[2] * (size - side + 1))
        crop = x[:, top: top + side, left: left + side]
        x = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]  # [C, S, S]
    if config.flips:
        if u[3] < 0.5:
            x = x.flip(-1)
        if u[4] < 0.5:
            x = x.flip(-2)
    if config.rotations:
        x = torch.rot90(x, int(u[5] * 4), dims=(-2, -1))
    if config.contrast > 0:
        factor = 1.0 + config.contrast * (2 * u[6] - 1)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * factor + mean
    if config.brightness > 0:
        x = x + config.brightness * (2 * u[7] - 1)
    return x.clamp(-1.0, 1.0).contiguous()


@dataclass
class Example:
    """One (prompt, answer) pair of a record: the unit of training."""

    record_id: str
    images: list[str]  # paths relative to the images root
    prompt: str
    answer: str
    task: str
    label: object  # str, list of str, or None


def record_examples(record: dict) -> list[Example]:
    """One example per answer turn; later turns see the conversation before them as their prompt. An answer with a
    template is learnt as its template (numbers as {slots}, filled at inference from the image's measurement), with
    the measurement in words in its prompt (records.with_measured)."""
    turns = record["conversations"]
    examples = []
    for i in range(1, len(turns), 2):
        prompt = "\n".join(turn["value"] for turn in turns[:i])
        if "template" in turns[i]:
            prompt = with_measured(prompt, record.get("measured"))
        examples.append(Example(record["id"], list(record["images"]), prompt, answer_text(turns[i]),
                                record["task"], record.get("label")))
    return examples


def answer_text(turn: dict) -> str:
    """What the decoder learns to write for a gpt turn: its template when it has one."""
    return turn.get("template", turn["value"])


class ImageCache:
    """path -> preprocessed model input, decoded once. Unreadable files are remembered with their reason."""

    def __init__(self, root: str | os.PathLike, image_size: int) -> None:
        self.root = Path(root)
        self.preprocess = ImagePreprocessConfig(size=image_size)
        self.tensors: dict[str, torch.Tensor] = {}
        self.errors: dict[str, str] = {}

    def get(self, relpath: str) -> torch.Tensor:
        """[3, S, S]; raises ImageReadError for a file that cannot be read."""
        if relpath in self.errors:
            raise ImageReadError(self.root / relpath, self.errors[relpath])
        if relpath not in self.tensors:
            try:
                x = load_model_input(self.root / relpath, self.preprocess)  # [3, S, S]
            except ImageReadError as error:
                self.errors[relpath] = error.reason
                raise
            self.tensors[relpath] = x[:1].clone() if torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) else x
        return self.tensors[relpath].expand(3, -1, -1)


class InstructionDataset:
    """The usable examples of some records. `skipped` lists (record id, reason) for what had to be left out."""

    def __init__(self, records: Sequence[dict], images: ImageCache, processor: MAEMIProcessor,
                 augment: AugmentConfig | None = None, seed: int = 0, log: Callable[[str], None] = print,
                 name: str = "data") -> None:
        self.images, self.processor, self.augment, self.seed = images, processor, augment, seed
        self.examples: list[Example] = []
        self.tokenized: list[dict[str, torch.Tensor]] = []  # the processor's sample without its images
        self.skipped: list[tuple[str, str]] = []
        for record in records:
            for example in record_examples(record):
                reason = self._add(example)
                if reason:
                    self.skipped.append((example.record_id, reason))
        if self.skipped:
            kinds = Counter(reason.split(":")[0] for _, reason in self.skipped)
            log(f"{name}: skipped {len(self.skipped)} example(s) of {len(self.skipped) + len(self.examples)}: "
                + "; ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
            for record_id, reason in self.skipped[:5]:
                log(f"  {record_id}: {reason}")
            if len(self.skipped) > 5:
                log(f"  ... {len(self.skipped) - 5} more")

    def _add(self, example: Example) -> str | None:
        try:
            for path in example.images:
                self.images.get(path)  # decoded once here; the batches stack them per step
        except ImageReadError as error:
            return f"unreadable image: {error}"
        try:
            sample = self.processor.encode_text(example.prompt, example.answer, len(example.images))
        except ValueError as error:  # over-long prompt or answer, <image> count that does not match the images
            return f"refused by the processor: {error}"
        self.examples.append(example)
        self.tokenized.append(sample)
        return None

    def __len__(self) -> int:
        return len(self.examples)

    def sample(self, draw: int, epoch: int) -> dict[str, torch.Tensor]:
        """Processor sample of a draw (epoch_pool: example `draw % len(self)`, its `draw // len(self)`-th repeat),
        augmented as epoch `epoch` draws it (no augmentation when off). The augmentation is seeded by the draw, so
        the repeats of an example within an epoch are different views of it."""
        index = draw % len(self.examples)
        pixels = [self.images.get(path) for path in self.examples[index].images]
        if self.augment is not None:
            generator = seeded_generator("augment", self.seed, epoch, draw)
            pixels = [augment_image(x, self.augment, generator) for x in pixels]
        return {**self.tokenized[index], "images": torch.stack(pixels)}  # images [M, 3, S, S]

    def batch(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        return self.processor.collate([self.sample(i, epoch) for i in indices])

    def target_tokens(self, draws: Sequence[int]) -> int:
        return sum(len(self.tokenized[d % len(self.examples)]["labels"]) for d in draws)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The global shuffled order of epoch `epoch`: the same in every process and after any resume."""
    return torch.randperm(n, generator=seeded_generator("order", seed, epoch)).tolist()


def epoch_pool(dataset: InstructionDataset, classify_repeat: int) -> list[int]:
    """The draws one epoch makes: each example once, classification examples `classify_repeat` times. They are 2 of
    ~50 examples per image in the teachers' mixture, yet the only ones whose answer is the image's class alone. The
    k-th repeat of example i is draw i + k * len(dataset) (dataset.sample), so that each repeat is augmented anew."""
    n = len(dataset)
    classify = [i for i, example in enumerate(dataset.examples) if example.task == "classify"]
    return list(range(n)) + [i + k * n for k in range(1, classify_repeat) for i in classify]


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i: i + size]) for i in range(0, len(items), size)]


@dataclass
class StepPlan:
    """The micro-batches one process runs for one optimizer step, each with its loss weight.

    A step's samples (batch_size of the global order) are cut into micro-batches; process r of W takes micro-batches
    r, r+W, ... Micro-batch j's mean loss is weighted by n_j / N (its share of the step's N samples) times W (DDP
    averages gradients over W processes), so the summed gradient is the same for any W and any micro_batch. A
    process left without a micro-batch (a short last step) runs the first one at weight 0: DDP needs every process
    in every gradient all-reduce."""

    micro_batches: list[list[int]]
    weights: list[float]
    step_samples: int


def plan_step(step_indices: Sequence[int], micro_batch: int, rank: int, world_size: int) -> StepPlan:
    micro = chunks(step_indices, micro_batch)
    mine = micro[rank::world_size]
    weights = [len(m) * world_size / len(step_indices) for m in mine]
    if not mine:
        mine, weights = [micro[0]], [0.0]
    return StepPlan(mine, weights, len(step_indices))
