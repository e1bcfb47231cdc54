"""FusionDecoder: identity with the gates at zero, image gates at zero cut the image off, media masking, causality,
incremental (cached) decoding equals one full pass; the same for prefix fusion (the ablation's alternative)."""

from __future__ import annotations

import torch

from maemi.model import DecoderConfig, FusionDecoder, GatedCrossAttentionBlock
from tiny_text_models import one_thread  # noqa: F401 (autouse fixture)

IMAGE_DIM, TEXT_DIM, VOCAB = 16, 24, 50


def make_decoder(image_fusion: str = "cross_attention") -> FusionDecoder:
    """Gates at 0, Flamingo's initialisation (ours defaults to 1: see DecoderConfig.gate_init)."""
    torch.manual_seed(0)
    config = DecoderConfig(layers=2, heads=2, head_dim=8, max_len=16, gate_init=0.0, image_fusion=image_fusion)
    return FusionDecoder(config, VOCAB, IMAGE_DIM, TEXT_DIM).eval()


def open_gates(decoder: FusionDecoder, image: float | None = 0.7) -> None:
    """Give the prompt and feed-forward gates (and the image gates, unless None) trained-looking values."""
    for block in decoder.blocks:
        if isinstance(block, GatedCrossAttentionBlock):
            block.prompt_gate.data.fill_(0.5)
            block.ff_gate.data.fill_(-0.8)
            if image is not None and block.attends_to_image:
                block.image_gate.data.fill_(image)


def memory_inputs(images_per_sample=(2, 1), prompt_len=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, m, n = len(images_per_sample), max(images_per_sample), 5
    image_mask = torch.arange(m)[None] < torch.tensor(images_per_sample)[:, None]
    prompt_mask = torch.ones(b, prompt_len, dtype=torch.bool)
    prompt_mask[-1, -2:] = False  # right padding in the last sample
    return dict(image_tokens=torch.randn(b, m, n, IMAGE_DIM, generator=g), image_mask=image_mask,
                image_markers=torch.randn(b, m, TEXT_DIM, generator=g),
                prompt_states=torch.randn(b, prompt_len, TEXT_DIM, generator=g), prompt_mask=prompt_mask)


def logits(decoder, inputs, tokens):
    with torch.no_grad():
        return decoder(tokens, decoder.start(decoder.build_memory(**inputs)))


TOKENS = torch.tensor([[1, 7, 9, 4], [1, 3, 3, 8]])


def test_gated_cross_attention_block_is_the_identity_with_gates_at_zero():
    decoder = make_decoder()
    memory = decoder.build_memory(**memory_inputs())
    block = decoder.blocks[0]
    x = torch.randn(2, 4, decoder.config.dim)
    with torch.no_grad():
        assert torch.equal(block(x, block.keys_values(memory), memory), x)


def test_image_gates_at_zero_make_the_output_independent_of_the_image():
    decoder = make_decoder()
    open_gates(decoder, image=0.0)  # prompt and feed-forward paths open, image path closed
    inputs, other = memory_inputs(), memory_inputs()
    other["image_tokens"] = torch.randn_like(other["image_tokens"]) * 3
    other["image_markers"] = torch.randn_like(other["image_markers"])
    assert torch.equal(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS))
    open_gates(decoder, image=0.7)  # the control: with the image path open the same change shows
    assert not torch.allclose(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS))


def test_the_prompt_reaches_the_output_once_its_gate_opens():
    decoder = make_decoder()
    inputs, other = memory_inputs(), memory_inputs()
    other["prompt_states"] = torch.randn_like(other["prompt_states"])
    assert torch.equal(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS))  # all gates at 0
    open_gates(decoder, image=0.0)
    assert not torch.allclose(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS))


def test_padded_image_slots_and_padded_prompt_positions_are_masked():
    decoder = make_decoder()
    open_gates(decoder)
    inputs, other = memory_inputs((2, 1)), memory_inputs((2, 1))
    other["image_tokens"][1, 1] = 100.0  # sample 1 has one image: slot 1 is padding
    other["image_markers"][1, 1] = 100.0
    other["prompt_states"][1, -2:] = 100.0  # sample 1's last two prompt positions are padding
    torch.testing.assert_close(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS), atol=1e-6, rtol=0)


