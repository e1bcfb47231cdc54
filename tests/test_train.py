"""Training on tiny parts: config files and flags, the data pipeline's determinism, a real run that learns and writes
the run folder, records that must be skipped, --init with frozen parts, and the vision warm start."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook
from typer.testing import CliRunner

from maemi.cli import app
from maemi.model import MAEMI, VisionConfig, VisionEncoder
from maemi.teachers.records import make_record
from maemi.train.config import SHIPPED_CONFIGS, AugmentConfig, ConfigError, TrainConfig, load_train_config
from maemi.train.data import (ImageCache, InstructionDataset, augment_image, epoch_order, epoch_pool, plan_step,
                              seeded_generator)
from maemi.train.distributed import DistributedEnv
from maemi.train.trainer import image_size_for, train, validation_loss
from maemi.train.warmstart import image_labels, warm_start_vision
from tiny_text_models import one_thread, save_tiny_bert  # noqa: F401

# Grey levels far apart: the image alone tells the class.
CLASSES = {"dark": 40, "grey": 128, "bright": 215}
CLASSIFY_QUESTION = "What category does this image belong to?"
CAPTION_QUESTION = "Describe the image."


@dataclass
class TinyInputs:
    root: Path
    images: Path
    train: Path
    val: Path
    config: Path  # a TOML of tiny model settings


def write_images(folder: Path, per_class: int, seed: int, size: int = 40) -> list[tuple[str, str]]:
    """Noisy flat PNGs, one brightness per class -> [(relative path, class)]."""
    rng = np.random.default_rng(seed)
    items = []
    for label, level in CLASSES.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 12, (size, size)), 0, 255).astype(np.uint8)
            path = f"{label}/{label}_{seed}_{i}.png"
            Image.fromarray(pixels).save(folder / path)
            items.append((path, label))
    return items


def records_for(items: list[tuple[str, str]]) -> list[dict]:
    records = []
    for path, label in items:
        common = dict(label=label, teacher="measure", length="short")
        records.append(make_record([path], CLASSIFY_QUESTION, label, task="classify", family="classify",
                                   question_key="classify.category", **common))
        records.append(make_record([path], CAPTION_QUESTION, f"A {label} micrograph, even and smooth.",
                                   task="caption", family="caption", question_key="caption.describe", **common))
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


TINY_TOML = """
vocab_size = 300
batch_size = 4
micro_batch = 2
epochs = 3
num_threads = 1
progress = false
log_every = 1
[model.vision]
image_size = 32
patch_size = 8
dim = 16
heads = 2
local_depth = 1
global_depth = 1
stem = "conv"   # BatchNorm buffers: a frozen vision encoder must keep them too
[model.text]
path = "{bert}"
[model.text.lora]
r_min = 2
r_max = 4
target_modules = ["query", "value"]
[model.decoder]
layers = 1
heads = 2
head_dim = 8
max_len = 24
"""


def make_tiny_inputs(root: Path) -> TinyInputs:
    bert = save_tiny_bert(root / "bert")
    images = root / "images"
    train_items, val_items = write_images(images, 2, seed=0), write_images(images, 1, seed=1)
    config = root / "tiny.toml"
    config.write_text(TINY_TOML.format(bert=bert))
    return TinyInputs(root, images, write_jsonl(root / "train.jsonl", records_for(train_items)),
                      write_jsonl(root / "val.jsonl", records_for(val_items)), config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyInputs:
    return make_tiny_inputs(tmp_path_factory.mktemp("train_inputs"))


@pytest.fixture(scope="module")
def trained_run(tiny, tmp_path_factory):
    """A real 10-epoch run of the tiny model (module-scoped: the autouse one_thread fixture is not active yet)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "base"
    config = load_train_config(tiny.config, ["--epochs=10", "--lr=1e-2"])
    result = train(config, tiny.train, tiny.val, tiny.images, out)
    torch.set_num_threads(threads)
    return out, result


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ config


