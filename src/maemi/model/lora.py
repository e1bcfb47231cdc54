"""DyLoRA-FA: low-rank adapters with a frozen random A, a trained B, and a rank sampled at every training step.

    y = base(x) + scale(b) * B[:, :b] @ A[:b, :] @ dropout(x)

- LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen base plus a low-rank update
  whose up-projection starts at zero, so training starts from the pretrained function.
- LoRA-FA (Zhang et al. 2023, "LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning"):
  A is frozen at its random init and only B is trained. B's gradient then needs only the r-dimensional A x, so the
  adapter path keeps A x for backward instead of the layer input x (activation memory). Plain autograd already skips
  x when A is frozen, but the adapter's dropout then keeps an input-sized mask (float32 on CPU); our Function redraws
  the mask from a seed in backward, so nothing input-sized is kept.
- DyLoRA (Valipour et al. 2023, "DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free
  Low-Rank Adaptation"): each training step samples one rank b in [r_min, r_max] and uses the truncated matrices, so
  after training the adapter works at any rank in the range; the update is scaled by alpha / b ("rank
  normalisation").

Layout. Our B is [out, r_max] and A is [r_max, in], as PyTorch's nn.Linear stores weights (out, in). The MAEMI paper
writes the transposes (A: d_in x r, B: r x d_out) and so truncates A[:, :b], B[:b, :]; here that is A[:b, :] and
B[:, :b]. "Rank slice i" is row i of A and column i of B.

B is held as r_max parameters, one [out] column each (lora_B[i] is B[:, i]). A step at rank b touches only
lora_B[:b]; the others get no gradient (grad None), and torch.optim skips parameters without a gradient. With one
[out, r_max] tensor they would get a zero gradient instead, and Adam's momentum would still move columns that the
step never used, breaking "B changes only in its first b rank slices". So: zero_grad(set_to_none=True) (the default)
between steps, and DistributedDataParallel needs find_unused_parameters=True.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from maemi.model.quant import Int8Linear, compute_dtype, matches_target, replace_submodule


@dataclass
class DyLoRAFAConfig:
    r_min: int = 4
    r_max: int = 16
    alpha: float = 1.0  # scale = alpha / b with rank normalisation (the paper: about 1/r), else alpha / r_max
    dropout: float = 0.05  # on the adapter's input only
    # Name suffixes of the linears to adapt. MiniLM (BERT): query, key, value, dense (attention output, intermediate,
    # output). Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    rank_normalization: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.r_min <= self.r_max:
            raise ValueError(f"DyLoRA-FA needs 1 <= r_min <= r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DyLoRA-FA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty sequence of names, got {self.target_modules!r}")
        self.target_modules = tuple(self.target_modules)  # a list from JSON becomes the tuple it was


def dropout_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> torch.Tensor:
    """Bernoulli keep-mask (True = keep, probability 1 - p with p rounded to a multiple of 2**-16) drawn from a
    generator seeded with `seed`: the backward redraws the same mask from the seed instead of saving an input-sized
    mask.

    Four 16-bit uniforms are cut from each random 64-bit word: on a CPU the generator makes one number per call. The
    adapters' dropout was ~20% of a MiniLM training step, about a third of it `torch.rand` (one number per element);
    this draws the mask in less than half that time (measured)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    n = math.prod(shape)
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), generator=generator, device=device, dtype=torch.int64)
    uniform16 = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return uniform16 >= round(p * 65536) - 32768  # P(keep) = 1 - round(p * 65536) / 65536


