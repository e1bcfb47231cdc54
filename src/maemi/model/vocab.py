"""The answer vocabulary: a byte-level BPE trained on the training answers.

Answers must come back exactly as written: case, numbers and units ("magnified 11,000 times", "SEM", "nm"). The
text encoder's uncased WordPiece would lower-case and split them, so the decoder writes from its own vocabulary.
Byte-level BPE covers every string (all 256 bytes are in the alphabet), so decode(encode(s)) == s for any s, and
the special tokens in answer text are read as plain text, never as control tokens.

References: Radford et al. 2019 (GPT-2 byte-level BPE); the Hugging Face `tokenizers` library.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from maemi.fileio import atomic_write_text

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3


class AnswerVocab:
    def __init__(self, tokenizer: Tokenizer) -> None:
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"answer tokenizer must have {list(SPECIAL_TOKENS)} as ids 0-3, got ids {ids}")
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True  # "<eos>" typed in an answer is text; not saved, so set here
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> AnswerVocab:
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # no added space: exact round trip
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerVocab:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"answer vocabulary {path}: no such file")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"answer vocabulary {path}: not a readable tokenizer.json ({error})") from error
        try:
            return cls(tokenizer)
        except ValueError as error:
            raise ValueError(f"answer vocabulary {path}: {error}") from error

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.tokenizer.to_str(pretty=True))

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first <eos>; other special tokens (<bos>, <pad>) are dropped."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=False)
