"""Fine-tuning memory and speed of one text encoder: full fine-tuning, LoRA, LoRA-FA, DyLoRA-FA and DyQLoRA-FA.

Every row adapts the same encoder on the same batches (batch x seq tokens of the product's own prompts, every question
of every profile, packed into windows) with the same objective: predict the tokens at a fixed random 15% of the
positions through the frozen input-embedding matrix used as the output head (masked for an encoder, next-token for a
causal model; full fine-tuning trains that matrix too). Each row runs in its own process, so its memory is its own:

- load peak: the most resident memory while the model was built and prepared (the int8 rows quantise an fp32 model,
  so they momentarily hold it), after which unused heap is handed back (malloc_trim) and the kernel's peak counter is
  reset (/proc/self/clear_refs);
- model: resident memory once the model and optimiser are ready; training peak: the peak over the timed steps, in
  total and above the model. On CUDA: torch.cuda.memory_allocated / max_memory_allocated instead of RSS.

Rows: `full` (every parameter, Adam), `lora` (PEFT LoraConfig + get_peft_model, Adam), `lorafa` (the same PEFT model
with PEFT's LoRA-FA optimizer, peft.optimizers.create_lorafa_optimizer, which freezes A and projects B's gradient),
`dylora_fa` (maemi.model.lora over the fp32 base) and `dyqlora_fa` (the same over maemi.model.quant's int8 base, as the
TextEncoder builds it). Adapters: rank 16 (DyLoRA-FA: ranks 4..16, one sampled per step), dropout 0.05, on every
linear of the blocks. The loss is measured in eval mode (no dropout, DyLoRA at r_max) on the first batch before and
after the fixed number of steps. bf16 autocast follows the product's rule (on where the CPU or GPU runs bf16 natively).

A watchdog in the parent kills a row whose resident memory passes --max-gib (a shared machine must not meet the OOM
killer), and a row whose weights, gradients and optimiser state alone would exceed it is not started: both are
reported with the command that runs them where memory allows.

    .venv/bin/python benchmarks/finetune_memory.py --quick          # both encoders, tiny batch: a smoke run
    .venv/bin/python benchmarks/finetune_memory.py --encoders minilm  # the committed MiniLM rows
    .venv/bin/python benchmarks/finetune_memory.py --encoders llama1b --batch 32 --seq 128 --steps 4

References: Hu et al. 2021 (LoRA); Zhang et al. 2023 (LoRA-FA); Valipour et al. 2023 (DyLoRA); Dettmers et al. 2023
(QLoRA); PEFT's method-comparison benchmark (one process per method, peak memory, time, loss, versions in the JSON).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("full", "lora", "lorafa", "dylora_fa", "dyqlora_fa")
ENCODERS = ("minilm", "llama1b")
TARGETS = {"minilm": ("query", "key", "value", "dense"),
           "llama1b": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
RANK, DROPOUT = 16, 0.05
# DyLoRA-FA scales its update by alpha / b (rank normalisation). The shipped default alpha = 1 makes the update 1/16
# of LoRA's at r = 16 for the same B, so at the same learning rate it learns far slower; alpha = r_max compares the
# methods at equal scale (the PEFT rows use lora_alpha = r: scale 1). --dylora-alpha 1 measures the shipped setting.
DYLORA_ALPHA = float(RANK)
TARGET_FRACTION = 0.15  # of positions per window, as BERT's masked-LM
GIB = 1024**3


@dataclass
class RowConfig:
    encoder: str
    method: str
    batch: int
    seq: int
    steps: int
    quick: bool
    device: str
    bf16: str  # auto | on | off
    threads: int
    lr_full: float
    lr_adapters: float
    dylora_alpha: float
    seed: int = 0


# ------------------------------------------------------------------------------------------------ machine


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on: CPU, memory, GPU, package versions, date and commit."""
    import torch
    import transformers

    cpuinfo = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    cpuinfo = {key.strip(): value.strip() for key, value in cpuinfo.items()}
    cpu = cpuinfo.get("model name") or platform.processor() or platform.machine()
    mem_total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    # The same "model name" covers CPU generations that differ in speed here: one with native bf16 (AVX512-BF16/AMX)
    # ran the NEU config's bf16-autocast training 1.4x as fast as one without, which trains in float32 (23.3 against
    # 33.5 min, README); the demo's batches of 8 took about as long on both.
    from maemi.cpu import cpu_has_native_bf16

    return {"cpu": cpu, "cpu_family_model": f"{cpuinfo.get('cpu family', '?')}/{cpuinfo.get('model', '?')}",
            "native_bf16": cpu_has_native_bf16(), "cpu_count": os.cpu_count(), "memory_gib": round(mem_total / GIB, 1),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None,
            "device": device, "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit}


def mem_available_gib() -> float:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024 / GIB


def proc_status_gib(key: str, pid: int | str = "self") -> float:
    """VmRSS (resident now) or VmHWM (peak resident since start or the last reset) of a process, in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / GIB
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Hand freed heap back to the OS, then restart the kernel's peak-RSS counter at the current RSS."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM (and ru_maxrss)


# ------------------------------------------------------------------------------------------------ the row (child)


def build_encoder(name: str, quick: bool, vocab_size: int):
    """The encoder to fine-tune and whether it is causal. llama1b: TinyLlama-1.1B's shape with the MiniLM vocabulary
    (random weights: memory and speed do not depend on them); --quick shrinks it to a few million parameters."""
    import torch
    from transformers import AutoModel, LlamaConfig, LlamaModel

    from maemi.model.text import resolve_text_model_path

    if name == "minilm":
        model = AutoModel.from_pretrained(resolve_text_model_path(None), local_files_only=True, dtype=torch.float32)
        model.pooler = None  # unused by MAEMI's TextEncoder, which removes it too
        return model, False
    shape = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2) if quick else \
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4)
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(vocab_size=vocab_size, max_position_embeddings=2048, **shape)), True


def token_stream(tokenizer) -> list[int]:
    """Every question of every profile (the prompts MAEMI's text encoder reads), separated by [SEP]."""
    from maemi.teachers.questions import PROFILES

    stream: list[int] = []
    for profile in PROFILES.values():
        for question in profile.questions + tuple(profile.compare_questions.values()):
            stream += tokenizer(question.text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    return stream


def make_batches(tokenizer, causal: bool, config: RowConfig) -> list[dict]:
    """config.steps + 1 batches (the first also serves as the eval batch): windows at seeded offsets into the
    stream, TARGET_FRACTION of positions as targets (masked in the input for an encoder, next token for a causal LM)."""
    import torch

    stream = torch.tensor(token_stream(tokenizer))
    generator = torch.Generator().manual_seed(config.seed)
    n_targets = max(1, round(TARGET_FRACTION * config.seq))
    batches = []
    for _ in range(config.steps + 1):
        starts = torch.randint(0, len(stream), (config.batch,), generator=generator)
        index = (starts[:, None] + torch.arange(config.seq + 1)) % len(stream)  # wraps around: [B, T+1]
        window = stream[index]
        # [B, n] distinct positions per row; a causal model predicts t+1 from t, so positions < T
        positions = torch.rand(config.batch, config.seq, generator=generator).argsort(dim=1)[:, :n_targets]
        inputs = window[:, :-1].clone()
        if causal:
            targets = window.gather(1, positions + 1)
        else:
            targets = inputs.gather(1, positions)
            inputs.scatter_(1, positions, tokenizer.mask_token_id)
        batches.append({"input_ids": inputs, "positions": positions, "targets": targets})
    return batches


def target_loss(model, head_weight, batch: dict, device, bf16: bool):
    """Cross-entropy of the target tokens, logits = hidden state @ embedding matrix^T at the target positions."""
    import torch
    import torch.nn.functional as F

    inputs = batch["input_ids"].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state  # [B, T, H]
        picked = hidden.gather(1, batch["positions"].to(device)[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = picked @ head_weight.t()  # [B, n, V]: only the targets' logits, never [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].to(device).flatten())


def prepare(model, config: RowConfig):
    """Apply the row's method in place; returns (model, optimizer, trainable parameters)."""
    import torch

    from maemi.model.lora import DyLoRAFAConfig, add_dylora_fa_, dylora_parameters
    from maemi.model.quant import quantize_linears_

    targets = list(TARGETS[config.encoder])
    if config.method == "full":
        params = list(model.parameters())
        return model, torch.optim.Adam(params, lr=config.lr_full), params
    if config.method in ("lora", "lorafa"):
        from peft import LoraConfig, get_peft_model
        from peft.optimizers import create_lorafa_optimizer

        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=DROPOUT,
                                                 target_modules=targets))
        if config.method == "lorafa":
            optimizer = create_lorafa_optimizer(model, r=RANK, lora_alpha=RANK, lr=config.lr_adapters)
        else:
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr_adapters)
        return model, optimizer, [p for p in model.parameters() if p.requires_grad]
    if config.method == "dyqlora_fa":
        quantize_linears_(model, targets)
    # alpha = r_max: at rank r_max the update is scaled by 1, as PEFT's rows (lora_alpha = r); see DYLORA_ALPHA
    add_dylora_fa_(model, DyLoRAFAConfig(r_max=RANK, alpha=config.dylora_alpha, dropout=DROPOUT,
                                         target_modules=tuple(targets)))
    params = dylora_parameters(model)
    return model, torch.optim.Adam(params, lr=config.lr_adapters), params


def run_row(config: RowConfig) -> dict:
    import torch
    from transformers import AutoTokenizer

    from maemi.model.lora import sample_dylora_rank_, set_dylora_rank_
    from maemi.model.text import resolve_text_model_path
    from maemi.train.config import TrainConfig

    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    bf16 = TrainConfig(bf16=config.bf16).use_bf16(device)
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model_path(None), local_files_only=True)
    model, causal = build_encoder(config.encoder, config.quick, tokenizer.vocab_size)
    total_params = sum(p.numel() for p in model.parameters())
    model, optimizer, params = prepare(model.to(device), config)
    model.train()
    head = model.get_input_embeddings().weight
    dynamic = config.method.startswith("dy")
    rank_generator = torch.Generator().manual_seed(config.seed)
    batches = make_batches(tokenizer, causal, config)

    def eval_loss() -> float:
        model.eval()
        if dynamic:
            set_dylora_rank_(model, RANK)
        with torch.no_grad():
            loss = target_loss(model, head, batches[0], device, bf16).item()
        model.train()
        return loss

    loss_before = eval_loss()
    if cuda:
        torch.cuda.synchronize()
        load_peak = torch.cuda.max_memory_allocated() / GIB
        model_mem = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    else:
        load_peak = proc_status_gib("VmHWM")
        reset_peak_rss()
        model_mem = proc_status_gib("VmRSS")

    seconds, losses = [], []
    torch.manual_seed(config.seed)  # dropout masks
    for batch in batches[1:]:
        start = time.perf_counter()
        if dynamic:
            sample_dylora_rank_(model, rank_generator)
        loss = target_loss(model, head, batch, device, bf16)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # None: unused DyLoRA columns get no Adam update
        losses.append(loss.item())
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else proc_status_gib("VmHWM")
    trainable = sum(p.numel() for p in params)  # DyLoRA-FA: B's r_max columns (a step trains its first b)
    return {"encoder": config.encoder, "method": config.method, "params": total_params, "trainable": trainable,
            "bf16": bf16, "load_peak_gib": load_peak, "model_gib": model_mem, "peak_gib": peak,
            "peak_above_model_gib": peak - model_mem,
            "s_per_step": statistics.median(seconds[1:] or seconds), "step_seconds": seconds,
            "loss_before": loss_before, "loss_after": eval_loss(), "train_losses": losses}


# ------------------------------------------------------------------------------------------------ the parent


def static_gib(method: str, params: float) -> float:
    """A lower bound on a row's memory: weights, gradients and Adam's two moments (fp32), nothing for activations."""
    return params * {"full": 16, "lora": 4, "lorafa": 4, "dylora_fa": 4, "dyqlora_fa": 1}[method] / GIB


APPROX_PARAMS = {("minilm", False): 22.6e6, ("minilm", True): 22.6e6, ("llama1b", False): 1.03e9,
                 ("llama1b", True): 11e6}


def run_child(config: RowConfig, max_gib: float) -> dict:
    """Run one row in a fresh process; kill it if its resident memory passes max_gib."""
    command = [sys.executable, __file__, "--child", json.dumps(asdict(config))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        watched_peak = 0.0
        while child.poll() is None:
            try:
                watched_peak = max(watched_peak, proc_status_gib("VmRSS", child.pid))
            except (FileNotFoundError, KeyError, ProcessLookupError):
                pass
            if watched_peak > max_gib:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return {"skipped": f"killed: resident memory passed the {max_gib:.1f} GiB limit"}
            time.sleep(0.1)
        out.seek(0), err.seek(0)
        if child.returncode != 0:
            tail = err.read()[-2000:]
            raise RuntimeError(f"row {config.encoder}/{config.method} failed (exit {child.returncode}):\n{tail}")
        return json.loads(out.read().strip().splitlines()[-1])


def ratios(rows: list[dict]) -> dict:
    """DyQLoRA-FA against full fine-tuning and LoRA, measured side by side: the issue's targets."""
    by = {row["method"]: row for row in rows if "skipped" not in row}
    q = by.get("dyqlora_fa")
    if q is None:
        return {}
    out = {}
    for other in ("full", "lora"):
        if other in by:
            out[f"peak_vs_{other}"] = q["peak_gib"] / by[other]["peak_gib"]
    if "lora" in by:
        out["step_time_vs_lora"] = q["s_per_step"] / by["lora"]["s_per_step"]
        out["loss_after_minus_lora"] = q["loss_after"] - by["lora"]["loss_after"]
    full = next((row for row in rows if row["method"] == "full"), None)
    if full is not None and "skipped" in full and "static_gib" in full:
        # full fine-tuning's weights + grads + Adam alone bound its peak from below, so this bounds the ratio above
        out["peak_vs_full_at_most"] = q["peak_gib"] / full["static_gib"]
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Fine-tuning memory and speed ({'quick' if result['quick'] else 'full'} run)", "",
             f"Last run {m['date']} on {m['cpu']} ({m['cpu_count']} cores, {m['memory_gib']} GiB)"
             + (f", GPU {m['gpu']}" if m["gpu"] else "") + f", device {m['device']}, {result['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; commit {m['commit']}.", "",
             "Memory is the process's resident set on CPU (torch.cuda.max_memory_allocated on GPU). CPU timings are "
             "noisy here (cores shared with other jobs): compare rows of one table, measured side by side in one run, "
             "not numbers across runs. Written by `benchmarks/finetune_memory.py`.", ""]
    for encoder in result["encoders"]:
        section = result["encoders"][encoder]
        sm = section["machine"]
        lines += [f"## {encoder}: {section['params'] / 1e6:,.1f} M parameters, batch {section['batch']} x "
                  f"{section['seq']} tokens, {section['steps']} steps, bf16 autocast {section['bf16']}", "",
                  f"Run {sm['date']}, device {sm['device']}, {section['threads']} threads, commit {sm['commit']}.", ""]
        if section.get("note"):
            lines += [section["note"], ""]
        lines += ["| method | trainable | load peak GiB | model GiB | training peak GiB | above model GiB | s/step "
                  "| loss before | loss after |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in section["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['method']} | | | | not run: {row['skipped']} | | | | |")
                continue
            lines.append(f"| {row['method']} | {row['trainable']:,} | {row['load_peak_gib']:.2f} | "
                         f"{row['model_gib']:.2f} | {row['peak_gib']:.2f} | {row['peak_above_model_gib']:.2f} | "
                         f"{row['s_per_step']:.2f} | {row['loss_before']:.3f} | {row['loss_after']:.3f} |")
        r = section["ratios"]
        if r:
            parts = []
            if "peak_vs_full" in r:
                parts.append(f"peak {r['peak_vs_full']:.2f}x full fine-tuning (target <= 0.5)")
            if "peak_vs_full_at_most" in r:
                parts.append(f"peak at most {r['peak_vs_full_at_most']:.2f}x full fine-tuning (its weights, "
                             f"gradients and Adam state alone; target <= 0.5)")
            if "peak_vs_lora" in r:
                parts.append(f"{r['peak_vs_lora']:.2f}x LoRA (target <= 0.8)")
            if "step_time_vs_lora" in r:
                parts.append(f"step time {r['step_time_vs_lora']:.2f}x LoRA (target <= 1.3)")
            if "loss_after_minus_lora" in r:
                parts.append(f"loss after {r['loss_after_minus_lora']:+.3f} vs LoRA (target <= 0)")
            lines += ["", "DyQLoRA-FA: " + "; ".join(parts) + "."]
        for row in section["rows"]:
            if "command" in row:
                lines += ["", f"To run `{row['method']}` where memory allows: `{row['command']}`"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny batch and steps, a small Llama: a smoke run")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help=f"comma-separated, of {ENCODERS}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {METHODS}")
    parser.add_argument("--batch", type=int, default=None, help="default 32 (quick: 4)")
    parser.add_argument("--seq", type=int, default=None, help="default 128 (quick: 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after the first; default 10 (quick: 2)")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--lr-full", type=float, default=1e-4)
    parser.add_argument("--lr-adapters", type=float, default=1e-3)
    parser.add_argument("--dylora-alpha", type=float, default=DYLORA_ALPHA)
    parser.add_argument("--max-gib", type=float, default=14.0, help="kill a row whose resident memory passes this")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (a .md is written beside it); default results/finetune_memory.json, or a "
                             "temporary folder for --quick")
    parser.add_argument("--note", default=None, help="a sentence for this run's sections, e.g. why the batch is smaller")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a row's config, in the child process
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_row(RowConfig(**json.loads(args.child)))))
        return

    import torch

    from maemi.fileio import atomic_write_json, atomic_write_text

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (4 if args.quick else 32)
    seq = args.seq or (64 if args.quick else 128)
    steps = args.steps or (2 if args.quick else 10)
    out = args.out or (Path(tempfile.gettempdir()) / "maemi-bench" / "finetune_memory.quick.json" if args.quick
                       else RESULTS / "finetune_memory.json")
    encoders = [e for e in args.encoders.split(",") if e]
    methods = [m for m in args.methods.split(",") if m]
    for name, allowed in (("encoder", ENCODERS), ("method", METHODS)):
        bad = [x for x in (encoders if name == "encoder" else methods) if x not in allowed]
        if bad:
            parser.error(f"unknown {name}(s) {bad}; choose from {allowed}")

    result = {"benchmark": "finetune_memory", "quick": args.quick, "threads": args.threads,
              "machine": machine_info(args.device), "lr": {"full": args.lr_full, "adapters": args.lr_adapters},
              "dylora_alpha": args.dylora_alpha,
              "rank": RANK, "dropout": DROPOUT, "target_fraction": TARGET_FRACTION, "encoders": {}}
    for encoder in encoders:
        rows = []
        for method in methods:
            config = RowConfig(encoder, method, batch, seq, steps + 1, args.quick, args.device, args.bf16,
                               args.threads, args.lr_full, args.lr_adapters, args.dylora_alpha)
            own = ["--encoders", encoder, "--methods", method, "--batch", str(batch), "--seq", str(seq),
                   "--steps", str(steps)] + (["--quick"] if args.quick else [])
            command = shlex.join(["python", "benchmarks/finetune_memory.py", *own, "--max-gib", "<GiB>"])
            limit = min(args.max_gib, mem_available_gib() - 1.0) if not args.device.startswith("cuda") \
                else float("inf")
            need = static_gib(method, APPROX_PARAMS[encoder, args.quick])
            print(f"[{encoder}/{method}] batch {batch} x {seq}, {steps + 1} steps ...", flush=True)
            if need > limit:
                row = {"method": method, "static_gib": need, "command": command,
                       "skipped": f"weights, gradients and Adam state alone need {need:.1f} GiB > {limit:.1f} GiB"}
            else:
                row = run_child(config, limit)
                if "skipped" in row:
                    row.update(method=method, command=command)
            print("   ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if not isinstance(v, list)}, flush=True)
            rows.append(row)
        ran = [row for row in rows if "skipped" not in row]
        result["encoders"][encoder] = {
            "machine": result["machine"], "threads": args.threads, "batch": batch, "seq": seq, "steps": steps + 1, "bf16": ran[0]["bf16"] if ran else None,
            "params": ran[0]["params"] if ran else APPROX_PARAMS[encoder, args.quick], "rows": rows,
            "note": args.note,
            "ratios": ratios(rows)}
    if out.is_file() and not args.quick:  # keep the other encoders' sections (each names its own run)
        previous = json.loads(out.read_text(encoding="utf-8"))
        result["encoders"] = {**previous.get("encoders", {}), **result["encoders"]}
    text = markdown(result)
    print(text)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
