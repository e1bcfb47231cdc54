"""Training and inference throughput of the demo configuration, and training MFU against this machine's matmul peak.

Everything runs in one process on one corpus: a few synthetic micrographs per class (maemi.data.synth) taught by the
offline measure teacher (the demo's data, smaller), and the model of the shipped `demo` config with its answer
vocabulary trained on those answers. Weights are as initialised: speed does not depend on them.

- Training: optimizer steps of the demo config (batch 32, one micro-batch, bf16 autocast where the hardware runs it
  natively, a DyLoRA rank per step, gradient clipping, Adam), built from the trainer's own parts; batch assembly
  (augmentation, collation) is inside the timed step as in `maemi train`. The ViT warm start is not included. FLOPs of
  one step (forward and backward; matmuls, convolutions and attention) are counted by
  torch.utils.flop_counter.FlopCounterMode; MFU = counted FLOPs per second / the peak of a large torch.matmul
  measured in the same run, in the dtype training computes in (and in fp32 for reference).
- Inference, in evaluation mode with the adapters at r_max as maemi.assistant.Assistant sets it up, fp32: zero-shot
  classification images/s through Assistant.classify at batch 1 and batched; caption tokens/s at batch 1 and batched,
  with the decoder's KV cache on and off (GenerationConfig.use_cache), timing what Assistant.caption runs (prompt
  and image encoding, then greedy decoding by maemi.model.generate.generate_ids) except that answers are forced to
  exactly --new-tokens tokens by decoding with an end-of-answer id no token has, so every row decodes the same
  length. Images are preprocessed once beforehand: decoding files is not timed.

CPU timings are noisy on a shared machine: the ratios (batched / batch 1, cache on / off, MFU against a peak measured
minutes apart) are what the targets are about, and they are measured side by side in one run.

    .venv/bin/python benchmarks/throughput.py --quick   # a smoke run, under a couple of minutes
    .venv/bin/python benchmarks/throughput.py           # writes results/throughput.json and .md

References: nanoGPT's MFU estimate (achieved FLOPs / peak); PyTorch's FlopCounterMode; Pope et al. 2022, "Efficiently
Scaling Transformer Inference" (why a KV cache makes each decoding step cost one token, not the whole prefix).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from finetune_memory import RESULTS, machine_info  # the same machine record as the fine-tuning benchmark

TARGETS = {"kv_cache_speedup": 3.0, "batched_classify_speedup": 4.0, "mfu": 0.30}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` n x n x n matmuls (the first, warm-up one not counted)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


class MatmulShapes(TorchDispatchMode):
    """Records the (m, k, n, dtype, batch) of every matrix product run under it, with how often each occurs."""

    OPS = {torch.ops.aten.mm.default: (0, 1), torch.ops.aten.addmm.default: (1, 2),
           torch.ops.aten.bmm.default: (0, 1), torch.ops.aten.baddbmm.default: (1, 2)}

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            a, b = (args[i] for i in self.OPS[func])
            batch = a.shape[0] if a.ndim == 3 else 1
            self.counts[(batch, a.shape[-2], a.shape[-1], b.shape[-1], a.dtype)] += 1
        return func(*args, **(kwargs or {}))


def matmul_ceiling(shapes: Counter, device: torch.device, repeats: int = 3) -> dict:
    """Each recorded product timed alone on random data (best of `repeats`): their FLOPs over their summed times is
    the rate the step's matrix products reach at their own sizes, a ceiling for its MFU that excludes every other op."""
    flops = seconds = 0.0
    for (batch, m, k, n, dtype), count in shapes.items():
        a = torch.randn(batch, m, k, device=device).to(dtype)
        b = torch.randn(batch, k, n, device=device).to(dtype)
        torch.bmm(a, b)
        best = min(timed(lambda: torch.bmm(a, b), device) for _ in range(repeats))
        flops, seconds = flops + count * 2 * batch * m * k * n, seconds + count * best
    return {"products": sum(shapes.values()), "distinct_shapes": len(shapes), "flops": flops, "seconds": seconds,
            "flops_per_s": flops / seconds if seconds else 0.0}


