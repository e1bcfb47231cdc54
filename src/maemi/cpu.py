"""What this machine's CPU can do, where it decides how a model runs."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (without it, bf16 autocast on CPU is emulated and slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private helper: absent from some builds
        return False
