"""Using a trained MAEMI: ask, caption and classify micrographs in batches. The one inference API behind the CLI, the
evaluation, the server and folder screening.

A run directory (`maemi train --out runs/NAME`) holds the best model (MAEMI.save_pretrained) and run.json: the
images root, the training records, the classes with the answer text each class was trained with, and the human text
of the classify and caption questions. `Assistant.load(run)` puts the model in eval mode with every DyLoRA adapter at
r_max.

Prompts are built as the training records are, so the model sees at inference what it learnt from:
- a question about N images: one `<image>` per image, then the user's auxiliary description ("Context: ...") as the
  paper's multimodal prompt has it, then the question;
- zero-shot classification: `<image>\\n` + the classify question; the class answers are ranked by the summed
  log-likelihood of each (model.score), and a softmax over those gives probabilities;
- few-shot classification with K shots: demonstrations are the K support images whose cls embedding is most
  cosine-similar to the query's, most similar last (RICES), interleaved exactly as the teacher's few-shot records
  (`teachers.records.few_shot_prompt`).

References: Srinivas et al. 2024 (MAEMI: multimodal prompts, few-shot by cls-embedding similarity); open_flamingo's
RICES (L2-normalised features, top-k, most similar demonstration last); LLaVA users' most wanted: batch inference.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from skimage.color import rgb2gray
from tqdm import tqdm

from maemi.data.datasets import metadata_for, scan_dataset
from maemi.data.images import (ImagePreprocessConfig, ImageReadError, crop_info_bar, load_grey, load_model_input,
                               to_model_input)
from maemi.evaluate.calibration import probabilities
from maemi.evaluate.familiarity import Familiarity, flag
from maemi.measure.field_notes import field_notes
from maemi.measure.measurements import DEFAULT_SEGMENTER, SEGMENTERS
from maemi.measure.scale import TILT_NOTE_DEG
from maemi.measure.slots import fill
from maemi.model import IMAGE_TOKEN, MAEMI, GenerationConfig
from maemi.teachers.measure import (OBJECT_SLOTS, ImageFacts, MeasuredImage, compare_values, measure_in_parallel,
                                    measure_pixels, measured_context, measured_file)
from maemi.teachers.records import asked, demonstration_labels, few_shot_prompt, read_records, with_measured
from maemi.teachers.sampling import few_shot_demos, image_statistics

RUN_FILE = "run.json"
CALIBRATION_FILE = "calibration.json"

# A path to an image file, a loaded image (H, W) or (H, W, 3) (uint8, or float in [0, 1]), or a model input tensor
# [3, S, S] already preprocessed (the evaluation caches those).
ImageInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]


class RunError(ValueError):
    """A run directory that cannot be used: run.json missing or lacking what a method needs."""


def question_prompt(n_images: int, question: str, context: str | None = None) -> str:
    """One `<image>` per image, the optional context, then the question (make_record's layout, plus context). A
    question that places its own `<image>` tokens is kept as written."""
    context_line = f"Context: {context.strip()}\n" if context and context.strip() else ""
    if IMAGE_TOKEN in question:
        return context_line + question
    return f"{IMAGE_TOKEN}\n" * n_images + context_line + question


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_run(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{path}: no such file; is {run_dir} a run directory written by `maemi train`?")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(run, dict):
        raise RunError(f"{path}: expected a JSON object")
    return run


DIHEDRAL_VIEWS = 8  # the symmetries of the square: a micrograph has no canonical orientation


def dihedral_view(image: torch.Tensor, k: int) -> torch.Tensor:
    """View k (0-7) of an image [..., S, S]: k % 4 quarter turns, then a mirror for k >= 4. View 0 is the image."""
    if not 0 <= k < DIHEDRAL_VIEWS:
        raise ValueError(f"view must be in [0, {DIHEDRAL_VIEWS}), got {k}")
    x = torch.rot90(image, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def _is_one_image(x: object) -> bool:
    return isinstance(x, (str, os.PathLike, np.ndarray, torch.Tensor, PreparedImage))


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


def pixel_statistics(pixels: np.ndarray) -> np.ndarray:
    """image_statistics of decoded pixels (grey or colour, uint8 or float in [0, 1]), info bar cropped."""
    pixels = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
    grey = rgb2gray(pixels).astype(np.float32) if pixels.ndim == 3 else pixels
    return image_statistics(crop_info_bar(grey))


def file_statistics(path: str | os.PathLike) -> np.ndarray:
    """pixel_statistics of an image file, read grey: what the familiarity check compares."""
    return pixel_statistics(load_grey(path))


def measurement_record(facts: ImageFacts | str) -> dict:
    """What an answer's numbers come from, per image: the measured values (as answers write them), the scale with
    its source and the segmenter that found the objects; or {"error": why the image could not be measured}."""
    if isinstance(facts, str):
        return {"error": facts}
    return {"values": dict(facts.values), "scale": facts.scale.to_dict() if facts.scale else None,
            "segmenter": facts.m.segmenter, "phase_separation": round(facts.m.phase_separation, 2),
            "objects_uncertain": facts.m.objects_uncertain, "empty_fraction": round(facts.m.empty_fraction, 3),
            "unlit_fraction": round(facts.m.unlit_fraction, 3), "black_fraction": round(facts.m.black_fraction, 3),
            "clipped_fraction": round(facts.m.clipped_fraction, 3),
            "notes": field_notes(vars(facts.m))}


def objects_caveat(used: Iterable[str], per_image: Sequence[dict]) -> str | None:
    """What an answer must add when it quotes a count or size of objects that its image does not separate from the
    background (Measurements.objects_uncertain): such numbers may be far off, and the reader is told so."""
    uncertain = {i + 1 for i, m in enumerate(per_image) if m.get("objects_uncertain")}
    quoted = {int(name.partition("#")[2] or 1) for name in used if name.partition("#")[0] in OBJECT_SLOTS}
    if not uncertain & quoted:
        return None
    where = "this image" if len(per_image) == 1 else "image " + ", ".join(str(i) for i in sorted(uncertain & quoted))
    return (f"(Uncertain: the objects of {where} do not stand apart from the background by grey level, so their "
            f"counts and sizes may be far off.)")


# The slots that are shares of the field's area: where part of the field is left out (Measurements.empty_fraction:
# vacuum beyond a support film; unlit_fraction: the dark beyond the illumination's edge), shares of the rest; where
# black at the field's edge was measured as field (black_fraction: vacuum that was not found?), of the whole field.
AREA_SLOTS = frozenset({"area_fraction", "background_fraction", "coverage"})
AREA_CAVEATS = (
    ("empty_fraction", "of the support film: the vacuum beyond it is left out"),
    ("unlit_fraction", "of the lit field: the dark beyond the edge of the illumination is left out"),
    ("black_fraction", "of the whole field, with the black at its edge: if that is vacuum, not of the support"))


def area_caveat(used: Iterable[str], per_image: Sequence[dict]) -> str | None:
    """What an answer must add when it quotes an area fraction of an image part of whose field was left out (a
    holey or lacey film, or one that ends in the field; a TEM beam that does not fill the camera), which is then of
    the rest, or whose black edge was measured as field. No number in it, so a reference answer with it scores the
    same numbers (evaluate.as_the_assistant_says_it)."""
    quoted = {int(name.partition("#")[2] or 1) for name in used if name.partition("#")[0] in AREA_SLOTS}
    found = []
    for key, what in AREA_CAVEATS:
        images = sorted({i + 1 for i, m in enumerate(per_image) if m.get(key)} & quoted)
        if images:
            where = "this image" if len(per_image) == 1 else "image " + ", ".join(str(i) for i in images)
            found.append(f"(The area fractions of {where} are {what}.)")
    return " ".join(found) or None


# The slots that are lengths in the specimen's surface: on a tilted stage those across the tilt axis read short
LENGTH_SLOTS = frozenset({"diameter_mean", "diameter_std", "diameter_min", "diameter_max", "width_mean", "length_mean",
                          "nn_distance_mean", "fibre_diameter"})


def tilt_caveat(used: Iterable[str], per_image: Sequence[dict]) -> str | None:
    """What an answer must add when it quotes a length measured on an image whose stage was tilted (from
    TILT_NOTE_DEG) without the instrument's tilt correction, or with none stated: lengths across the tilt axis read
    cos(tilt) of their size. No number in it (the scale's notes in the measurement record have the angle and the
    factor), as area_caveat."""
    quoted = {int(name.partition("#")[2] or 1) for name in used if name.partition("#")[0] in LENGTH_SLOTS}
    images = sorted({i + 1 for i, m in enumerate(per_image) if _tilted_uncorrected(m.get("scale"))} & quoted)
    if not images:
        return None
    where = "this image" if len(per_image) == 1 else "image " + ", ".join(str(i) for i in images)
    return (f"(The stage was tilted for {where}, and no tilt correction was applied or stated: lengths across the "
            "tilt axis read short, by the cosine of the tilt.)")


def _tilted_uncorrected(scale: dict | None) -> bool:
    tilt = (scale or {}).get("stage_tilt_deg")
    return tilt is not None and abs(tilt) >= TILT_NOTE_DEG and not scale.get("tilt_corrected")


def caveats(used: Iterable[str], per_image: Sequence[dict]) -> str | None:
    """Every caveat an answer quoting the slots `used` must carry, in one string (None when there is none)."""
    used = list(used)
    found = [c for c in (objects_caveat(used, per_image), area_caveat(used, per_image), tilt_caveat(used, per_image))
             if c]
    return " ".join(found) or None


def _facts_or_reason(measure: Callable[[], MeasuredImage], metadata: dict | None = None, name: str = "the image"
                     ) -> ImageFacts | str:
    try:
        measured = measure()
    except (ImageReadError, ValueError) as error:
        return f"{name} could not be measured: {error}"
    return ImageFacts.unlabelled(measured, metadata)


@dataclass
class SupportSet:
    """Labelled images for few-shot demonstrations, with their cls embeddings (rows L2-normalised)."""

    paths: list[Path]
    labels: list[str]
    embeddings: np.ndarray  # [N, Dv]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


@dataclass
class Answer:
    """One answer with its provenance: which measured value each number came from."""

    text: str  # the answer, its slots filled
    template: str  # as the decoder wrote it: {slot} where a measured value goes (maemi.measure.slots)
    slots: dict[str, str]  # slot -> the value written in its place
    missing: list[str]  # slots the measurement could not fill: written "unknown", never a made-up number
    measurements: list[dict]  # per image: measurement_record
    warning: str | None = None  # set when an image is unlike the training images (ask_detailed)

    def to_dict(self) -> dict:
        return {"answer": self.text, "template": self.template,
                "numbers": [{"slot": name, "value": value} for name, value in self.slots.items()],
                "unknown": self.missing, "measurements": self.measurements, "warning": self.warning}


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image as model input and its measurement, made in a request thread (the server) so that the model
    thread only runs the model."""

    tensor: torch.Tensor
    facts: ImageFacts | str  # the measurement, or why there is none
    statistics: np.ndarray | None = None  # teachers.sampling.image_statistics, for the familiarity score


class Assistant:
    def __init__(self, model: MAEMI, run: dict, run_dir: Path, batch_size: int = 16, image_cache: int = 1024,
                 segmenter: str = DEFAULT_SEGMENTER) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter {segmenter!r}: choose from {', '.join(SEGMENTERS)}")
        self.segmenter = segmenter  # what finds the objects the answers count (maemi.measure.measurements.segment)
        self.model = model.eval()
        model.text.use_full_rank()  # DyLoRA adapters at full rank for inference
        self.run, self.run_dir, self.batch_size = run, Path(run_dir), batch_size
        self.image_config = ImagePreprocessConfig(size=model.config.vision.image_size)
        self._supports: dict[str, SupportSet] = {}
        # Keyed by (path, mtime, size) so a file rewritten in place is read again (a long-lived server).
        self._cached_file = functools.lru_cache(maxsize=image_cache)(self._read_file)
        self._cached_facts = functools.lru_cache(maxsize=image_cache)(self._measure_file)
        self._measured_ahead: dict[tuple[str, int, int], ImageFacts] = {}  # measure_ahead, until first asked for
        self._cached_statistics = functools.lru_cache(maxsize=image_cache)(
            lambda path, mtime_ns, size: file_statistics(path))

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str | torch.device = "auto", batch_size: int = 16,
             text_path: str | os.PathLike | None = None, segmenter: str = DEFAULT_SEGMENTER) -> Assistant:
        """The run's best model on `device` ("auto": CUDA when available), ready for inference."""
        run = read_run(run_dir)
        model = MAEMI.from_pretrained(run_dir, text_path=text_path, map_location=resolve_device(device))
        return cls(model, run, Path(run_dir), batch_size=batch_size, segmenter=segmenter)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def run_value(self, key: str) -> object:
        """A run.json value a method needs; RunError naming the file and key if it is missing or empty."""
        value = self.run.get(key)
        if value in (None, "", [], {}):
            raise RunError(f"{self.run_dir / RUN_FILE}: no {key!r}; the run was trained without the records it needs")
        return value

    @property
    def classes(self) -> list[str]:
        return list(self.run_value("classes"))

    def class_answer(self, label: str) -> str:
        """The answer text a class was trained with (the label itself unless run.json says otherwise)."""
        return (self.run.get("class_answers") or {}).get(label, label)

    # -------------------------------------------------------------------------------------------------- images

    def _read_file(self, path: str, mtime_ns: int, size: int) -> torch.Tensor:
        return load_model_input(path, self.image_config)

    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """Model input [3, S, S] in [-1, 1]. Raises ImageReadError naming the file for an unreadable one."""
        if isinstance(image, PreparedImage):
            return image.tensor
        if isinstance(image, torch.Tensor):
            expected = (self.model.config.vision.channels, self.image_config.size, self.image_config.size)
            if tuple(image.shape) != expected or not torch.is_floating_point(image):
                raise ValueError(f"an image tensor must be a preprocessed float [3, S, S] = {list(expected)}, got "
                                 f"{image.dtype} {list(image.shape)}")
            return image
        if isinstance(image, np.ndarray):
            pixels = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
            return to_model_input(pixels, self.image_config)
        path = Path(image)
        try:
            stat = path.stat()
        except OSError:
            return load_model_input(path, self.image_config)  # raises ImageReadError with the file and the cause
        return self._cached_file(str(path), stat.st_mtime_ns, stat.st_size)

    # -------------------------------------------------------------------------------------------------- measuring

    def prepare(self, pixels: np.ndarray, path: str | os.PathLike | None = None, metadata: dict | None = None
                ) -> PreparedImage:
        """A decoded image (H, W) or (H, W, 3), uint8 or float in [0, 1]: model input and measurement (`path`, the
        file it was decoded from, for the instrument's scale in its metadata; `metadata`, its metadata.jsonl row)."""
        pixels = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
        name = Path(path).name if path else "the image"
        facts = self._take_measured_ahead(path, metadata) or _facts_or_reason(
            lambda: measure_pixels(pixels, Path(path) if path else None, metadata, segmenter=self.segmenter),
            metadata, name)
        # the image statistics only for a calibrated run: nothing else uses them
        statistics = pixel_statistics(pixels) if self.familiarity is not None else None
        return PreparedImage(to_model_input(pixels, self.image_config), facts, statistics)

    def measure_ahead(self, images: Sequence[str | os.PathLike]) -> None:
        """Measure many image files at once, in worker processes (maemi.cpu.worker_count: one per core where each
        gets enough images), for the answers about them to come (maemi eval: the test images, maemi screen: the
        batches ahead). A file that cannot be measured is left to image_facts, which says why."""
        todo = {}
        for image in images:
            try:
                stat = Path(image).stat()
            except OSError:
                continue
            todo.setdefault((str(image), stat.st_mtime_ns, stat.st_size), metadata_for(image))
        todo = {key: metadata for key, metadata in todo.items() if key not in self._measured_ahead}
        keys = list(todo)
        measured = measure_in_parallel([(Path(k[0]), todo[k]) for k in keys], segmenter=self.segmenter)
        for key, (_, result) in zip(keys, measured):
            if result is not None:
                self._measured_ahead[key] = ImageFacts.unlabelled(result[0], todo[key])

    def _take_measured_ahead(self, path: str | os.PathLike | None, metadata: dict | None) -> ImageFacts | None:
        """What measure_ahead measured of this file, if it measured it with this metadata (once: it is then dropped)."""
        if not path:
            return None
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        ahead = self._measured_ahead.pop((str(path), stat.st_mtime_ns, stat.st_size), None)
        return ahead if ahead is not None and ahead.metadata == dict(metadata or {}) else None

    def _measure_file(self, path: str, mtime_ns: int, size: int) -> ImageFacts | str:
        ahead = self._measured_ahead.pop((path, mtime_ns, size), None)
        if ahead is not None:
            return ahead
        metadata = metadata_for(path)
        return _facts_or_reason(lambda: measured_file(Path(path), metadata, self.segmenter)[0], metadata,
                                Path(path).name)

    def image_facts(self, image: ImageInput) -> ImageFacts | str:
        """The measurement of an image (the teacher's: maemi.teachers.measure, with the scale of maemi.measure.scale
        and the metadata.jsonl row of a file when one lists it), once per image; or why it could not be measured."""
        if isinstance(image, PreparedImage):
            return image.facts
        if isinstance(image, torch.Tensor):
            return "a preprocessed image tensor cannot be measured"
        if isinstance(image, np.ndarray):
            return self.prepare(image).facts
        path = Path(image)
        try:
            stat = path.stat()
        except OSError as error:
            return f"{path.name} could not be measured: {error.strerror or error}"
        return self._cached_facts(str(path), stat.st_mtime_ns, stat.st_size)

    @property
    def measured_answers(self) -> bool:
        """Whether the run learnt answers as templates with the measurement in the prompt."""
        return bool(self.run.get("measured_answers"))

    # -------------------------------------------------------------------------------------------------- generation

    def answer(self, items: Sequence[tuple[Sequence[ImageInput], str]], gen: GenerationConfig | None = None,
               progress: bool = False) -> list[str]:
        """(images, prompt with one <image> per image) -> the generated answer, for each item, in batches."""
        return [a.text for a in self.answer_detailed(items, gen, progress)]

    def answer_detailed(self, items: Sequence[tuple[Sequence[ImageInput], str]], gen: GenerationConfig | None = None,
                        progress: bool = False) -> list[Answer]:
        """answer() with provenance. A run trained on measured answers measures the images of each item, puts the
        measurement in words into the prompt as training did, and fills the slots of the template the decoder
        writes from the measured values; every number that states a measurement is then the measurement's."""
        gen = gen or GenerationConfig(max_new_tokens=self.model.config.decoder.max_len)
        processor = self.model.processor
        answers: list[Answer] = []
        bar = tqdm(total=len(items), desc="answer", unit="q", disable=not progress)
        for chunk in _batches(items, self.batch_size):
            measured = [self.measure_item(images) for images, _ in chunk]
            samples = [processor([self.image_tensor(x) for x in images], with_measured(prompt, words))
                       for (images, prompt), (words, _, _) in zip(chunk, measured)]
            for template, (_, values, per_image) in zip(self.model.generate(processor.collate(samples), gen), measured):
                filled = fill(template, values)
                text = filled.text
                errors = [m["error"] for m in per_image if "error" in m]
                if errors:  # the answer says so, and no number in it stands for a measurement
                    text += f" (Not measured: {'; '.join(errors)}.)"
                elif filled.missing:  # say why a number is "unknown" rather than leave the reader to guess
                    text += f" (Unknown: no {', '.join(s.replace('_', ' ') for s in filled.missing)} on this image.)"
                caveat = None if errors else caveats(filled.used, per_image)
                if caveat:
                    text += " " + caveat
                answers.append(Answer(text, template, filled.used, filled.missing, per_image))
            bar.update(len(chunk))
        bar.close()
        return answers

    def measure_item(self, images: Sequence[ImageInput]) -> tuple[str | None, dict[str, str], list[dict]]:
        """(the measurement in words for the prompt, the slot values, per image what was measured) of one item."""
        if not self.measured_answers:
            return None, {}, []
        facts = [self.image_facts(x) for x in images]
        per_image = [measurement_record(f) for f in facts]
        if not all(isinstance(f, ImageFacts) for f in facts):
            errors = "; ".join(f for f in facts if isinstance(f, str))
            return f"nothing: {errors}", {}, per_image
        if len(facts) == 1:
            return measured_context(facts), facts[0].values, per_image
        facts = [dataclasses.replace(f, index=i + 1) for i, f in enumerate(facts)]
        return measured_context(facts), compare_values(facts), per_image

    def ask(self, images: ImageInput | Sequence[ImageInput | Sequence[ImageInput]], question: str,
            context: str | None = None, gen: GenerationConfig | None = None, progress: bool = False,
            detail: bool = False) -> list[str]:
        """One answer per query. `images`: one image (one query), a list of images (one query each) or a list of
        lists (each inner list is one query about several images, e.g. a comparison). `detail`: the long answer
        (the teacher's answers come short and long; the long one is asked for with records.DETAIL_INSTRUCTION)."""
        return [a.text for a in self.ask_detailed(images, question, context, gen, progress, detail)]

    def ask_detailed(self, images: ImageInput | Sequence[ImageInput | Sequence[ImageInput]], question: str,
                     context: str | None = None, gen: GenerationConfig | None = None, progress: bool = False,
                     detail: bool = False) -> list[Answer]:
        """ask() with each answer's provenance (Answer)."""
        if not question or not question.strip():
            raise ValueError("ask: the question is empty")
        question = asked(question.strip(), "long") if detail else question
        queries = [[images]] if _is_one_image(images) else [
            list(item) if not _is_one_image(item) else [item] for item in images]
        if not queries or any(not q for q in queries):
            raise ValueError("ask: no images given")
        answers = self.answer_detailed([(q, question_prompt(len(q), question.strip(), context)) for q in queries],
                                       gen, progress)
        for query, answer in zip(queries, answers):
            answer.text, answer.warning = self.warned(query, answer.text)
        return answers

    def warned(self, images: Sequence[ImageInput], text: str) -> tuple[str, str | None]:
        """(the answer text with unfamiliar_warning before it, the warning), or (text, None) for familiar images."""
        warning = self.unfamiliar_warning(images)
        return (f"{warning} {text}" if warning else text), warning

    def unfamiliar_warning(self, images: Sequence[ImageInput]) -> str | None:
        """A warning to put before an answer about images unlike the training images (evaluate.familiarity), so that
        the answer does not pretend; None when they are familiar or the run is not calibrated."""
        scores = self.familiarity_scores(images)
        if scores is None:
            return None
        threshold = self.familiarity.threshold
        far = [i for i, score in enumerate(scores) if score > threshold]
        if not far:
            return None
        which = "This image" if len(images) == 1 else "Image " + ", ".join(str(i + 1) for i in far)
        return (f"Warning: {which} is unlike the images this model was trained on (familiarity score "
                f"{max(scores[i] for i in far):.3f}, above {threshold:.3f}): the answer below may be wrong.")

    def caption(self, images: ImageInput | Sequence[ImageInput], gen: GenerationConfig | None = None,
                progress: bool = False, detail: bool = False) -> list[str]:
        """A caption per image, asked with the caption question the run was trained on."""
        return [a.text for a in self.caption_detailed(images, gen, progress, detail)]

    def caption_detailed(self, images: ImageInput | Sequence[ImageInput], gen: GenerationConfig | None = None,
                         progress: bool = False, detail: bool = False) -> list[Answer]:
        return self.ask_detailed(images, str(self.run_value("caption_prompt")), gen=gen, progress=progress,
                                 detail=detail)

    # -------------------------------------------------------------------------------------------------- few-shot

    def support_set(self, support: str | os.PathLike | None = None, progress: bool = False) -> SupportSet:
        """The labelled images demonstrations come from: a dataset folder or CSV manifest (scan_dataset), or None for
        the run's training images (run.json images_root + the labels of the training records). Embedded once."""
        key = "<train>" if support is None else str(Path(support).resolve())
        if key not in self._supports:
            paths, labels = self._support_images(support)
            self._supports[key] = SupportSet(paths, labels, self.embed(paths, progress=progress))
        return self._supports[key]

    def _support_images(self, support: str | os.PathLike | None) -> tuple[list[Path], list[str]]:
        if support is not None:
            samples = [s for s in scan_dataset(support) if s.label is not None]
            if not samples:
                raise ValueError(f"{support}: no labelled images (expected class folders root/<class>/<image> or a "
                                 f"manifest with a label column)")
            return [s.path for s in samples], [s.label for s in samples]
        root = Path(str(self.run_value("images_root")))
        by_image = demonstration_labels(read_records(str(self.run_value("train_data"))))
        if not by_image:
            raise RunError(f"{self.run['train_data']}: no single-image record with a label to use as demonstrations")
        return [root / rel for rel in sorted(by_image)], [by_image[rel] for rel in sorted(by_image)]

    @torch.no_grad()
    def embed(self, images: Sequence[ImageInput], progress: bool = False) -> np.ndarray:
        """cls embeddings [N, Dv] of the images, rows L2-normalised (cosine similarity is then a dot product)."""
        rows = []
        for chunk in tqdm(list(_batches(images, self.batch_size)), desc="embed", unit="batch", disable=not progress):
            cls = self.model.image_embedding(torch.stack([self.image_tensor(x) for x in chunk]))  # [b, Dv]
            rows.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.model.config.vision.dim), dtype=np.float32)

    def demonstrations(self, images: Sequence[ImageInput], shots: int, support: SupportSet) -> list[list[int]]:
        """For each query, the indices into `support` of its `shots` most similar images, most similar last."""
        if not 1 <= shots <= len(support.paths):
            raise ValueError(f"shots must be between 1 and the {len(support.paths)} support images, got {shots}")
        return [few_shot_demos(query, support.embeddings, shots).tolist() for query in self.embed(images)]

    # -------------------------------------------------------------------------------------------------- classify

    def classify(self, images: ImageInput | Sequence[ImageInput], shots: int = 0,
                 support: str | os.PathLike | None = None, top_k: int | None = 5, progress: bool = False,
                 views: int = 1, calibrated: bool = True) -> list[list[tuple[str, float]]]:
        """Per image, the top_k (None: all) classes with probabilities, most likely first. shots=0: zero-shot over
        the run's classes; shots=K: K demonstrations from `support` (None: the training images), ranked over the
        support set's classes. Probabilities are a softmax over the candidates' summed log-likelihoods, divided by
        the run's calibration temperature (calibration.json, fitted on the validation split) when it has one.

        views > 1: test-time augmentation over the first `views` dihedral views of the image (dihedral_view; the
        demonstrations stay as they are): the class log-probabilities of the views are averaged, at `views` times the
        cost. 4: the quarter turns; 8: with their mirror images."""
        classes, scores = self.class_scores(images, shots, support, progress, views)
        probs = probabilities(scores, self.temperature if calibrated else 1.0)
        results: list[list[tuple[str, float]]] = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:top_k].tolist()
            results.append([(classes[i], float(row[i])) for i in order])
        return results

    def class_scores(self, images: ImageInput | Sequence[ImageInput], shots: int = 0,
                     support: str | os.PathLike | None = None, progress: bool = False, views: int = 1
                     ) -> tuple[list[str], np.ndarray]:
        """(the candidate classes, [N, C] class scores: the summed log-likelihood of each class answer, averaged over
        the views), before any temperature: what classify() ranks and calibration fits."""
        images = [images] if _is_one_image(images) else list(images)
        if not images:
            raise ValueError("classify: no images given")
        if shots < 0:
            raise ValueError(f"shots must be 0 (zero-shot) or more, got {shots}")
        if not 1 <= views <= DIHEDRAL_VIEWS:
            raise ValueError(f"views must be between 1 and {DIHEDRAL_VIEWS}, got {views}")
        question = str(self.run_value("classify_prompt")).replace(IMAGE_TOKEN, "").strip()
        if shots == 0:
            classes = self.classes
            items = [([image], question_prompt(1, question)) for image in images]
        else:
            support_set = self.support_set(support, progress=progress)
            classes = support_set.classes
            demos = self.demonstrations(images, shots, support_set)
            items = [([support_set.paths[i] for i in demo] + [image],
                      few_shot_prompt(question, [support_set.labels[i] for i in demo]))
                     for image, demo in zip(images, demos)]
        candidates = [self.class_answer(c) for c in classes]
        processor = self.model.processor
        rows = []
        bar = tqdm(total=len(items), desc=f"classify ({shots}-shot)", unit="img", disable=not progress)
        for chunk in _batches(items, max(1, self.batch_size // views)):
            # The views of one item sit side by side in the batch: the text encoder then reads their prompt once.
            batch = processor.collate([
                processor([self.image_tensor(x) for x in imgs[:-1]] + [dihedral_view(self.image_tensor(imgs[-1]), k)],
                          prompt)
                for imgs, prompt in chunk for k in range(views)])
            # Summed log-likelihoods, not renormalised over the classes: a softmax gives the same probabilities,
            # and their scale says how likely the decoder finds any class answer (the energy score of benchmarks/ood.py)
            scores = self.model.score(batch, candidates)  # [b * views, C]
            rows.append(scores.view(len(chunk), views, -1).mean(dim=1).float().cpu().numpy())  # [b, C]
            bar.update(len(chunk))
        bar.close()
        return classes, np.concatenate(rows)

    # -------------------------------------------------------------------------------------------------- calibration

    @functools.cached_property
    def calibration(self) -> dict:
        """calibration.json of the run (`maemi calibrate`): the temperature and the familiarity threshold; {} when
        the run was not calibrated (probabilities are then the raw softmax, and no image is called unfamiliar)."""
        path = self.run_dir / CALIBRATION_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    @functools.cached_property
    def familiarity(self) -> Familiarity | None:
        entry = self.calibration.get("familiarity")
        return Familiarity.load(self.run_dir, entry) if entry else None

    def image_statistics(self, image: ImageInput) -> np.ndarray | None:
        """teachers.sampling.image_statistics of an image (None for a preprocessed tensor: its pixels are gone), once
        per file like the model input and the measurement."""
        if isinstance(image, PreparedImage):
            return image.statistics
        if isinstance(image, torch.Tensor):
            return None
        if isinstance(image, np.ndarray):
            return pixel_statistics(image)
        stat = Path(image).stat()
        return self._cached_statistics(str(image), stat.st_mtime_ns, stat.st_size)

    def familiarity_scores(self, images: Sequence[ImageInput]) -> np.ndarray | None:
        """Per image, how far it lies from the training images (evaluate.familiarity; NaN where it cannot be told);
        None when the run is not calibrated."""
        if self.familiarity is None:
            return None
        stats = [self.image_statistics(x) for x in images]
        known = [i for i, x in enumerate(stats) if x is not None]
        scores = np.full(len(stats), np.nan)
        if known:
            scores[known] = self.familiarity.score(np.stack([stats[i] for i in known]))
        return scores

    def flags(self, images: Sequence[ImageInput], confidences: Sequence[float]) -> list[tuple[float | None, str]]:
        """(ood_score, flag) per image: ok, low_confidence or unfamiliar (evaluate.familiarity.flag)."""
        scores = self.familiarity_scores(images)
        threshold = self.familiarity.threshold if self.familiarity else None
        out = []
        for i, c in enumerate(confidences):
            score = None if scores is None or np.isnan(scores[i]) else float(scores[i])
            out.append((score, flag(c, score, threshold)))
        return out