def demo_corpus(root: Path, per_class: int) -> tuple[Path, list[dict], Path]:
    """Synthetic micrographs and their measure-teacher records (the demo's pipeline, fewer images)."""
    from maemi.data.synth import synthesize
    from maemi.teachers.measure import MeasureTeacher
    from maemi.teachers.pipeline import TeachConfig, teach
    from maemi.teachers.records import read_records

    corpus, data = root / "corpus", root / "train.jsonl"
    synthesize(corpus, per_class=per_class, seed=0)
    teach(corpus, data, MeasureTeacher("sem"), TeachConfig(profile="sem"), progress=False)
    return corpus, read_records(data), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps: a smoke run")
    parser.add_argument("--per-class", type=int, default=None, help="images per class; default 4 (quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps; default 8 (quick: 2)")
    parser.add_argument("--images", type=int, default=None, help="images for inference; default 32 (quick: 8)")
    parser.add_argument("--batch", type=int, default=None, help="batched inference size; default 16 (quick: 8)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (a .md beside it); default results/throughput.json, or a temporary folder "
                             "for --quick")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from maemi.assistant import Assistant
    from maemi.cpu import training_attention
    from maemi.fileio import atomic_write_json, atomic_write_text
    from maemi.model import MAEMI, AnswerVocab, GenerationConfig
    from maemi.model.generate import generate_ids
    from maemi.model.lora import sample_dylora_rank_
    from maemi.train.config import load_train_config
    from maemi.train.data import ImageCache, InstructionDataset, chunks
    from maemi.train.trainer import keep_vision_fixed, param_groups, run_info, select_trainable, set_train_mode

    quick = args.quick
    per_class = args.per_class or (2 if quick else 4)
    steps = args.steps or (2 if quick else 8)
    n_images = args.images or (8 if quick else 32)
    batch = args.batch or (8 if quick else 16)
    out = args.out or (Path(tempfile.gettempdir()) / "maemi-bench" / "throughput.quick.json" if quick
                       else RESULTS / "throughput.json")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"benchmark": "throughput", "quick": quick, "threads": torch.get_num_threads(),
                    "machine": machine_info(str(device)), "targets": TARGETS}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        corpus, records, data_path = demo_corpus(Path(tmp), per_class)
        print(f"corpus: {len(records)} records about {per_class} images per class ({time.perf_counter() - t0:.0f} s)")

        config = load_train_config("demo")
        answers = [turn["value"] for record in records for turn in record["conversations"][1::2]]
        vocab = AnswerVocab.train(answers, config.vocab_size)
        config.model.vocab_size = vocab.size
        torch.manual_seed(config.seed)
        model = MAEMI(config.model, vocab).to(device)
        cache = ImageCache(corpus, config.image_size)
        dataset = InstructionDataset(records, cache, model.processor, config.augment, config.seed, print, "train")
        bf16 = config.use_bf16(device)

        # ---- training
        named = select_trainable(model, config)
        params = [p for _, p in named]
        optimizer = torch.optim.Adam(param_groups(named, config), lr=config.lr)
        keep_vision_fixed(model, config)  # as `maemi train` does after the warm start
        rank_generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
        step_batches = chunks((order * (1 + (steps + 2) * config.batch_size // len(order)))[: (steps + 2)
                                                                                            * config.batch_size],
                              config.batch_size)
        set_train_mode(model, config)

        def forward_backward(indices: list[int]) -> None:
            sample_dylora_rank_(model.text.model, rank_generator)
            for micro in chunks(indices, config.micro_batch):
                with training_attention(device, bf16), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(dataset.batch(micro, epoch=0))
                (loss * len(micro) / len(indices)).backward()

        def train_step(indices: list[int]) -> None:
            forward_backward(indices)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        train_step(step_batches[0])  # warm-up: allocations, oneDNN kernels
        with FlopCounterMode(display=False) as counter:
            forward_backward(step_batches[1])
        optimizer.zero_grad(set_to_none=True)
        step_flops = counter.get_total_flops()
        with MatmulShapes() as recorder:
            forward_backward(step_batches[1])
        optimizer.zero_grad(set_to_none=True)
        ceiling = matmul_ceiling(recorder.counts, device)
        step_seconds = [timed(lambda b=b: train_step(b), device) for b in step_batches[2:]]
        compute = torch.bfloat16 if bf16 else torch.float32
        n = 4096 if device.type == "cuda" else 2048
        peaks = {str(dtype).removeprefix("torch."): matmul_peak(dtype, device, n, 5)
                 for dtype in (torch.float32, torch.bfloat16)}
        seconds = statistics.median(step_seconds)
        achieved = step_flops / seconds
        result["training"] = {
            "config": "demo", "batch_size": config.batch_size, "micro_batch": config.micro_batch, "bf16": bf16,
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()),
            "steps": len(step_seconds), "step_seconds": step_seconds, "s_per_step": seconds,
            "samples_per_s": config.batch_size / seconds, "flops_per_step": step_flops,
            "achieved_flops": achieved, "matmul_peak_flops": peaks, "matmul_n": n,
            "mfu": achieved / peaks[str(compute).removeprefix("torch.")], "mfu_vs_fp32_peak": achieved / peaks["float32"],
            "compute_dtype": str(compute).removeprefix("torch."),
            # The step's own matrix products timed alone: what the matmuls reach at the model's sizes.
            "matmul_ceiling": ceiling,
            "matmul_ceiling_mfu": ceiling["flops_per_s"] / peaks[str(compute).removeprefix("torch.")],
            "matmul_share_of_step": ceiling["seconds"] / seconds,
        }
        print(f"training: {result['training']['samples_per_s']:.1f} samples/s, {achieved / 1e9:.1f} GFLOP/s, "
              f"MFU {result['training']['mfu']:.1%} of the {result['training']['compute_dtype']} matmul peak "
              f"({peaks[str(compute).removeprefix('torch.')] / 1e9:.0f} GFLOP/s)")

        # ---- inference
        model.eval()
        run = run_info(records, config, corpus, data_path, None, None)
        paths = sorted({record["images"][0] for record in records if len(record["images"]) == 1})
        images = [cache.get(path).contiguous() for path in (paths * n_images)[:n_images]]  # [3, S, S] each
        inference = []

        def classify_row(size: int) -> dict:
            assistant = Assistant(model, run, Path(tmp), batch_size=size)
            assistant.classify(images[:size], top_k=None)  # warm-up
            with torch.no_grad():
                seconds = timed(lambda: assistant.classify(images, top_k=None), device)
            return {"task": "classify (zero-shot)", "batch": size, "kv_cache": None, "seconds": seconds,
                    "images_per_s": len(images) / seconds, "classes": len(run["classes"])}

        def caption_row(size: int, use_cache: bool) -> dict:
            assistant = Assistant(model, run, Path(tmp), batch_size=size)  # evaluation mode, adapters at r_max
            processor, prompt = model.processor, run["caption_prompt"]
            gen = GenerationConfig(max_new_tokens=args.new_tokens, use_cache=use_cache)
            no_eos = -1  # an id no token has: every answer runs to max_new_tokens

            def caption_all() -> int:
                tokens = 0
                for start in range(0, len(images), size):
                    chunk = images[start: start + size]
                    samples = [processor([assistant.image_tensor(x)], f"<image>\n{prompt}") for x in chunk]
                    memory = model.encode({k: v.to(device) for k, v in processor.collate(samples).items()})
                    ids = generate_ids(model.decoder, memory, vocab.bos_id, no_eos, vocab.pad_id, gen)
                    tokens += sum(len(row) for row in ids)
                return tokens

            with torch.no_grad():
                caption_all()  # warm-up
                sync(device)
                start = time.perf_counter()
                tokens = caption_all()
                sync(device)
                seconds = time.perf_counter() - start
            return {"task": f"caption ({args.new_tokens} tokens)", "batch": size, "kv_cache": use_cache,
                    "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}

        for size in (1, batch):
            inference.append(classify_row(size))
            print(inference[-1])
        for size in (1, batch):
            for use_cache in (True, False):
                inference.append(caption_row(size, use_cache))
                print(inference[-1])
        result["inference"] = inference

    by = {(r["task"].split()[0], r["batch"], r["kv_cache"]): r for r in inference}
    result["ratios"] = {
        "batched_classify_speedup": by["classify", batch, None]["images_per_s"] / by["classify", 1, None]["images_per_s"],
        "kv_cache_speedup_batch1": by["caption", 1, True]["tokens_per_s"] / by["caption", 1, False]["tokens_per_s"],
        f"kv_cache_speedup_batch{batch}": by["caption", batch, True]["tokens_per_s"]
        / by["caption", batch, False]["tokens_per_s"],
        "batched_caption_speedup": by["caption", batch, True]["tokens_per_s"] / by["caption", 1, True]["tokens_per_s"],
        "mfu": result["training"]["mfu"],
    }
    text = markdown(result, batch)
    print(text)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def ceiling_lines(t: dict) -> list[str]:
    c = t.get("matmul_ceiling")
    if not c:
        return []
    return [f"What bounds the MFU: the step's {c['products']:,} matrix products ({c['distinct_shapes']} distinct "
            f"shapes, {c['flops'] / 1e9:,.0f} GFLOP), each timed alone at its own size, run at "
            f"{c['flops_per_s'] / 1e9:,.1f} GFLOP/s, {t['matmul_ceiling_mfu']:.1%} of the peak; together they take "
            f"{t['matmul_share_of_step']:.0%} of the step, the rest being elementwise work, normalisation, attention, "
            "convolutions, int8 dequantisation, batch assembly and the optimizer.", ""]


def markdown(result: dict, batch: int) -> str:
    m, t, r = result["machine"], result["training"], result["ratios"]
    peaks = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in t["matmul_peak_flops"].items())
    lines = [f"# Throughput of the demo configuration ({'quick' if result['quick'] else 'full'} run)", "",
             f"Measured {m['date']} on {m['cpu']} ({m['cpu_count']} cores, {m['memory_gib']} GiB)"
             + (f", GPU {m['gpu']}" if m["gpu"] else "") + f", device {m['device']}, {result['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; commit {m['commit']}.", "",
             "CPU timings are noisy here (cores shared with other jobs): the ratios are measured side by side in one "
             "run. Written by `benchmarks/throughput.py`.", "",
             "## Training", "",
             f"Demo config, batch {t['batch_size']}, bf16 autocast {'on' if t['bf16'] else 'off'}, "
             f"{t['trainable_params']:,} trainable of {t['params']:,} parameters (buffers included), median of "
             f"{t['steps']} steps.", "",
             "| samples/s | s/step | GFLOP/step | achieved GFLOP/s | matmul peak (same run) | MFU | MFU vs fp32 peak |",
             "|---:|---:|---:|---:|---|---:|---:|",
             f"| {t['samples_per_s']:.1f} | {t['s_per_step']:.2f} | {t['flops_per_step'] / 1e9:,.0f} | "
             f"{t['achieved_flops'] / 1e9:,.1f} | {peaks} (n={t['matmul_n']}) | {t['mfu']:.1%} ({t['compute_dtype']}) "
             f"| {t['mfu_vs_fp32_peak']:.1%} |", "",
             *ceiling_lines(t),
             "## Inference", "",
             "| task | batch | KV cache | images/s | tokens/s |", "|---|---:|---|---:|---:|"]
    for row in result["inference"]:
        cache = "" if row["kv_cache"] is None else ("on" if row["kv_cache"] else "off")
        lines.append(f"| {row['task']} | {row['batch']} | {cache} | {row['images_per_s']:.1f} | |"
                     if "images_per_s" in row else
                     f"| {row['task']} | {row['batch']} | {cache} | | {row['tokens_per_s']:.1f} |")
    targets = result["targets"]
    lines += ["", "## Targets", "",
              "| ratio | measured | target |", "|---|---:|---:|",
              f"| KV cache on / off, batch 1 | {r['kv_cache_speedup_batch1']:.1f}x | >= {targets['kv_cache_speedup']}x |",
              f"| KV cache on / off, batch {batch} | {r[f'kv_cache_speedup_batch{batch}']:.1f}x | "
              f">= {targets['kv_cache_speedup']}x |",
              f"| classification images/s, batch {batch} / batch 1 | {r['batched_classify_speedup']:.1f}x | "
              f">= {targets['batched_classify_speedup']}x |",
              f"| caption tokens/s, batch {batch} / batch 1 (cache on) | {r['batched_caption_speedup']:.1f}x | |",
              f"| training MFU ({t['compute_dtype']} peak) | {r['mfu']:.1%} | >= {targets['mfu']:.0%} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
