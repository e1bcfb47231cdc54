"""`torchrun --nproc_per_node 2` on CPU (gloo): the logged loss of every step matches one process with the same
global batch, and so do the final weights. Nine examples in batches of four make a short last step of one sample,
so one process runs a zero-weight micro-batch there (DDP needs both in every all-reduce). Augmentation and adapter
dropout are on: their random streams depend on the sample and the global micro-batch, not on the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from maemi.teachers.records import read_records
from maemi.train.config import load_train_config
from maemi.train.trainer import train
from test_train import make_tiny_inputs, read_metrics, write_jsonl

# The patch stem: a conv stem's BatchNorm running statistics stay per process under DDP (see wrap_ddp), so its eval-mode
# outputs, and with them the validation loss, differ from one process's in the 5th digit.
FLAGS = ["--epochs=2", "--batch_size=4", "--micro_batch=1", "--lr=1e-2", "--model.text.lora.dropout=0.1",
         "--model.vision.stem=patch"]


def test_two_processes_match_one(tmp_path):
    tiny = make_tiny_inputs(tmp_path)
    data = write_jsonl(tmp_path / "nine.jsonl", read_records(tiny.train)[:9])
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "maemi.cli", "train", "--data", str(data), "--val", str(tiny.val), "--images", str(tiny.images),
               "--out", str(two), "--config", str(tiny.config), *FLAGS]
    ddp = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the single-process reference runs here meanwhile
        train(load_train_config(tiny.config, FLAGS), data, tiny.val, tiny.images, one, log=lambda message: None)
    finally:
        torch.set_num_threads(threads)
    output, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, output[-4000:]
    assert "2 process(es)" in output

    rows_two, rows_one = read_metrics(two), read_metrics(one)
    steps_two = [r["train_loss"] for r in rows_two if r["kind"] == "step"]
    steps_one = [r["train_loss"] for r in rows_one if r["kind"] == "step"]
    assert len(steps_two) == len(steps_one) == 2 * 3
    assert steps_two == pytest.approx(steps_one, rel=1e-5)
    val_two = [r["val_loss"] for r in rows_two if r["kind"] == "epoch"]
    val_one = [r["val_loss"] for r in rows_one if r["kind"] == "epoch"]
    assert val_two == pytest.approx(val_one, rel=1e-5)
    a, b = load_file(two / "checkpoints/last/model.safetensors"), load_file(one / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys()
    # BatchNorm statistics (conv stem) are per process, as in any DDP run: each saw only its own micro-batches.
    # Adam divides by the root of tiny second moments, so float-level gradient differences may show at 1e-5.
    parameters = [key for key in a if "running_" not in key and "num_batches_tracked" not in key]
    far = [key for key in parameters if not torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4)]
    assert not far, far