def test_config_file_then_flags(tiny, tmp_path):
    config = load_train_config(tiny.config, ["--lr=3e-4", "--model.vision.dim=32", "--augment.flips=false",
                                             "--model.text.lora.target_modules=query,key", "--bf16", "on",
                                             "--max-steps=7"])
    assert config.lr == 3e-4 and config.max_steps == 7 and config.bf16 == "on"
    assert config.model.vision.dim == 32 and config.model.vision.patch_size == 8  # flag on top of the file's table
    assert config.augment.flips is False and config.augment.rotations is True  # other switches keep defaults
    assert config.model.text.lora.target_modules == ("query", "key") and config.model.text.lora.r_max == 4
    assert config.batch_size == 4 and config.epochs == 3  # from the file
    assert TrainConfig().lr == 1e-3 and TrainConfig().batch_size == 32 and TrainConfig().epochs == 50  # the paper

    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"epochs": 2, "model": {"decoder": {"layers": 3}}, "augment": {"contrast": 0.0}}))
    config = load_train_config(as_json, ["--epochs=4"])
    assert (config.epochs, config.model.decoder.layers, config.augment.contrast) == (4, 3, 0.0)
    # a resumed run's saved config is the base; flags still win
    assert load_train_config(None, ["--seed=3"], base=config.to_dict()).model.decoder.layers == 3


def test_a_shipped_config_name_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # `maemi demo --out demo` makes one; `--config demo` still means the shipped file
    monkeypatch.chdir(tmp_path)
    assert load_train_config("demo").max_steps == load_train_config(SHIPPED_CONFIGS / "demo.toml").max_steps > 0
    assert load_train_config("demo").model.text.dropout == 0.0  # the shipped file's own setting, not a default


@pytest.mark.parametrize("flags, message", [
    (["--model.vision.dimm=3"], "model.vision.dim,"),  # lists the valid keys
    (["--lerning_rate=1"], "unknown setting(s) ['lerning_rate']"),
    (["--lr=fast"], "config.lr: expected float, got 'fast'"),
    (["--augment.flips=maybe"], "config.augment.flips: expected bool"),
    (["--bf16=always"], "expected one of ['auto', 'on', 'off']"),
    (["--lr_schedule=linear"], "expected one of ['plateau', 'cosine']"),
    (["--warmup_steps=-1"], "warmup_steps"),
    (["--micro_batch=64"], "micro_batch 64 is larger than batch_size 32"),
    (["--lr.x=1"], "config.lr: expected float, got {'x': '1'}"),
    (["--epochs"], "--epochs needs a value"),
])
def test_bad_settings_are_clear_errors(flags, message):
    with pytest.raises(ConfigError) as error:
        load_train_config(None, flags)
    assert message in str(error.value)


def test_cli_reports_bad_settings_and_files(tiny, tmp_path):
    runner = CliRunner()
    args = ["train", "--data", str(tiny.train), "--images", str(tiny.images), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args + ["--config", str(tiny.config), "--model.vision.dimm=8"])
    assert result.exit_code == 1 and "model.vision.dimm" in result.output and "model.vision.dim," in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    result = runner.invoke(app, args + ["--config", str(bad)])
    assert result.exit_code == 1 and f"config file {bad}: not valid TOML" in result.output
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"id": "x"}])
    result = runner.invoke(app, ["train", "--data", str(broken), "--images", str(tiny.images), "--out",
                                 str(tmp_path / "r"), "--config", str(tiny.config)])
    assert result.exit_code == 1 and f"{broken}:1: missing key 'images'" in result.output


# ------------------------------------------------------------------------------------------------ data


def test_augmentation_and_order_are_pure_functions_of_seed_epoch_index():
    image = torch.rand(3, 32, 32) * 2 - 1
    config = AugmentConfig()
    a = augment_image(image, config, seeded_generator("augment", 0, 1, 5))
    assert torch.equal(a, augment_image(image, config, seeded_generator("augment", 0, 1, 5)))
    assert not torch.equal(a, augment_image(image, config, seeded_generator("augment", 0, 2, 5)))
    assert a.shape == image.shape and a.min() >= -1 and a.max() <= 1
    off = AugmentConfig(flips=False, rotations=False, crop_min_scale=1.0, brightness=0.0, contrast=0.0)
    assert torch.equal(augment_image(image, off, seeded_generator(0)), image)
    # a quarter turn alone permutes pixels: nothing is lost
    turned = augment_image(image, AugmentConfig(flips=False, crop_min_scale=1.0, brightness=0, contrast=0),
                           seeded_generator(1))
    assert torch.equal(turned.flatten().sort().values, image.flatten().sort().values)

    assert epoch_order(10, 0, 3) == epoch_order(10, 0, 3) and sorted(epoch_order(10, 0, 3)) == list(range(10))
    assert epoch_order(10, 0, 3) != epoch_order(10, 0, 4)


