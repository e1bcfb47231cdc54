"""Prompt, images and answer -> model inputs; samples -> a padded batch.

The prompt goes to the text encoder's own tokenizer with one `<image>` per image where it sits and `<Encode>` appended
last (after the tokenizer's own end marker such as BERT's [SEP], so its state is always the final one). The answer
goes to the answer vocabulary as `<bos> answer` (decoder input) and `answer <eos>` (labels). Everything is right
padded; labels are -100 on padding, which the loss ignores.

Batch keys:
  images [B, M, C, S, S] (zeros in padded slots), image_mask [B, M], image_positions [B, M] (index of each image's
  <image> token in prompt_ids), prompt_ids / prompt_mask [B, T], and with answers answer_ids / labels [B, L].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maemi.model.text import ENCODE_TOKEN, IMAGE_TOKEN
from maemi.model.vocab import AnswerVocab

IGNORE_INDEX = -100  # labels the loss skips (PyTorch's cross_entropy default)


def pad_stack(rows: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Right-pad 1-D or N-D tensors along dim 0 to the longest and stack: [B, max_len, ...]."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


class MAEMIProcessor:
    def __init__(self, prompt_tokenizer, vocab: AnswerVocab, image_size: int, channels: int = 3,
                 max_prompt_len: int = 256, max_answer_len: int = 128) -> None:
        self.prompt_tokenizer = prompt_tokenizer
        self.vocab = vocab
        self.image_shape = (channels, image_size, image_size)
        self.max_prompt_len, self.max_answer_len = max_prompt_len, max_answer_len
        self.image_token_id, self.encode_token_id = prompt_tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, ENCODE_TOKEN])
        # Padding is masked out; a tokenizer without a pad token (Llama) can pad with any id.
        self.prompt_pad_id = prompt_tokenizer.pad_token_id if prompt_tokenizer.pad_token_id is not None else 0

    def __call__(self, images: Sequence[torch.Tensor], prompt: str, answer: str | None = None
                 ) -> dict[str, torch.Tensor]:
        """One sample (unpadded). images: [C, S, S] float tensors, one per `<image>` in the prompt, in order."""
        for i, image in enumerate(images):
            if not torch.is_floating_point(image) or tuple(image.shape) != self.image_shape:
                raise ValueError(f"image {i}: expected a float tensor of shape {list(self.image_shape)}, got "
                                 f"{image.dtype} {list(image.shape)}")
        sample = self.encode_text(prompt, answer, len(images))
        sample["images"] = torch.stack(list(images)) if images else torch.zeros(0, *self.image_shape)  # [M, C, S, S]
        return sample

    def encode_text(self, prompt: str, answer: str | None = None, num_images: int = 1) -> dict[str, torch.Tensor]:
        """The text part of a sample: prompt ids with `<Encode>` appended, where the images sit, answer ids and
        labels. Training tokenises every record once with it and adds the (augmented) images per step."""
        if ENCODE_TOKEN in prompt:
            raise ValueError(f"prompt contains {ENCODE_TOKEN}; it is appended by the processor: {prompt[:80]!r}")
        ids = self.prompt_tokenizer(prompt)["input_ids"] + [self.encode_token_id]
        positions = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(positions) != num_images:
            raise ValueError(f"prompt has {len(positions)} {IMAGE_TOKEN} token(s) but {num_images} image(s) were "
                             f"given; put one {IMAGE_TOKEN} where each image sits: {prompt[:80]!r}")
        if len(ids) > self.max_prompt_len:
            raise ValueError(f"prompt is {len(ids)} tokens long, over max_prompt_len {self.max_prompt_len}: "
                             f"{prompt[:80]!r}")
        sample = {"prompt_ids": torch.tensor(ids), "image_positions": torch.tensor(positions, dtype=torch.long)}
        if answer is not None:
            answer_ids = self.vocab.encode(answer)
            if len(answer_ids) + 1 > self.max_answer_len:
                raise ValueError(f"answer is {len(answer_ids) + 1} tokens with <eos>, over max_answer_len "
                                 f"{self.max_answer_len}: {answer[:80]!r}")
            sample["answer_ids"] = torch.tensor([self.vocab.bos_id] + answer_ids)
            sample["labels"] = torch.tensor(answer_ids + [self.vocab.eos_id])
        return sample

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("collate: no samples")
        counts = torch.tensor([len(s["images"]) for s in samples])
        max_images = int(counts.max())
        images = torch.zeros(len(samples), max_images, *self.image_shape)
        for i, sample in enumerate(samples):
            images[i, : len(sample["images"])] = sample["images"]
        batch = {
            "images": images,
            "image_mask": torch.arange(max_images)[None] < counts[:, None],  # [B, M]
            "image_positions": pad_stack([s["image_positions"] for s in samples], 0)
            if max_images else torch.zeros(len(samples), 0, dtype=torch.long),
            "prompt_ids": pad_stack([s["prompt_ids"] for s in samples], self.prompt_pad_id),
            "prompt_mask": pad_stack([torch.ones(len(s["prompt_ids"]), dtype=torch.bool) for s in samples], False),
        }
        with_answers = sum("answer_ids" in s for s in samples)
        if with_answers == len(samples):
            batch["answer_ids"] = pad_stack([s["answer_ids"] for s in samples], self.vocab.pad_id)
            batch["labels"] = pad_stack([s["labels"] for s in samples], IGNORE_INDEX)
        elif with_answers:
            raise ValueError(f"collate: {with_answers} of {len(samples)} samples have an answer; all or none must")
        return batch