class DyLoRAFAFunction(torch.autograd.Function):
    """scale * dropout(x) @ A_b^T @ B_b^T that saves A x ([N, b]) for backward, never x.

    A_b [b, in] is frozen; B_b [out, b] gets a gradient; x gets one through A and B. With p > 0 the dropout mask is
    redrawn in backward from `seed`.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float, p: float,
                seed: int) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the caller cast everything to the compute dtype
            if p > 0:
                x = x * dropout_mask(x.shape, p, seed, x.device) / (1 - p)
            ax = x @ lora_A.t()  # [..., in] @ [in, b] -> [..., b]
            y = (ax @ lora_B.t()) * scale  # [..., b] @ [b, out] -> [..., out]
        ctx.save_for_backward(ax, lora_A, lora_B)
        ctx.scale, ctx.p, ctx.seed = scale, p, seed
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        ax, lora_A, lora_B = ctx.saved_tensors
        grad_x = grad_B = None
        with torch.autocast(grad_y.device.type, enabled=False):
            grad_ax = (grad_y * ctx.scale).to(ax.dtype)  # [..., out]
            if ctx.needs_input_grad[2]:
                # sum over all leading dims: [out, N] @ [N, b] -> [out, b]
                grad_B = grad_ax.reshape(-1, grad_ax.shape[-1]).t() @ ax.reshape(-1, ax.shape[-1])
            if ctx.needs_input_grad[0]:
                grad_x = (grad_ax @ lora_B) @ lora_A  # [..., out] @ [out, b] @ [b, in] -> [..., in]
                if ctx.p > 0:
                    grad_x = grad_x * dropout_mask(grad_x.shape, ctx.p, ctx.seed, grad_x.device) / (1 - ctx.p)
        return grad_x, None, grad_B, None, None, None


class DyLoRAFALinear(nn.Module):
    """A frozen base linear (nn.Linear or Int8Linear) plus a DyLoRA-FA adapter; `rank` is the rank b in use."""

    def __init__(self, base: nn.Module, config: DyLoRAFAConfig) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, Int8Linear)):
            raise TypeError(f"DyLoRA-FA wraps nn.Linear or Int8Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.r_min, self.r_max = config.r_min, config.r_max
        self.alpha, self.dropout, self.rank_normalization = config.alpha, config.dropout, config.rank_normalization
        in_features, out_features = base.in_features, base.out_features
        device = base.weight.device if isinstance(base, nn.Linear) else base.weight_int8.device
        # A: frozen random normal with std 1/sqrt(in), so A x has O(1) entries for O(1) inputs. A buffer, not a
        # parameter: never trained, never seen by an optimiser, but saved with the adapter to stay reproducible.
        self.register_buffer("lora_A", torch.randn(self.r_max, in_features, device=device) / math.sqrt(in_features))
        # B: zero at init so the wrapped layer starts as the base; one parameter per rank slice (see module doc).
        self.lora_B = nn.ParameterList(
            nn.Parameter(torch.zeros(out_features, device=device)) for _ in range(self.r_max))
        self.rank = self.r_max

    @property
    def in_features(self) -> int:
        return self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B[0].shape[0]

    def check_rank(self, rank: int) -> None:
        if not (isinstance(rank, int) and self.r_min <= rank <= self.r_max):
            raise ValueError(f"DyLoRA-FA rank must be an integer in [r_min, r_max] = [{self.r_min}, {self.r_max}], "
                             f"got {rank!r}")

    def set_rank(self, rank: int) -> None:
        self.check_rank(rank)
        self.rank = rank

    def scale(self, rank: int) -> float:
        return self.alpha / (rank if self.rank_normalization else self.r_max)

    def lora_B_matrix(self, rank: int | None = None) -> torch.Tensor:
        """B truncated to its first `rank` columns (default r_max): [out, rank]."""
        return torch.stack(list(self.lora_B[: rank or self.r_max]), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.rank
        dtype = compute_dtype(x)
        p = self.dropout if self.training else 0.0
        # The seed comes from torch's global generator, so torch.manual_seed makes the dropout reproducible.
        seed = int(torch.randint(0, 2**62, (1,)).item()) if p > 0 else 0
        update = DyLoRAFAFunction.apply(x.to(dtype), self.lora_A[:b].to(dtype), self.lora_B_matrix(b).to(dtype),
                                        self.scale(b), p, seed)
        return self.base(x) + update

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, r_min={self.r_min}, r_max={self.r_max}, alpha={self.alpha}, "
                f"dropout={self.dropout}, rank_normalization={self.rank_normalization}")


def dylora_modules(module: nn.Module) -> list[DyLoRAFALinear]:
    adapters = [m for m in module.modules() if isinstance(m, DyLoRAFALinear)]
    if not adapters:
        raise ValueError(f"{type(module).__name__} has no DyLoRA-FA adapters; call add_dylora_fa_ first")
    return adapters


def add_dylora_fa_(module: nn.Module, config: DyLoRAFAConfig) -> list[str]:
    """Wrap, in place, every nn.Linear / Int8Linear of `module` whose name ends with one of config.target_modules, and
    freeze every other parameter of `module`. Returns the dotted names wrapped."""
    names = [name for name, child in module.named_modules()
             if name and isinstance(child, (nn.Linear, Int8Linear)) and matches_target(name, config.target_modules)]
    if not names:
        raise ValueError(f"no nn.Linear or Int8Linear in {type(module).__name__} matches "
                         f"target_modules={list(config.target_modules)}")
    module.requires_grad_(False)
    for name in names:
        replace_submodule(module, name, DyLoRAFALinear(module.get_submodule(name), config))
    return names


def set_dylora_rank_(module: nn.Module, rank: int) -> None:
    """Every adapter in `module` uses `rank` from now on (at inference: any rank in [r_min, r_max])."""
    adapters = dylora_modules(module)
    for adapter in adapters:
        adapter.check_rank(rank)  # all or nothing: no adapter changes if one refuses
    for adapter in adapters:
        adapter.rank = rank


def sample_dylora_rank_(module: nn.Module, generator: torch.Generator | random.Random) -> int:
    """One DyLoRA training step: draw b uniformly from [r_min, r_max], set it on every adapter, return it."""
    ranges = {(adapter.r_min, adapter.r_max) for adapter in dylora_modules(module)}
    if len(ranges) != 1:
        raise ValueError(f"adapters in {type(module).__name__} disagree on [r_min, r_max]: {sorted(ranges)}")
    ((r_min, r_max),) = ranges
    if isinstance(generator, random.Random):
        rank = generator.randint(r_min, r_max)
    elif isinstance(generator, torch.Generator):
        rank = int(torch.randint(r_min, r_max + 1, (1,), generator=generator).item())
    else:
        raise TypeError(f"generator must be torch.Generator or random.Random, got {type(generator).__name__}")
    set_dylora_rank_(module, rank)
    return rank


def dylora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable tensors: every adapter's B columns."""
    return [param for adapter in dylora_modules(module) for param in adapter.lora_B]