@pytest.mark.parametrize("n, micro, world", [(8, 2, 1), (8, 2, 2), (7, 2, 2), (1, 1, 2), (5, 1, 4)])
def test_step_plan_deals_out_micro_batches_with_weights_that_sum_to_one(n, micro, world):
    step = list(range(100, 100 + n))
    plans = [plan_step(step, micro, rank, world) for rank in range(world)]
    real = [(m, w) for plan in plans for m, w in zip(plan.micro_batches, plan.weights) if w > 0]
    assert sorted(i for m, _ in real for i in m) == step  # every sample exactly once, over all processes
    assert all(plan.micro_batches for plan in plans)  # every process takes part in the all-reduce
    # DDP averages over `world`: the weights of all micro-batches then sum to one, each in proportion to its samples
    assert sum(w for _, w in real) / world == pytest.approx(1.0)
    assert all(w / world == pytest.approx(len(m) / n) for m, w in real)


def test_unusable_records_are_reported_and_skipped(tiny):
    model_config = load_train_config(tiny.config).model
    from maemi.model import AnswerVocab

    good = records_for([("dark/dark_0_0.png", "dark")])
    vocab = AnswerVocab.train([r["conversations"][1]["value"] for r in good], 300)
    model_config.vocab_size = vocab.size
    processor = MAEMI(model_config, vocab).processor
    long_answer = make_record(["dark/dark_0_0.png"], "Say it all.", "word " * 40, task="vqa", family="basics",
                              length="long", label="dark", teacher="measure", question_key="basics.all")
    missing = make_record(["dark/nope.png"], CAPTION_QUESTION, "Nothing.", task="caption", family="caption",
                          length="short", label="dark", teacher="measure", question_key="caption.describe")
    cache = ImageCache(tiny.images, 32)
    messages = []
    dataset = InstructionDataset(good + [long_answer, missing], cache, processor, AugmentConfig(), 0,
                                 messages.append, "train")
    assert len(dataset) == 2
    assert [record_id for record_id, _ in dataset.skipped] == [long_answer["id"], missing["id"]]
    reasons = dict(dataset.skipped)
    assert "over max_answer_len 24" in reasons[long_answer["id"]]
    assert "nope.png: file not found" in reasons[missing["id"]]
    assert messages[0] == ("train: skipped 2 example(s) of 4: 1 refused by the processor; 1 unreadable image")
    batch = dataset.batch([0, 1], epoch=0)
    assert batch["images"].shape == (2, 1, 3, 32, 32) and (batch["labels"] != -100).sum(1).min() > 0

    tasks = [example.task for example in dataset.examples]
    assert sorted(tasks) == ["caption", "classify"]
    pool = epoch_pool(dataset, classify_repeat=3)  # every example once, the classification one 3 times
    c = tasks.index("classify")
    assert sorted(pool) == sorted([0, 1, c + 2, c + 4]) and sorted(d % 2 for d in pool) == sorted([0, 1, c, c])
    assert epoch_pool(dataset, classify_repeat=1) == [0, 1]
    assert dataset.target_tokens([c + 4]) == dataset.target_tokens([c])
    # each repeat is another augmented view of the image (issue 24: they were pixel-identical); each is reproducible
    first, repeat = dataset.sample(c, epoch=0)["images"], dataset.sample(c + 2, epoch=0)["images"]
    assert not torch.equal(first, repeat) and torch.equal(repeat, dataset.sample(c + 2, epoch=0)["images"])


# ------------------------------------------------------------------------------------------------ training


