"""The MAEMI model: vision encoder, text encoder (int8 base + DyLoRA-FA), gated cross-attention fusion decoder."""

from maemi.model.config import DecoderConfig, MAEMIConfig, TextConfig, VisionConfig
from maemi.model.fusion import FusionDecoder, FusionMemory, GatedCrossAttentionBlock, SelfAttentionBlock
from maemi.model.generate import GenerationConfig
from maemi.model.lora import DyLoRAFAConfig
from maemi.model.maemi import MAEMI, CheckpointError
from maemi.model.processor import IGNORE_INDEX, MAEMIProcessor
from maemi.model.text import ENCODE_TOKEN, IMAGE_TOKEN, TextEncoder
from maemi.model.vision import VisionEncoder
from maemi.model.vocab import AnswerVocab

__all__ = [
    "AnswerVocab", "CheckpointError", "DecoderConfig", "DyLoRAFAConfig", "ENCODE_TOKEN", "FusionDecoder",
    "FusionMemory", "GatedCrossAttentionBlock", "GenerationConfig", "IGNORE_INDEX", "IMAGE_TOKEN", "MAEMI",
    "MAEMIConfig", "MAEMIProcessor", "SelfAttentionBlock", "TextConfig", "TextEncoder", "VisionConfig",
    "VisionEncoder",
]
