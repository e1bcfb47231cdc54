"""Generation: the cache changes nothing, batching changes nothing, beam of 1 is greedy, top-p is seeded, <eos>
stops."""

from __future__ import annotations

import pytest
import torch

from maemi.model import MAEMI, GatedCrossAttentionBlock, GenerationConfig
from tiny_text_models import save_tiny_bert, tiny_config, tiny_vocab, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> MAEMI:
    vocab = tiny_vocab()
    torch.manual_seed(0)
    model = MAEMI(tiny_config(save_tiny_bert(tmp_path_factory.mktemp("bert")), vocab), vocab).eval()
    # Gates at 0 would make every answer the same: open them so images and prompts steer the decoder.
    for block in model.decoder.blocks:
        if isinstance(block, GatedCrossAttentionBlock):
            for gate in (block.image_gate, block.prompt_gate, block.ff_gate):
                gate.data.fill_(1.0)
    return model


def samples(model: MAEMI) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)

    def image():
        return torch.rand(3, 32, 32, generator=g) * 2 - 1

    processor = model.processor
    return [processor([image()], "<image> Describe the image."),
            processor([image(), image()], "Compare <image> with <image>: which particles are larger?"),
            processor([], "What is TEM?"),
            processor([image()], "What is the scale bar in <image>?")]


def generate(model, batch_samples, **kwargs) -> list[list[int]]:
    return model.generate_ids(model.processor.collate(batch_samples), GenerationConfig(max_new_tokens=12, **kwargs))


@pytest.mark.parametrize("strategy", ["greedy", "beam", "top_p"])
def test_cached_and_uncached_generation_give_identical_tokens(model, strategy):
    batch = samples(model)
    cached = generate(model, batch, strategy=strategy, num_beams=3)
    assert cached == generate(model, batch, strategy=strategy, num_beams=3, use_cache=False)
    assert any(cached)  # the comparison is not between empty answers


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_and_one_by_one_give_identical_tokens(model, strategy):
    batch = samples(model)  # different prompt lengths and 0, 1 or 2 images: padding everywhere
    together = generate(model, batch, strategy=strategy, num_beams=3)
    assert together == [generate(model, [sample], strategy=strategy, num_beams=3)[0] for sample in batch]
    assert len(set(map(tuple, together))) > 1  # the samples really get different answers


def test_beam_search_with_one_beam_is_greedy(model):
    batch = samples(model)
    assert generate(model, batch, strategy="beam", num_beams=1) == generate(model, batch)


def test_top_p_is_reproducible_with_a_seed_and_tiny_p_is_greedy(model):
    batch = samples(model)
    assert generate(model, batch, strategy="top_p", seed=3) == generate(model, batch, strategy="top_p", seed=3)
    assert generate(model, batch, strategy="top_p", top_p=1e-6) == generate(model, batch)


def test_max_new_tokens_caps_the_answer(model):
    for ids in model.generate_ids(model.processor.collate(samples(model)), GenerationConfig(max_new_tokens=3)):
        assert len(ids) <= 3


def test_generation_stops_at_eos(model):
    decoder = model.decoder
    saved = {name: p.detach().clone() for name, p in decoder.named_parameters()}
    calls = []
    hook = decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():  # make <eos> the likeliest token everywhere
            decoder.norm.weight.zero_()
            decoder.norm.bias.fill_(1.0)
            decoder.lm_head.weight.zero_()
            decoder.lm_head.weight[model.vocab.eos_id] = 1.0
        answers = model.generate(model.processor.collate(samples(model)), GenerationConfig(max_new_tokens=10))
    finally:
        hook.remove()
        with torch.no_grad():
            for name, p in decoder.named_parameters():
                p.copy_(saved[name])
    assert answers == ["", "", "", ""] and len(calls) == 1  # one step, then every row had ended


def ngrams(row: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeat_ngram_size_bans_repeated_ngrams(model, strategy):
    batch = samples(model)
    plain = model.generate_ids(model.processor.collate(batch), GenerationConfig(max_new_tokens=40, strategy=strategy))
    # the random tiny decoder loops: some answer repeats a bigram, so the ban has something to change
    assert any(len(set(ngrams(row, 2))) < len(ngrams(row, 2)) for row in plain)
    banned = model.generate_ids(model.processor.collate(batch),
                                GenerationConfig(max_new_tokens=40, strategy=strategy, no_repeat_ngram_size=2))
    for row in banned:  # <bos> counts as part of the answer's history; the answer itself has no bigram twice
        assert len(set(ngrams(row, 2))) == len(ngrams(row, 2)), row
    assert banned != plain
