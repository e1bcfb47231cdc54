"""TextEncoder: BERT and Llama families from a local directory, trainable <image>/<Encode> over a frozen base,
padding-invariance, adapters at B=0 leave the output unchanged, the real MiniLM loads offline."""

from __future__ import annotations

import pytest
import torch

from maemi.model import ENCODE_TOKEN, IMAGE_TOKEN, DyLoRAFAConfig, TextConfig, TextEncoder
from tiny_text_models import save_tiny_bert, save_tiny_llama, one_thread  # noqa: F401 (autouse fixture)

FAMILIES = {"bert": (save_tiny_bert, ("query", "value")), "llama": (save_tiny_llama, ("q_proj", "v_proj"))}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    save, targets = FAMILIES[request.param]
    return save(tmp_path_factory.mktemp(request.param)), targets


def build(path, targets, lora=True, quantize_int8=True) -> TextEncoder:
    torch.manual_seed(0)
    lora_config = DyLoRAFAConfig(r_min=2, r_max=4, target_modules=targets) if lora else None
    return TextEncoder(TextConfig(path=str(path), quantize_int8=quantize_int8, lora=lora_config)).eval()


def tokenize(encoder: TextEncoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [encoder.tokenizer(p)["input_ids"] + [encoder.encode_token_id] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows])
    return ids, mask


def test_special_tokens_are_single_new_ids(family):
    encoder = build(*family)
    ids = encoder.tokenizer(f"Compare {IMAGE_TOKEN} with {IMAGE_TOKEN}")["input_ids"]
    assert ids.count(encoder.image_token_id) == 2
    assert encoder.tokenizer.convert_ids_to_tokens([encoder.encode_token_id]) == [ENCODE_TOKEN]


def test_only_special_embeddings_and_adapters_train(family):
    encoder = build(*family)
    ids, mask = tokenize(encoder, [f"{IMAGE_TOKEN} Describe the image."])
    encoder(ids, mask).sum().backward()
    assert encoder.special_embeddings.grad is not None and encoder.special_embeddings.grad.abs().sum() > 0
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert "special_embeddings" in trainable
    assert all(name == "special_embeddings" or ".lora_B." in name for name in trainable)
    assert not encoder.model.get_input_embeddings().weight.requires_grad
    # the pretrained tensors (rebuilt from the directory, never saved) exclude the adapters, include the int8 base
    assert not any("lora" in key for key in encoder.pretrained_keys)
    assert any(key.endswith("weight_int8") for key in encoder.pretrained_keys)


@pytest.mark.parametrize("quantize_int8", [True, False])
def test_everything_but_the_adapters_counts_as_pretrained(family, quantize_int8):
    encoder = build(*family, quantize_int8=quantize_int8)
    ours = set(encoder.model.state_dict()) - encoder.pretrained_keys
    assert ours and all(".lora_A" in key or ".lora_B." in key for key in ours)
    base_weight = ".base.weight_int8" if quantize_int8 else ".base.weight"
    assert any(key.endswith(base_weight) for key in encoder.pretrained_keys)


def test_right_padding_does_not_change_real_token_states(family):
    encoder = build(*family)
    prompts = [f"{IMAGE_TOKEN} Describe the image.", f"Compare {IMAGE_TOKEN} and {IMAGE_TOKEN}, what is the scale?"]
    ids, mask = tokenize(encoder, prompts)
    with torch.no_grad():
        batched = encoder(ids, mask)
        alone_ids, alone_mask = tokenize(encoder, prompts[:1])
        alone = encoder(alone_ids, alone_mask)
    n = int(alone_mask.sum())
    torch.testing.assert_close(batched[0, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_adapters_with_zero_B_leave_the_output_unchanged(family):
    path, targets = family
    ids, mask = tokenize(build(path, targets), [f"{IMAGE_TOKEN} Describe the image."])
    with torch.no_grad():
        plain, adapted = build(path, targets, lora=False)(ids, mask), build(path, targets)(ids, mask)
    assert torch.equal(plain, adapted)


def test_dropout_setting_turns_the_pretrained_dropout_off(tmp_path):
    path = save_tiny_bert(tmp_path / "bert")  # BERT's config: dropout 0.1 in every layer
    outputs = {}
    for dropout in (None, 0.0):
        torch.manual_seed(0)
        encoder = TextEncoder(TextConfig(path=str(path), lora=None, dropout=dropout)).train()
        ids, mask = tokenize(encoder, [f"{IMAGE_TOKEN} Describe the image."])
        outputs[dropout] = [encoder(ids, mask) for _ in range(2)]
    assert not torch.equal(*outputs[None])  # the pretrained dropout draws a new mask each pass
    assert torch.equal(*outputs[0.0])
    with pytest.raises(ValueError, match="dropout"):
        TextConfig(dropout=1.5)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextEncoder(TextConfig(path=str(tmp_path / "nowhere")))


def test_real_minilm_loads_offline_with_int8_and_adapters():
    encoder = TextEncoder(TextConfig()).eval()  # path None: the packaged all-MiniLM-L6-v2
    ids, mask = tokenize(encoder, [f"{IMAGE_TOKEN} What nanomaterial is shown?"])
    with torch.no_grad():
        states = encoder(ids, mask)
    assert states.shape == (1, ids.shape[1], 384) and torch.isfinite(states).all()
    assert len(encoder.weights_sha256) == 64
