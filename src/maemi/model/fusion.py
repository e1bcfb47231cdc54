"""Fusion decoder: blocks alternating gated cross-attention (to the images and the prompt) and causal self-attention;
it writes the answer token by token.

Gating. Flamingo's gated cross-attention adds tanh(gate) * attention and tanh(gate) * feed-forward with the gates
initialised at 0, so that at initialisation each block is the identity and the pretrained LM is intact. Our decoder is
trained from scratch, so the gates start open (DecoderConfig.gate_init = 1; 0 gives Flamingo's behaviour). Our
keys/values are the image tokens AND the text encoder's prompt states; a single attention over both would let the
image leak through the prompt path whatever its gate. So each block has a separate image cross-attention with its own
gate: with the image gates at 0 the output does not depend on the image, whatever the other gates have learnt.

Memory normalisation. The projected image tokens and prompt states are layer-normalised, so that both reach the
answer stream at unit scale from the first step (Flamingo's perceiver resampler also ends in a LayerNorm).

Prefix fusion (DecoderConfig.image_fusion = "prefix", for the ablation): no image cross-attention; the image tokens go
first in the decoder's own sequence and pass through every block, and each answer token attends to them through
self-attention, as LLaVA-style models feed an LM. The prompt keeps its (gated) cross-attention in both.

Media masking. open_flamingo lets a text token attend to the images that came before it. Every answer token comes
after the whole prompt, so every answer token sees all images of its prompt; the mask only removes the padded image
slots of samples with fewer images than the batch's widest (a sample with no image gets zero from the image path).
Cross-attention over a set of tokens cannot tell image 1 from image 2, so each image's tokens get the (projected) text
encoder state of its own `<image>` token added: it says where in the prompt that image sits.

References:
- Alayrac et al. 2022, "Flamingo"; open_flamingo (github.com/mlfoundations/open_flamingo) helpers.py:
  GatedCrossAttentionBlock and media masking.
- nanoGPT model.py (github.com/karpathy/nanoGPT): causal self-attention, weight init; KV cache as in nanoVLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from maemi.model.config import DecoderConfig


@dataclass
class FusionMemory:
    """What the answer cross-attends to, projected to the decoder width."""

    image_tokens: torch.Tensor  # [B, M*(N+1), D]: each image's cls + patch tokens, image after image
    image_mask: torch.Tensor  # [B, M*(N+1)] bool, False on padded image slots
    prompt_states: torch.Tensor  # [B, T, D]
    prompt_mask: torch.Tensor  # [B, T] bool, False on padding

    def repeat_each(self, n: int) -> FusionMemory:
        """Each sample n times in a row ([B] -> [B*n]): beams, or candidate answers to score."""
        return FusionMemory(*(t.repeat_interleave(n, dim=0) for t in
                              (self.image_tokens, self.image_mask, self.prompt_states, self.prompt_mask)))


class Attention(nn.Module):
    """Multi-head attention, queries from x; keys/values projected separately so they can be computed once."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.query = nn.Linear(dim, heads * head_dim)
        self.key_value = nn.Linear(dim, 2 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # [B, S, H*hd] -> [B, H, S, hd]

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.key_value(context).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)  # [B, H, S, hd] each

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; mask broadcastable to [B, H, T, S], True = may attend -> [B, T, D]."""
        q = self.split_heads(self.query(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))  # [B, H, T, hd] -> [B, T, H*hd]


def feed_forward(config: DecoderConfig) -> nn.Sequential:
    hidden = int(config.dim * config.mlp_ratio)
    return nn.Sequential(nn.Linear(config.dim, hidden), nn.GELU(), nn.Linear(hidden, config.dim),
                         nn.Dropout(config.dropout))


@dataclass
class CrossKeysValues:
    """One GatedCrossAttentionBlock's keys/values of the memory, computed once per prompt and its images."""

    image: tuple[torch.Tensor, torch.Tensor] | None  # None when the batch has no image
    prompt: tuple[torch.Tensor, torch.Tensor]


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        dim = config.dim
        self.attends_to_image = config.image_fusion == "cross_attention"
        if self.attends_to_image:
            self.image_norm = nn.LayerNorm(dim)
            self.image_attn = Attention(dim, config.heads, config.head_dim, config.dropout)
            self.image_gate = nn.Parameter(torch.full((1,), config.gate_init))
        self.prompt_norm = nn.LayerNorm(dim)
        self.prompt_attn = Attention(dim, config.heads, config.head_dim, config.dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = feed_forward(config)
        # gate_init 0: tanh(0) = 0, the block starts as the identity (Flamingo); each gate still gets a gradient from
        # step one, but the branch behind it does not until the gate has moved.
        self.prompt_gate = nn.Parameter(torch.full((1,), config.gate_init))
        self.ff_gate = nn.Parameter(torch.full((1,), config.gate_init))

    def keys_values(self, memory: FusionMemory) -> CrossKeysValues:
        image = (self.image_attn.keys_values(memory.image_tokens)
                 if self.attends_to_image and memory.image_tokens.shape[1] else None)
        return CrossKeysValues(image, self.prompt_attn.keys_values(memory.prompt_states))

    def forward(self, x: torch.Tensor, kv: CrossKeysValues, memory: FusionMemory) -> torch.Tensor:
        if kv.image is not None:
            has_image = memory.image_mask.any(dim=1)  # [B]
            # A sample without images would have every key masked (NaN after softmax): let it attend to all, then
            # zero its result, as open_flamingo zeroes tokens with no image before them.
            mask = memory.image_mask | ~has_image[:, None]  # [B, S]
            attended = self.image_attn(self.image_norm(x), *kv.image, mask=mask[:, None, None, :])
            x = x + torch.tanh(self.image_gate) * attended * has_image[:, None, None]
        prompt_mask = memory.prompt_mask[:, None, None, :]  # [B, 1, 1, T]
        x = x + torch.tanh(self.prompt_gate) * self.prompt_attn(self.prompt_norm(x), *kv.prompt, mask=prompt_mask)
        return x + torch.tanh(self.ff_gate) * self.ff(self.ff_norm(x))


class SelfAttentionBlock(nn.Module):
    """Pre-norm causal self-attention + feed-forward, with a key/value cache for generation."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim)
        self.attn = Attention(config.dim, config.heads, config.head_dim, config.dropout)
        self.ff_norm = nn.LayerNorm(config.dim)
        self.ff = feed_forward(config)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                keys_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """keys_valid [B, S] (past and new positions), False on padded image slots of a prefix; None: all valid."""
        h = self.attn_norm(x)
        k, v = self.attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B, H, past + T, hd]
        t, s = x.shape[1], k.shape[2]
        # The new tokens are the last t of s positions: token i sees positions up to s - t + i.
        mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
        if keys_valid is not None:  # every position may still see itself: no all-masked row (NaN) for a padded slot
            itself = torch.zeros_like(mask)
            itself[torch.arange(t), torch.arange(s - t, s)] = True
            mask = (mask & keys_valid[:, None, None, :]) | itself
        x = x + self.attn(h, k, v, mask=mask)
        return x + self.ff(self.ff_norm(x)), (k, v)


@dataclass
class DecoderCache:
    """Cross-attention keys/values (computed once) and the growing self-attention keys/values."""

    memory: FusionMemory
    cross: list[CrossKeysValues]  # one per GatedCrossAttentionBlock
    self_kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # one per SelfAttentionBlock
    length: int = 0  # answer positions seen so far
    prefix_valid: torch.Tensor | None = None  # [B, P] prefix fusion: the image prefix's positions, False when padded

    def keys_valid(self, new: int) -> torch.Tensor | None:
        """[B, P + length + new]: which self-attention keys are real (None without a prefix: all of them)."""
        if self.prefix_valid is None:
            return None
        answer = self.prefix_valid.new_ones(self.prefix_valid.shape[0], self.length + new)
        return torch.cat([self.prefix_valid, answer], dim=1)

    def repeat_each(self, n: int) -> DecoderCache:
        """Each sample n times in a row ([B] -> [B*n]), before any answer token: candidate answers to score, or beams.
        The cross-attention keys/values are projected once per sample and copied, not projected n times."""
        if self.length:
            raise ValueError("repeat_each: the cache already holds answer positions")

        def rep(kv: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
            return None if kv is None else (kv[0].repeat_interleave(n, dim=0), kv[1].repeat_interleave(n, dim=0))

        cross = [CrossKeysValues(rep(c.image), rep(c.prompt)) for c in self.cross]
        prefix = None if self.prefix_valid is None else self.prefix_valid.repeat_interleave(n, dim=0)
        return DecoderCache(self.memory.repeat_each(n), cross, [rep(kv) for kv in self.self_kv], 0, prefix)

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i continues row index[i]. Rows stay within their sample, so the cross keys/values and the
        prefix mask (the same for every beam of a sample) need no reordering."""
        self.self_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.self_kv]


class FusionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, vocab_size: int, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.image_marker_proj = nn.Linear(text_dim, dim)  # the <image> token's state: where the image sits
        self.prompt_proj = nn.Linear(text_dim, dim)
        self.image_memory_norm = nn.LayerNorm(dim)
        self.prompt_memory_norm = nn.LayerNorm(dim)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(config.max_len, dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList()
        for _ in range(config.layers):
            self.blocks += [GatedCrossAttentionBlock(config), SelfAttentionBlock(config)]
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:  # nanoGPT's init
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def build_memory(self, image_tokens: torch.Tensor, image_mask: torch.Tensor, image_markers: torch.Tensor,
                     prompt_states: torch.Tensor, prompt_mask: torch.Tensor) -> FusionMemory:
        """image_tokens [B, M, N+1, Dv], image_mask [B, M], image_markers [B, M, Dt] (each image's <image> state),
        prompt_states [B, T, Dt], prompt_mask [B, T] -> FusionMemory at the decoder width."""
        n = image_tokens.shape[2]  # 1 + N tokens per image
        images = self.image_proj(image_tokens) + self.image_marker_proj(image_markers)[:, :, None]  # [B, M, N+1, D]
        return FusionMemory(
            image_tokens=self.image_memory_norm(images).flatten(1, 2),  # [B, M*(N+1), D]
            image_mask=image_mask.bool().repeat_interleave(n, dim=1),  # [B, M*(N+1)]
            prompt_states=self.prompt_memory_norm(self.prompt_proj(prompt_states)),
            prompt_mask=prompt_mask.bool(),
        )

    def start(self, memory: FusionMemory) -> DecoderCache:
        """A cache holding every cross-attention block's keys/values of `memory`, computed once (and with prefix
        fusion, the image prefix run through the blocks: its self-attention keys/values)."""
        cross = [block.keys_values(memory) for block in self.blocks if isinstance(block, GatedCrossAttentionBlock)]
        self_kv = [None for block in self.blocks if isinstance(block, SelfAttentionBlock)]
        cache = DecoderCache(memory, cross, self_kv)
        if self.config.image_fusion == "prefix" and memory.image_tokens.shape[1]:
            cache.prefix_valid = memory.image_mask
            self._run_blocks(memory.image_tokens, cache, cache.keys_valid(0))
        return cache

    def _run_blocks(self, x: torch.Tensor, cache: DecoderCache, keys_valid: torch.Tensor | None) -> torch.Tensor:
        cross_index = self_index = 0
        for block in self.blocks:
            if isinstance(block, GatedCrossAttentionBlock):
                x = block(x, cache.cross[cross_index], cache.memory)
                cross_index += 1
            else:
                x, cache.self_kv[self_index] = block(x, cache.self_kv[self_index], keys_valid)
                self_index += 1
        return x

    def forward(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """tokens [B, T] at answer positions cache.length ... cache.length + T - 1 -> logits [B, T, V]; the cache
        then holds those positions too."""
        t = tokens.shape[1]
        if cache.length + t > self.config.max_len:
            raise ValueError(f"answer of {cache.length + t} tokens exceeds the decoder's max_len "
                             f"{self.config.max_len}")
        positions = torch.arange(cache.length, cache.length + t, device=tokens.device)
        x = self.drop(self.token_embed(tokens) + self.pos_embed(positions))  # [B, T, D]
        x = self._run_blocks(x, cache, cache.keys_valid(t))
        cache.length += t
        return self.lm_head(self.norm(x))
