"""8-bit weight-only quantisation of frozen linear layers (the "Q" of DyQLoRA-FA).

Weights are stored as int8 with one float scale per output row (symmetric absmax), activations stay in full precision
(fp32, or the autocast dtype). The base weights are frozen, so training only needs the gradient with respect to the
input, grad_x = grad_y @ W; the backward recomputes W from the int8 copy instead of keeping a full-precision one.

Why hand-written (measured in ../shared/notes/dependencies.md): torchao's int8 weight-only `quantize_` keeps a
full-precision weight for backward (+989 MiB per GiB of fp32 model in a training step), which defeats the point when
adapters are trained on top; bitsandbytes' `Linear8bitLt` on CPU also quantises activations (2.6% error). This module
needs nothing but PyTorch and runs on CPU and CUDA alike.

References:
- Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale" (absmax row-wise int8).
- Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (adapters trained over a frozen quantised base).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is unused so that q and -q are both representable


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: the autocast dtype when autocast is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class Int8LinearFunction(torch.autograd.Function):
    """y = x @ (W_q * scale)^T + b, with a backward that saves only W_q (int8) and the scales.

    W_q is frozen, so there is no weight gradient; grad_x = (grad_y * scale) @ W_q. Applying the per-row scale on the
    output side means the only transient full-precision matrix is W_q cast to the compute dtype, freed right after use.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        dtype = x.dtype  # the caller has already cast x to the compute dtype
        # Autocast off: we chose the dtype ourselves, and the backward must run the same way.
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(x, weight_int8.to(dtype)) * weight_scale.to(dtype)  # [..., out]
            if bias is not None:
                y = y + bias.to(dtype)
        ctx.save_for_backward(weight_int8, weight_scale)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        weight_int8, weight_scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            dtype = grad_y.dtype
            with torch.autocast(grad_y.device.type, enabled=False):
                grad_x = (grad_y * weight_scale.to(dtype)) @ weight_int8.to(dtype)  # [..., out] @ [out, in]
        return grad_x, None, None, None


class Int8Linear(nn.Module):
    """A frozen nn.Linear stored as int8 weights [out, in] + float32 scales [out]; the bias stays full precision.

    All three are buffers, not parameters: nothing here is trained, and they still go into the state dict.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach().float()  # [out, in]
        absmax = weight.abs().amax(dim=1)  # [out]
        # An all-zero row would give scale 0 and 0/0 below; any scale reproduces it exactly, so take 1.
        scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
        weight_int8 = torch.round(weight / scale.unsqueeze(1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        bias = linear.bias
        quantized = cls(linear.in_features, linear.out_features, bias=bias is not None, device=weight.device,
                        bias_dtype=bias.dtype if bias is not None else torch.float32)
        quantized.weight_int8.copy_(weight_int8)
        quantized.weight_scale.copy_(scale)
        if bias is not None:
            quantized.bias.copy_(bias.detach())
        return quantized

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full-precision weight [out, in] this layer stands for (a new tensor; the layer never keeps one)."""
        return (self.weight_int8.to(torch.float32) * self.weight_scale.unsqueeze(1)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Int8LinearFunction.apply(x.to(compute_dtype(x)), self.weight_int8, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def matches_target(name: str, target_modules: Sequence[str] | None) -> bool:
    """True if the dotted module `name` ends with one of `target_modules` as a whole name component (None: any)."""
    if target_modules is None:
        return True
    return any(name == target or name.endswith("." + target) for target in target_modules)


def replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child_name, new)


def quantize_linears_(module: nn.Module, target_modules: Sequence[str] | None = None) -> list[str]:
    """Replace, in place, every nn.Linear of `module` whose name ends with one of `target_modules` (None: every
    nn.Linear) by an Int8Linear. Returns the dotted names replaced."""
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules must be a sequence of names, not the string {target_modules!r}")
    names = [name for name, child in module.named_modules()
             if name and isinstance(child, nn.Linear) and matches_target(name, target_modules)]
    if target_modules is not None and not names:
        raise ValueError(f"no nn.Linear in {type(module).__name__} matches target_modules={list(target_modules)}")
    for name in names:
        replace_submodule(module, name, Int8Linear.from_linear(module.get_submodule(name)))
    return names
