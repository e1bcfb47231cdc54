"""MAEMI: vision encoder + text encoder (int8 base, DyLoRA-FA) + gated cross-attention fusion decoder.

A checkpoint is one directory: config.json (the config and a reference to the text encoder: its path and a content
hash of its weight files), model.safetensors (everything trained: vision, adapters, the <image>/<Encode> embeddings,
decoder; never the pretrained text weights, which are rebuilt from their directory) and tokenizer.json (the answer
vocabulary). Loading is strict: a missing or unexpected tensor is an error that names it. Never pickle.

References: Srinivas et al. 2024 (MAEMI); nanoVLM models/vision_language_model.py (one model, one loader);
LLaVA issues on all-masked labels giving a silent loss of 0 (hence the check in forward).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from maemi.fileio import atomic_write_bytes, atomic_write_json
from maemi.model.config import MAEMIConfig
from maemi.model.fusion import FusionDecoder, FusionMemory
from maemi.model.generate import GenerationConfig
from maemi.model.generate import generate_ids as generate_answer_ids
from maemi.model.processor import IGNORE_INDEX, MAEMIProcessor, pad_stack
from maemi.model.text import TextEncoder, resolve_text_model_path, text_weights_sha256
from maemi.model.vision import VisionEncoder
from maemi.model.vocab import AnswerVocab

CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "tokenizer.json"


class CheckpointError(ValueError):
    pass


class MAEMI(nn.Module):
    def __init__(self, config: MAEMIConfig, vocab: AnswerVocab) -> None:
        super().__init__()
        if vocab.size != config.vocab_size:
            raise ValueError(f"answer vocabulary has {vocab.size} tokens but config.vocab_size is {config.vocab_size}")
        self.config = config
        self.vocab = vocab
        self.vision = VisionEncoder(config.vision)
        self.text = TextEncoder(config.text)
        self.decoder = FusionDecoder(config.decoder, config.vocab_size, config.vision.dim, self.text.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head.weight.device

    @property
    def processor(self) -> MAEMIProcessor:
        return MAEMIProcessor(self.text.tokenizer, self.vocab, self.config.vision.image_size,
                              self.config.vision.channels, self.config.text.max_prompt_len,
                              self.config.decoder.max_len)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}

    # ------------------------------------------------------------------------------------------------ encoding

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, S, S] -> the cls embedding [B, Dv] (few-shot demonstrations are picked by its similarity)."""
        return self.vision(images.to(self.device))[1]

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """images [B, M, C, S, S], image_mask [B, M] -> tokens [B, M, 1+N, Dv] (cls first; zeros in padded slots).
        Only real images go through the encoder."""
        b, m = image_mask.shape
        n, dim = self.config.vision.num_patches, self.config.vision.dim
        patches, cls = self.vision(images[image_mask])  # [R, N, Dv], [R, Dv] for the R real images
        real = torch.cat([cls[:, None], patches], dim=1)  # [R, 1+N, Dv]
        tokens = real.new_zeros(b, m, 1 + n, dim)
        tokens[image_mask] = real
        return tokens

    def encode(self, batch: dict[str, torch.Tensor]) -> FusionMemory:
        """Images and prompt -> what the decoder cross-attends to."""
        # Instruction data asks the same few questions of many images, and the text encoder (the costliest part on a
        # CPU) reads only the prompt: run it once per distinct prompt in the batch, then index the states back.
        prompts, inverse = torch.unique(batch["prompt_ids"], dim=0, return_inverse=True)  # [U, T], [B]
        first = torch.empty(len(prompts), dtype=torch.long, device=inverse.device)
        first[inverse] = torch.arange(len(inverse), device=inverse.device)  # a sample holding each distinct prompt
        states = self.text(prompts, batch["prompt_mask"][first])[inverse]  # [B, T, Ht]
        positions = batch["image_positions"]  # [B, M]
        markers = states.gather(1, positions[..., None].expand(-1, -1, states.shape[-1]))  # [B, M, Ht]
        image_tokens = self.encode_images(batch["images"], batch["image_mask"])
        return self.decoder.build_memory(image_tokens, batch["image_mask"], markers, states, batch["prompt_mask"])

    # ------------------------------------------------------------------------------------------------ training

    def forward(self, batch: dict[str, torch.Tensor], average: str = "token") -> torch.Tensor:
        """Cross-entropy of the answer tokens (labels != -100): averaged over the batch's tokens ("token"), or over
        each sample's tokens and then over samples ("sample": a one-word class label counts as much as a long
        description, instead of 1/50 of it)."""
        batch = self._to_device(batch)
        labels = batch["labels"]
        empty = ((labels != IGNORE_INDEX).sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"sample(s) {empty} of the batch have no target tokens (every label is {IGNORE_INDEX}); "
                             f"the loss would silently ignore them (LLaVA's loss-0 failure). Check the answer text "
                             f"and how labels are masked.")
        logits = self.decoder(batch["answer_ids"], self.decoder.start(self.encode(batch)))  # [B, L, V]
        if average == "token":
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        if average != "sample":
            raise ValueError(f"average must be 'token' or 'sample', got {average!r}")
        per_token = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX,
                                    reduction="none")  # [B, L], 0 at ignored positions
        return (per_token.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1)).mean()

    # ------------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], config: GenerationConfig | None = None
                     ) -> list[list[int]]:
        memory = self.encode(self._to_device(batch))
        vocab = self.vocab
        return generate_answer_ids(self.decoder, memory, vocab.bos_id, vocab.eos_id, vocab.pad_id,
                                   config or GenerationConfig())

    def generate(self, batch: dict[str, torch.Tensor], config: GenerationConfig | None = None) -> list[str]:
        return [self.vocab.decode(ids) for ids in self.generate_ids(batch, config)]

    @torch.no_grad()
    def score(self, batch: dict[str, torch.Tensor], candidates: Sequence[str]) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate answer (with its <eos>) for each sample: zero-shot
        classification ranks class names by it. Sums over tokens: divide by lengths to compare per token."""
        if not candidates:
            raise ValueError("score: no candidate answers")
        cache = self.decoder.start(self.encode(self._to_device(batch))).repeat_each(len(candidates))  # [B*C]
        vocab = self.vocab
        ids = [vocab.encode(text) for text in candidates]
        inputs = pad_stack([torch.tensor([vocab.bos_id] + row) for row in ids], vocab.pad_id)  # [C, L]
        labels = pad_stack([torch.tensor(row + [vocab.eos_id]) for row in ids], IGNORE_INDEX)
        batch_size = cache.memory.prompt_states.shape[0] // len(candidates)  # row b*C + c: sample b, candidate c
        inputs, labels = inputs.repeat(batch_size, 1).to(self.device), labels.repeat(batch_size, 1).to(self.device)
        log_probs = F.log_softmax(self.decoder(inputs, cache).float(), dim=-1)  # [B*C, L, V]
        token_log_probs = log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # [B*C, L]
        return (token_log_probs * (labels != IGNORE_INDEX)).sum(-1).reshape(batch_size, len(candidates))

    # ------------------------------------------------------------------------------------------------ checkpoints

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the model except the pretrained text weights (which the text encoder rebuilds)."""
        pretrained = {f"text.model.{key}" for key in self.text.pretrained_keys}
        return {key: value for key, value in self.state_dict().items() if key not in pretrained}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        tensors = {key: value.detach().contiguous().cpu() for key, value in self.trained_state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
        self.vocab.save(directory / VOCAB_FILE)
        atomic_write_json(directory / CONFIG_FILE, {
            "config": self.config.to_dict(),
            "text_encoder": {"path": str(self.text.path), "weights_sha256": self.text.weights_sha256},
        })

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, text_path: str | os.PathLike | None = None,
                        map_location: str | torch.device = "cpu") -> MAEMI:
        """Rebuild from config.json and load model.safetensors strictly. text_path overrides the text-encoder
        directory recorded in the checkpoint (a checkpoint moved to another machine); its weights must hash the same."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
            if not (directory / name).is_file():
                raise CheckpointError(f"checkpoint {directory}: {name} is missing")
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text())
            config = MAEMIConfig.from_dict(meta["config"])
            reference = meta["text_encoder"]
            expected_hash = reference["weights_sha256"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"checkpoint {directory / CONFIG_FILE}: not a MAEMI config ({error})") from error

        if text_path is not None:
            config.text.path = str(text_path)
        try:
            text_dir = resolve_text_model_path(config.text.path)
        except FileNotFoundError as error:
            raise CheckpointError(f"checkpoint {directory}: {error} (trained with {reference.get('path')}); pass "
                                  f"text_path= the directory of that model") from error
        actual_hash = text_weights_sha256(text_dir)
        if actual_hash != expected_hash:
            raise CheckpointError(
                f"checkpoint {directory}: the text encoder at {text_dir} is not the one it was trained with (weights "
                f"sha256 {actual_hash[:12]}..., expected {expected_hash[:12]}...); pass text_path= the original model")
        model = cls(config, AnswerVocab.load(directory / VOCAB_FILE))

        try:
            tensors = load_file(directory / WEIGHTS_FILE, device=str(map_location))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"checkpoint {directory / WEIGHTS_FILE}: unreadable ({error})") from error
        expected = model.trained_state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {directory / WEIGHTS_FILE} does not match the model built from "
                                  f"{CONFIG_FILE}: missing tensors {missing}, unexpected tensors {unexpected}")
        wrong = [f"{key} {list(tensors[key].shape)} (model: {list(value.shape)})"
                 for key, value in expected.items() if tensors[key].shape != value.shape]
        if wrong:
            raise CheckpointError(f"checkpoint {directory / WEIGHTS_FILE}: tensors with the wrong shape: {wrong}")
        model.load_state_dict(tensors, strict=False)  # strict=False only because the pretrained base is not in the file
        return model.to(map_location)