def test_training_learns_and_writes_the_run_folder(tiny, trained_run):
    out, result = trained_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run.json", "metrics.jsonl", "loss.png",
                 "checkpoints/last/model.safetensors", "checkpoints/last/training_state.json",
                 "checkpoints/last/training_state.safetensors"):
        assert (out / name).is_file(), name
    rows = read_metrics(out)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 11)) and result["finished"] == "epochs"
    assert epochs[-1]["val_loss"] < 0.3 * epochs[0]["val_loss"]  # it learns, on held-out images too
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == result["steps"] == 10 * 3  # 12 examples in batches of 4
    assert {"epoch", "step", "train_loss", "lr", "samples_per_s"} <= set(steps[0])
    assert steps[-1]["train_loss"] < 0.3 * steps[0]["train_loss"]

    info = json.loads((out / "run.json").read_text())
    assert info["classes"] == ["bright", "dark", "grey"]
    assert info["class_answers"] == {"bright": "bright", "dark": "dark", "grey": "grey"}
    assert info["classify_prompt"] == CLASSIFY_QUESTION and info["caption_prompt"] == CAPTION_QUESTION
    assert info["image_size"] == 32 and info["images_root"] == str(tiny.images)
    assert info["train_data"] == str(tiny.train) and info["val_data"] == str(tiny.val)
    assert info["train_config"]["model"]["vision"]["stem"] == "conv" and info["train_config"]["epochs"] == 10
    best = min(epochs, key=lambda r: r["val_loss"])
    assert info["best"] == {"epoch": best["epoch"], "step": best["step"], "val_loss": best["val_loss"]}

    model = MAEMI.from_pretrained(out)  # the best model, loadable by everything downstream
    adapters = [m for m in model.text.model.modules() if hasattr(m, "lora_B")]
    assert adapters and all(m.rank == model.config.text.lora.r_max for m in adapters)
    # ... and it is the best one: its validation loss is the one run.json reports
    from maemi.cpu import training_attention
    from maemi.teachers.records import read_records

    val_set = InstructionDataset(read_records(tiny.val), ImageCache(tiny.images, 32), model.processor)
    config, cpu = load_train_config(tiny.config), torch.device("cpu")  # batched, cast and attended as the run validated
    with training_attention(cpu, config.use_bf16(cpu)):
        loss = validation_loss(model, val_set, config, DistributedEnv(), cpu, config.use_bf16(cpu))
    assert loss == pytest.approx(info["best"]["val_loss"], rel=1e-6)


def test_a_second_run_into_the_same_folder_is_refused(tiny, trained_run):
    out, _ = trained_run
    with pytest.raises(ValueError, match="already holds a training run; pass --resume"):
        train(load_train_config(tiny.config), tiny.train, tiny.val, tiny.images, out)


