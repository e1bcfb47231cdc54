"""A training run killed with SIGKILL mid-epoch and resumed ends with bit-identical weights to an uninterrupted run
with the same seed. Every run is a real `python -m maemi.cli train` process; augmentation, adapter dropout, DyLoRA
rank sampling and the vision warm start are all on, so each of their random streams must resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train import make_tiny_inputs, read_metrics

EPOCHS, STEPS_PER_EPOCH = 6, 3  # 12 examples in batches of 4


def train_command(tiny, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maemi.cli", "train", "--data", str(tiny.train), "--val", str(tiny.val),
            "--images", str(tiny.images), "--out", str(out), "--config", str(tiny.config), f"--epochs={EPOCHS}",
            "--lr=1e-2", "--warmstart_epochs=2", "--model.text.lora.dropout=0.1", "--checkpoint_every_steps=2",
            *extra]


def checkpoint_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints/last/training_state.json").read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return None  # not there yet, or being replaced


def without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "samples_per_s"} for row in rows]


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])  # the scheduler's state resumes too
def test_sigkill_then_resume_gives_the_same_weights(tmp_path, schedule):
    tiny = make_tiny_inputs(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    flags = [f"--lr_schedule={schedule}", "--warmup_steps=3"]
    uninterrupted = subprocess.Popen(train_command(tiny, straight, *flags), env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(train_command(tiny, killed, *flags), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (checkpoint_step(killed) or 0) < 4 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)  # mid-epoch 2: step 4 is its first step
    assert victim.wait() == -signal.SIGKILL
    at_kill = checkpoint_step(killed)
    assert at_kill is not None and 4 <= at_kill < EPOCHS * STEPS_PER_EPOCH, "the kill must land mid-run"

    resumed = subprocess.run(train_command(tiny, killed, *flags, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {killed / 'checkpoints/last'}" in resumed.stdout
    _, errors = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, errors[-3000:]

    for name in ("model.safetensors", "checkpoints/last/model.safetensors"):  # the best and the last model
        a, b = load_file(killed / name), load_file(straight / name)
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    # Adam's moments too, and the metrics log reads as one uninterrupted run (rows past the checkpoint rewritten)
    a = load_file(killed / "checkpoints/last/training_state.safetensors")
    b = load_file(straight / "checkpoints/last/training_state.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a if key.startswith("optimizer/"))
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(straight))
    best = [json.loads((run / "run.json").read_text())["best"] for run in (killed, straight)]
    assert best[0] == best[1] and best[0]["epoch"] is not None

    again = subprocess.run(train_command(tiny, killed, *flags, "--resume"), env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "training already finished (epochs); nothing to do" in again.stdout


def test_resume_without_a_checkpoint_starts_over(tmp_path):
    """Nothing to resume from (killed before the first checkpoint): a clear message, then a normal run."""
    from maemi.train.config import load_train_config
    from maemi.train.trainer import train

    tiny = make_tiny_inputs(tmp_path)
    messages: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_train_config(tiny.config, ["--epochs=1"]), tiny.train, None, tiny.images,
                       tmp_path / "run", resume=True, log=messages.append)
    finally:
        torch.set_num_threads(threads)
    assert messages[0] == f"{tmp_path / 'run'}: no checkpoint to resume from; starting from the beginning"
    assert result["finished"] == "epochs" and result["steps"] == STEPS_PER_EPOCH
