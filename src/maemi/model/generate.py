"""Batched answer generation: greedy, beam search, top-p sampling.

Cross-attention keys/values of the images and prompt are computed once (FusionDecoder.start); self-attention keeps a
key/value cache, so each step feeds one token. `use_cache=False` recomputes everything from scratch at every step:
slower, and the reference the cache is tested against. All rows start with <bos> at position 0, so a batch needs no
left padding: a finished row keeps emitting <pad>, which no other row ever sees.

References: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration" (top-p); nanoGPT's generate();
Hugging Face transformers' beam search (length penalty on finished hypotheses) and its NoRepeatNGramLogitsProcessor
(used as it is), which keeps a small model's greedy answers from looping ("All sizes below are nm. All sizes below are
nm.").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from maemi.model.fusion import DecoderCache, FusionDecoder, FusionMemory


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64  # <eos> included; capped by the decoder's max_len
    strategy: Literal["greedy", "beam", "top_p"] = "greedy"
    num_beams: int = 4
    length_penalty: float = 1.0  # beam: final score = log-likelihood / length**length_penalty
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0  # top_p: same seed, same answers
    use_cache: bool = True
    no_repeat_ngram_size: int = 0  # > 0: a token that would repeat an n-gram already in the answer is never chosen

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "top_p"):
            raise ValueError(f"generation strategy must be greedy, beam or top_p, got {self.strategy!r}")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be at least 1")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (off) or more, got {self.no_repeat_ngram_size}")
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0:
            raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got {self.top_p}, {self.temperature}")


def next_token_logits(decoder: FusionDecoder, memory: FusionMemory, tokens: torch.Tensor,
                      cache: DecoderCache, config: GenerationConfig) -> torch.Tensor:
    """Logits [B, V] for the position after tokens [B, t] (<bos> first), repeated n-grams banned if asked."""
    if config.use_cache:
        logits = decoder(tokens[:, -1:], cache)[:, -1].float()
    else:
        logits = decoder(tokens, decoder.start(memory))[:, -1].float()
    if config.no_repeat_ngram_size:
        logits = NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size)(tokens, logits)
    return logits


def sample_top_p(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> [B]: sample from the smallest set of tokens whose probability reaches top_p."""
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
    outside = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p; keeps the first
    probs = probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # [B, 1], renormalises by itself
    return order.gather(-1, choice).squeeze(-1)


def strip_after_eos(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


@torch.no_grad()
def generate_ids(decoder: FusionDecoder, memory: FusionMemory, bos_id: int, eos_id: int, pad_id: int,
                 config: GenerationConfig) -> list[list[int]]:
    """Answer token ids for each sample of `memory`, without <bos> and <eos>."""
    max_new = min(config.max_new_tokens, decoder.config.max_len)  # <bos> + max_new - 1 fed tokens fit max_len
    if config.strategy == "beam":
        return beam_search(decoder, memory, bos_id, eos_id, pad_id, max_new, config)
    batch = memory.prompt_states.shape[0]
    device = memory.prompt_states.device
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = decoder.start(memory)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    for _ in range(max_new):
        logits = next_token_logits(decoder, memory, tokens, cache, config)
        if config.strategy == "greedy":
            token = logits.argmax(-1)
        else:
            token = sample_top_p(logits / config.temperature, config.top_p, generator)
        token = token.masked_fill(finished, pad_id)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        finished |= token == eos_id
        if finished.all():
            break
    return strip_after_eos(tokens[:, 1:].tolist(), eos_id)


def beam_search(decoder: FusionDecoder, memory: FusionMemory, bos_id: int, eos_id: int, pad_id: int, max_new: int,
                config: GenerationConfig) -> list[list[int]]:
    """Keeps the num_beams best partial answers per sample (by log-likelihood); a finished beam only extends with
    <pad> at no cost. The best finished beam by length-normalised log-likelihood wins."""
    beams = config.num_beams
    batch = memory.prompt_states.shape[0]
    device = memory.prompt_states.device
    cache = decoder.start(memory).repeat_each(beams)  # rows b*beams ... b*beams + beams-1 belong to sample b
    tokens = torch.full((batch * beams, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first, or the top-k would be duplicates
    finished = torch.zeros(batch * beams, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * beams, device=device)  # generated tokens, <eos> included
    for _ in range(max_new):
        log_probs = F.log_softmax(next_token_logits(decoder, cache.memory, tokens, cache, config), dim=-1)
        vocab = log_probs.shape[-1]
        log_probs[finished] = float("-inf")
        log_probs[finished, pad_id] = 0.0
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, beams * vocab)
        scores, index = candidates.topk(beams, dim=-1)  # [B, beams]
        source = (torch.arange(batch, device=device)[:, None] * beams + index // vocab).reshape(-1)  # [B*beams]
        token = (index % vocab).reshape(-1)
        lengths = lengths[source] + (~finished[source]).float()
        finished = finished[source] | (token == eos_id)
        tokens = torch.cat([tokens[source], token[:, None]], dim=1)
        cache.reorder(source)
        if finished.all():
            break
    final = scores.reshape(-1) / lengths.clamp(min=1) ** config.length_penalty
    final = final.masked_fill(~finished, float("-inf")).reshape(batch, beams)  # prefer answers that ended ...
    unfinished = ~finished.reshape(batch, beams).any(dim=1)
    final[unfinished] = scores[unfinished]  # ... unless none did within max_new: then the likeliest
    best = torch.arange(batch, device=device) * beams + final.argmax(dim=1)
    return strip_after_eos(tokens[best, 1:].tolist(), eos_id)