def test_init_fine_tunes_only_what_the_config_trains(tiny, trained_run, tmp_path):
    base, _ = trained_run
    new_items = write_images(tmp_path / "new", 1, seed=7)
    new_data = write_jsonl(tmp_path / "new.jsonl", records_for(new_items))
    out = tmp_path / "adapted"
    config = load_train_config(tiny.config, ["--epochs=1", "--train_vision=false", "--train_special_tokens=false"])
    train(config, new_data, None, tmp_path / "new", out, init=base)

    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith("vision.") or k == "text.special_embeddings"]
    assert any("running_mean" in k for k in frozen)  # the conv stem's BatchNorm statistics are covered too
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    moved = [k for k in before if k.startswith("decoder.") and not torch.equal(before[k], after[k])]
    assert moved, "the decoder should have been trained"
    assert any(k.startswith("text.model.") and "lora_B" in k and not torch.equal(before[k], after[k]) for k in before)
    assert (out / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()  # --init's vocabulary
    assert json.loads((out / "run.json").read_text())["init"] == str(base)


def test_warm_start_learns_the_labels(tiny):
    from maemi.teachers.records import read_records

    train_records, val_records = read_records(tiny.train), read_records(tiny.val)
    assert len(image_labels(train_records)) == 6
    torch.manual_seed(0)
    vision = VisionEncoder(VisionConfig(image_size=32, patch_size=8, dim=16, heads=2, local_depth=1, global_depth=1))
    config = TrainConfig(warmstart_epochs=12, warmstart_lr=1e-2, warmstart_batch_size=6)
    rows = warm_start_vision(vision, train_records, val_records, ImageCache(tiny.images, 32), config,
                             torch.device("cpu"), log=lambda message: None)
    assert len(rows) == 13 and rows[0]["epoch"] == 0
    assert rows[-1]["val_acc"] == 1.0 > rows[0]["val_acc"]  # three grey levels: held-out images all right
    assert rows[-1]["train_loss"] < rows[1]["train_loss"]


def test_warm_start_keeps_the_moving_average_of_the_weights(tiny):
    from maemi.teachers.records import read_records

    train_records, val_records = read_records(tiny.train), read_records(tiny.val)
    vision_config = VisionConfig(image_size=32, patch_size=8, dim=16, heads=2, local_depth=1, global_depth=1,
                                 stem="conv", stem_layers=2)  # BatchNorm statistics: averaged with the weights
    cache = ImageCache(tiny.images, 32)

    def run(decay: float) -> tuple[VisionEncoder, list[dict], list[dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        vision = VisionEncoder(vision_config)
        states = []  # the live weights after every optimizer step
        hook = register_optimizer_step_post_hook(
            lambda *_: states.append({k: v.detach().clone() for k, v in vision.state_dict().items()}))
        try:
            config = TrainConfig(warmstart_epochs=4, warmstart_lr=1e-2, warmstart_batch_size=6,
                                 warmstart_ema_decay=decay)
            rows = warm_start_vision(vision, train_records, val_records, cache, config, torch.device("cpu"),
                                     log=lambda message: None)
        finally:
            hook.remove()
        return vision, rows, states

    plain, plain_rows, states = run(0.0)
    averaged, averaged_rows, averaged_states = run(0.8)
    assert len(states) == len(averaged_states) > 2
    for name, value in averaged.state_dict().items():
        assert torch.equal(states[-1][name], averaged_states[-1][name])  # the average leaves training alone
        assert torch.equal(plain.state_dict()[name], states[-1][name])  # without it: the last step's weights
        if value.is_floating_point():
            expected = states[0][name]
            for state in states[1:]:
                expected = 0.8 * expected + 0.2 * state[name]
            assert torch.allclose(value, expected, atol=1e-6), name
    assert not torch.equal(averaged.state_dict()["pos_embed"], plain.state_dict()["pos_embed"])
    assert [row["train_loss"] for row in averaged_rows[1:]] == [row["train_loss"] for row in plain_rows[1:]]
    with pytest.raises(ConfigError, match="warmstart_ema_decay"):
        TrainConfig(warmstart_ema_decay=1.0)


def test_plateau_halves_the_learning_rate_then_stops_early(tiny, tmp_path):
    # lr 1e-30 moves no weight by a representable amount: the validation loss never improves after epoch 1. (The
    # vision encoder is frozen so that its conv stem's BatchNorm statistics, which move without any lr, stay put.)
    config = load_train_config(tiny.config, ["--epochs=6", "--lr=1e-30", "--lr_patience=0",
                                             "--early_stopping_patience=2", "--train_vision=false"])
    result = train(config, tiny.train, tiny.val, tiny.images, tmp_path / "run", log=lambda message: None)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch"]
    assert result["finished"] == "early_stopping" and len(epochs) == 3 and result["best_epoch"] == 1
    assert epochs[0]["val_loss"] == epochs[1]["val_loss"] == epochs[2]["val_loss"]
    assert [r["lr"] for r in epochs] == pytest.approx([1e-30, 5e-31, 2.5e-31])  # halved after each bad epoch
    assert [r["best"] for r in epochs] == [True, False, False]


def test_cosine_schedule_warms_up_then_decays_within_the_run(tiny, tmp_path):
    config = load_train_config(tiny.config, ["--epochs=2", "--lr=1e-3", "--lr_schedule=cosine", "--warmup_steps=2",
                                             "--log_every=1", "--warmstart_epochs=0"])
    result = train(config, tiny.train, tiny.val, tiny.images, tmp_path / "run", log=lambda message: None)
    assert result["steps"] == 6
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if r["kind"] == "step"]  # the lr each step used
    # transformers' linear warm-up from 0 over 2 steps, then half a cosine over the 4 left: 1, cos^2(pi/8), 1/2, ...
    expected = [0.0, 0.5, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    assert lrs == pytest.approx([1e-3 * x for x in expected])


def test_max_steps_stops_mid_epoch_with_a_validated_model(tiny, tmp_path):
    result = train(load_train_config(tiny.config, ["--max_steps=2"]), tiny.train, tiny.val, tiny.images,
                   tmp_path / "run", log=lambda message: None)
    assert (result["finished"], result["steps"], result["samples"]) == ("max_steps", 2, 8)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["val_loss"] is not None
    assert MAEMI.from_pretrained(tmp_path / "run").config.vision.stem == "conv"


def test_gates_and_vision_learn_at_their_own_rates(tiny, tmp_path):
    """Adam's first step moves every parameter with a gradient by about its group's lr: the gates by lr * 50, the
    vision encoder (after its warm start) not at all with vision_lr_scale 0, the decoder by lr."""
    config = load_train_config(tiny.config, ["--max_steps=1", "--lr=1e-3", "--gate_lr_scale=50", "--grad_clip=0",
                                             "--augment.flips=false", "--warmstart_epochs=0", "--vision_lr_scale=0"])
    torch.manual_seed(0)
    train(config, tiny.train, None, tiny.images, tmp_path / "run")
    torch.manual_seed(0)
    train(dataclasses.replace(config, lr=1e-30), tiny.train, None, tiny.images, tmp_path / "before")  # the start
    before, after = (load_file(tmp_path / name / "model.safetensors") for name in ("before", "run"))
    gates = [k for k in after if k.endswith("_gate")]
    assert gates and all((after[k] - before[k]).abs().item() == pytest.approx(0.05, rel=0.01) for k in gates)
    vision = [k for k in after if k.startswith("vision.")]  # BatchNorm statistics included: it runs in eval mode
    assert vision and all(torch.equal(after[k], before[k]) for k in vision)
    lm_head = (after["decoder.lm_head.weight"] - before["decoder.lm_head.weight"]).abs()
    assert lm_head.max().item() == pytest.approx(1e-3, rel=0.05)


def test_image_size_from_images_takes_the_images_side_never_upsampling(tiny, tmp_path):
    """The tiny images are 40x40: with patch 8 a configured 64 becomes 40 (resizing up adds no detail), a configured
    32 stays 32; a 37-pixel median rounds up to the patch; unreadable files are left out of the median."""
    records = [json.loads(line) for line in tiny.train.read_text().splitlines()]
    assert image_size_for(records, tiny.images, 64, 8) == 40
    assert image_size_for(records, tiny.images, 32, 8) == 32
    odd = tmp_path / "odd"
    odd.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((37, 50), np.uint8)).save(odd / f"{i}.png")
    (odd / "broken.png").write_bytes(b"not a png")
    rows = [{"images": [f"{i}.png"]} for i in range(3)] + [{"images": ["broken.png"]}, {"images": ["gone.png"]}]
    assert image_size_for(rows, odd, 128, 16) == 48
    assert image_size_for([{"images": ["gone.png"]}], odd, 128, 16) == 128  # nothing readable: the configured size

    result = train(load_train_config(tiny.config, ["--max_steps=1", "--model.vision.image_size=64",
                                                   "--image_size_from_images=true"]),
                   tiny.train, tiny.val, tiny.images, tmp_path / "run", log=lambda message: None)
    assert result["steps"] == 1
    assert MAEMI.from_pretrained(tmp_path / "run").config.vision.image_size == 40
    assert json.loads((tmp_path / "run" / "run.json").read_text())["image_size"] == 40


@pytest.mark.parametrize("bf16", [True, False])
def test_training_attention_avoids_the_bf16_flash_kernel_on_cpu(bf16: bool) -> None:
    # The CPU flash kernel is 2x slower than math in bf16 at the demo's sizes (maemi.cpu.training_attention); in fp32
    # torch's own choice (flash) stands.
    from torch.profiler import ProfilerActivity, profile

    from maemi.cpu import training_attention

    q = torch.randn(2, 4, 16, 8, dtype=torch.bfloat16 if bf16 else torch.float32)
    with training_attention(torch.device("cpu"), bf16), profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    ops = {event.key for event in prof.key_averages()}
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu" in ops) is not bf16


def test_validation_records_evenly_spaced() -> None:
    from maemi.train.trainer import evenly_spaced

    records = [{"id": i} for i in range(10)]
    assert [r["id"] for r in evenly_spaced(records, 4)] == [0, 2, 5, 7]
    assert evenly_spaced(records, 0) == records and evenly_spaced(records, 50) == records
    with pytest.raises(ConfigError, match="val_loss_records"):
        load_train_config(None, ["--val_loss_records=-1"])
