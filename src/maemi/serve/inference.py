"""The Assistant behind the batcher: each request asks for one answer or one ranking, and requests that arrive
together are run as one Assistant call.

Two kinds of batch: "answer" (any images and prompt, grouped by generation settings: asks, captions and chat
completions share them) and "classify" (grouped by the number of shots and of views; every class is ranked and each
request cuts its own top-k).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maemi.assistant import Assistant, PreparedImage, pixel_statistics, question_prompt
from maemi.model import GenerationConfig
from maemi.serve.batcher import Batcher, BatcherConfig
from maemi.serve.errors import RequestError
from maemi.serve.uploads import UploadLimits, decode_upload, read_upload, upload_as_file
from maemi.teachers.records import asked

# Characters a question may have before it is tokenised: generous for any prompt the model can read (a word-piece
# token rarely spans more), and it keeps a 10 MB question from being tokenised at all.
CHARS_PER_PROMPT_TOKEN = 64


@dataclass
class Answer:
    text: str
    prompt_tokens: int  # with <Encode>, as the model read it
    completion_tokens: int  # with <eos>
    provenance: dict = dataclasses.field(default_factory=dict)  # template, numbers, unknown, measurements


class BatchedAssistant:
    def __init__(self, assistant: Assistant, config: BatcherConfig | None = None, shots: int = 0,
                 support: str | Path | None = None) -> None:
        self.assistant, self.shots, self.support = assistant, shots, support
        self.batcher = Batcher(self._run, config)

    def image(self, data: bytes, name: str | None, limits: UploadLimits, measure: bool = False
              ) -> torch.Tensor | PreparedImage:
        """An upload as model input [3, S, S] (UploadError for a bad one), with its measurement when `measure` (what
        an answer's numbers are filled from). Pure preprocessing: decoding threads run it, the model thread only runs
        the model."""
        if not (measure and self.assistant.measured_answers):
            pixels = decode_upload(data, name, limits)
            if self.assistant.familiarity is None:
                return self.assistant.image_tensor(pixels)
            # a calibrated run: the image statistics too, for its familiarity flag
            return PreparedImage(self.assistant.image_tensor(pixels), "not measured", pixel_statistics(pixels))
        with upload_as_file(data, name, limits) as path:  # as a file: TIFF tags carry the instrument's scale
            return self.assistant.prepare(read_upload(path, name), path)

    @property
    def max_new_tokens(self) -> int:
        return self.assistant.model.config.decoder.max_len

    def generation(self, max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                   seed: int | None = None) -> GenerationConfig:
        """Greedy by default (temperature absent or 0); top-p sampling otherwise. Capped by the decoder's length."""
        limit = min(max_tokens or self.max_new_tokens, self.max_new_tokens)
        if not temperature:
            return GenerationConfig(max_new_tokens=limit)
        return GenerationConfig(max_new_tokens=limit, strategy="top_p", temperature=temperature,
                                top_p=1.0 if top_p is None else top_p, seed=seed or 0)

    def prompt(self, images: int, question: str, context: str | None = None, detail: bool = False) -> str:
        """The prompt for a question about `images` images, checked before any image is decoded or anything queued:
        RequestError 413 for text far over what the model reads, ValueError (400) for a prompt over max_prompt_len
        tokens. (A measured answer adds the measurement's words in the model thread, which checks again.)"""
        if not question.strip():
            raise ValueError("the question is empty")
        self.check_length(len(question) + len(context or ""))
        prompt = question_prompt(images, asked(question.strip(), "long" if detail else "short"), context)
        self.assistant.model.processor.encode_text(prompt, num_images=images)  # ValueError naming max_prompt_len
        return prompt

    def check_length(self, chars: int, prompts: int = 1) -> None:
        """RequestError 413 for text longer than `prompts` prompts can be, before it is tokenised."""
        tokens = self.assistant.model.processor.max_prompt_len
        if chars > prompts * tokens * CHARS_PER_PROMPT_TOKEN:
            raise RequestError(413, f"the question is {chars:,} characters long; this model reads prompts of at most "
                                    f"{tokens} tokens (max_prompt_len)" + (f", {prompts} questions at most" if
                                                                           prompts > 1 else ""))

    async def ask(self, images: list[torch.Tensor], question: str, context: str | None = None,
                  gen: GenerationConfig | None = None, detail: bool = False) -> Answer:
        return self._warned(images, await self.answer(images, self.prompt(len(images), question, context, detail), gen))

    async def caption(self, image: torch.Tensor, detail: bool = False) -> Answer:
        caption = str(self.assistant.run_value("caption_prompt")).strip()
        prompt = question_prompt(1, asked(caption, "long" if detail else "short"))
        return self._warned([image], await self.answer([image], prompt))

    def _warned(self, images: list, answer: Answer) -> Answer:
        """The answer with Assistant.unfamiliar_warning before it when an image is unlike the training images."""
        answer.text, warning = self.assistant.warned(images, answer.text)
        answer.provenance = {**answer.provenance, "warning": warning}
        return answer

    def flag(self, image, confidence: float) -> tuple[float | None, str]:
        """(ood_score, flag) of one upload: ok, low_confidence or unfamiliar (Assistant.flags)."""
        return self.assistant.flags([image], [confidence])[0]

    async def answer(self, images: list[torch.Tensor], prompt: str, gen: GenerationConfig | None = None) -> Answer:
        gen = gen or self.generation()
        return await self.batcher.submit(("answer", dataclasses.astuple(gen)), (images, prompt))

    async def classify(self, image: torch.Tensor, shots: int | None = None, top_k: int = 5, views: int = 1
                       ) -> list[tuple[str, float]]:
        shots = self.shots if shots is None else shots
        if shots < 0:
            raise ValueError(f"shots must be 0 (zero-shot) or more, got {shots}")
        ranked = await self.batcher.submit(("classify", (shots, views)), image)
        return ranked[:top_k]

    def _run(self, key: Hashable, items: list[Any]) -> list[Any]:
        kind, arg = key
        if kind == "answer":
            gen = GenerationConfig(*arg)
            answers = self.assistant.answer_detailed(items, gen)
            processor = self.assistant.model.processor
            return [Answer(a.text, len(processor.encode_text(prompt, num_images=len(images))["prompt_ids"]),
                           min(len(processor.vocab.encode(a.template)) + 1, gen.max_new_tokens),
                           {k: v for k, v in a.to_dict().items() if k != "answer"})
                    for (images, prompt), a in zip(items, answers)]
        if kind == "classify":
            shots, views = arg
            return self.assistant.classify(items, shots=shots, support=self.support, top_k=None, views=views)
        raise ValueError(f"unknown batch kind {kind!r}")