def test_a_sample_without_images_gets_nothing_from_the_image_path():
    decoder = make_decoder()
    open_gates(decoder)
    inputs = memory_inputs((1, 0))
    out = logits(decoder, inputs, TOKENS)
    assert torch.isfinite(out).all()
    for block in decoder.blocks:
        if isinstance(block, GatedCrossAttentionBlock):
            block.image_gate.data.zero_()
    torch.testing.assert_close(out[1], logits(decoder, inputs, TOKENS)[1], atol=1e-6, rtol=0)


def test_image_order_matters_through_the_image_markers():
    decoder = make_decoder()
    open_gates(decoder)
    inputs = memory_inputs((2, 2))
    swapped = dict(inputs, image_tokens=inputs["image_tokens"].flip(1))  # same images, other <image> positions
    assert not torch.allclose(logits(decoder, inputs, TOKENS), logits(decoder, swapped, TOKENS))


def test_decoding_is_causal():
    decoder = make_decoder()
    open_gates(decoder)
    inputs = memory_inputs()
    changed = TOKENS.clone()
    changed[:, 2:] = 11
    a, b = logits(decoder, inputs, TOKENS), logits(decoder, inputs, changed)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2:], b[:, 2:])


def test_token_by_token_with_the_cache_equals_one_full_pass():
    decoder = make_decoder()
    open_gates(decoder)
    inputs = memory_inputs()
    full = logits(decoder, inputs, TOKENS)
    with torch.no_grad():
        cache = decoder.start(decoder.build_memory(**inputs))
        steps = torch.cat([decoder(TOKENS[:, i: i + 1], cache) for i in range(TOKENS.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    assert cache.length == TOKENS.shape[1]


# ------------------------------------------------------------------------------------------------ prefix fusion


def prefix_decoder() -> FusionDecoder:
    decoder = make_decoder("prefix")
    open_gates(decoder)
    return decoder


def test_prefix_fusion_has_no_image_cross_attention_and_still_sees_the_image():
    decoder = prefix_decoder()
    assert not any(name.startswith("blocks.0.image_") for name, _ in decoder.named_parameters())
    inputs, other = memory_inputs((2, 1)), memory_inputs((2, 1))
    other["image_tokens"][0, 0] += 1.0
    out, changed = logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS)
    assert not torch.allclose(out[0], changed[0]) and torch.equal(out[1], changed[1])


def test_prefix_fusion_masks_padded_image_slots_and_survives_a_sample_without_images():
    decoder = prefix_decoder()
    inputs, other = memory_inputs((2, 1)), memory_inputs((2, 1))
    other["image_tokens"][1, 1] = 100.0  # padding
    other["image_markers"][1, 1] = 100.0
    torch.testing.assert_close(logits(decoder, inputs, TOKENS), logits(decoder, other, TOKENS), atol=1e-6, rtol=0)
    none = memory_inputs((1, 0))
    blank = dict(none, image_tokens=none["image_tokens"] * 0 + 5.0)
    out = logits(decoder, none, TOKENS)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], logits(decoder, blank, TOKENS)[1], atol=1e-6, rtol=0)


def test_prefix_fusion_is_causal_and_its_cache_equals_one_full_pass():
    decoder = prefix_decoder()
    inputs = memory_inputs()
    full = logits(decoder, inputs, TOKENS)
    changed = TOKENS.clone()
    changed[:, 2:] = 11
    assert torch.equal(full[:, :2], logits(decoder, inputs, changed)[:, :2])
    with torch.no_grad():
        cache = decoder.start(decoder.build_memory(**inputs))
        steps = torch.cat([decoder(TOKENS[:, i: i + 1], cache) for i in range(TOKENS.shape[1])], dim=1)
        repeated = decoder.start(decoder.build_memory(**inputs)).repeat_each(3)  # candidates of classification
        each = decoder(TOKENS.repeat_interleave(3, dim=0), repeated)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(each, full.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-5)
