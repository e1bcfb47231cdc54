"""MAEMI end to end on tiny parts: batches, gates at zero, the loud all-masked check, scoring, learning together,
checkpoints that reload bit-identically and refuse missing, extra or mismatched tensors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from maemi.model import (IGNORE_INDEX, MAEMI, CheckpointError, GatedCrossAttentionBlock, GenerationConfig,
                         MAEMIConfig, TextConfig)
from maemi.model.lora import DyLoRAFALinear, sample_dylora_rank_, set_dylora_rank_
from maemi.train.config import TrainConfig
from maemi.train.trainer import select_trainable
from tiny_text_models import one_thread, save_tiny_bert, save_tiny_llama, tiny_config, tiny_vocab  # noqa: F401

SAME_PROMPT = "<image> What is shown?"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def new_model(text_dir, **kwargs) -> MAEMI:
    vocab = tiny_vocab()
    torch.manual_seed(0)
    return MAEMI(tiny_config(text_dir, vocab, **kwargs), vocab)


def images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=g) * 2 - 1 for _ in range(n)]


def training_batch(model: MAEMI) -> tuple[dict[str, torch.Tensor], list[str]]:
    # The first two share the prompt: only the image tells their answers apart.
    a, b, c, d = images(4)
    answers = ["Nanowires, about 50 nm wide.", "TEM", "Both porous, 2-5 µm."]
    processor = model.processor
    samples = [processor([a], SAME_PROMPT, answers[0]), processor([b], SAME_PROMPT, answers[1]),
               processor([c, d], "Compare <image> and <image>.", answers[2])]
    return processor.collate(samples), answers


@pytest.fixture(scope="module")
def trained(bert_dir):
    """The tiny model after 80 AdamW steps on three samples, DyLoRA rank sampled every step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the autouse one_thread fixture is not active yet
    model = new_model(bert_dir)
    batch, answers = training_batch(model)
    adapter = next(m for m in model.modules() if isinstance(m, DyLoRAFALinear))
    before = {"A": adapter.lora_A.clone(), "B": adapter.lora_B_matrix().detach().clone()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ranks = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for _ in range(80):
        sample_dylora_rank_(model.text.model, ranks)
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    torch.set_num_threads(threads)
    model.eval()
    set_dylora_rank_(model.text.model, model.config.text.lora.r_max)
    return model, batch, answers, losses, adapter, before


def logits(model: MAEMI, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.decoder(batch["answer_ids"], model.decoder.start(model.encode(batch)))


# ------------------------------------------------------------------------------------------------ config, batches


def test_config_round_trips_through_json_and_refuses_unknown_keys(bert_dir):
    config = tiny_config(bert_dir, tiny_vocab())
    assert MAEMIConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MAEMIConfig.from_dict({}) == MAEMIConfig()
    with pytest.raises(ValueError, match=r"config.decoder: unknown keys \['layer'\]"):
        MAEMIConfig.from_dict({"decoder": {"layer": 3}})


def test_processor_builds_shifted_answers_and_padded_batches(bert_dir):
    model = new_model(bert_dir, lora=False)
    batch, answers = training_batch(model)
    vocab, encode_id = model.vocab, model.text.encode_token_id
    assert batch["images"].shape == (3, 2, 3, 32, 32) and batch["image_mask"].tolist() == [
        [True, False], [True, False], [True, True]]
    for row, mask in zip(batch["prompt_ids"], batch["prompt_mask"]):
        assert row[mask][-1] == encode_id  # <Encode> closes every prompt
    for i, positions in enumerate(batch["image_positions"]):
        for j in range(int(batch["image_mask"][i].sum())):
            assert batch["prompt_ids"][i, positions[j]] == model.text.image_token_id
    n = len(vocab.encode(answers[1]))
    assert batch["answer_ids"][1, : n + 1].tolist() == [vocab.bos_id] + vocab.encode(answers[1])
    assert batch["labels"][1, : n + 1].tolist() == vocab.encode(answers[1]) + [vocab.eos_id]
    assert (batch["labels"][1, n + 1:] == IGNORE_INDEX).all()


def test_processor_refuses_image_count_mismatch_and_a_typed_encode_token(bert_dir):
    processor = new_model(bert_dir, lora=False).processor
    with pytest.raises(ValueError, match="2 <image> token.*1 image"):
        processor(images(1), "Compare <image> and <image>.")
    with pytest.raises(ValueError, match="<Encode>"):
        processor(images(1), "<image> <Encode>")


# ------------------------------------------------------------------------------------------------ model behaviour


def test_image_gates_at_zero_cut_the_image_off(bert_dir):
    model = new_model(bert_dir).eval()
    for block in model.decoder.blocks:
        if isinstance(block, GatedCrossAttentionBlock):
            block.image_gate.data.zero_()
    batch, _ = training_batch(model)
    other = dict(batch, images=torch.rand_like(batch["images"]) * 2 - 1)
    assert torch.equal(logits(model, batch), logits(model, other))
    for block in model.decoder.blocks:  # the control: open the image gates and the same change shows
        if isinstance(block, GatedCrossAttentionBlock):
            block.image_gate.data.fill_(1.0)
    assert not torch.allclose(logits(model, batch), logits(model, other))


def test_a_sample_without_target_tokens_is_an_error(bert_dir):
    model = new_model(bert_dir, lora=False)
    batch, _ = training_batch(model)
    batch["labels"][1] = IGNORE_INDEX
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\].*no target tokens"):
        model(batch)


def test_loss_averages_over_tokens_or_over_samples(bert_dir):
    model = new_model(bert_dir).eval()
    batch, _ = training_batch(model)
    with torch.no_grad():
        per_sample = [model({key: value[i:i + 1] for key, value in batch.items()}) for i in range(3)]
        tokens = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
        torch.testing.assert_close(model(batch, average="sample"), torch.stack(per_sample).mean())
        torch.testing.assert_close(model(batch), (torch.stack(per_sample) * tokens).sum() / tokens.sum())
    with pytest.raises(ValueError, match="average"):
        model(batch, average="batch")


def test_score_is_the_answer_log_likelihood(bert_dir):
    model = new_model(bert_dir).eval()
    batch, answers = training_batch(model)
    one = {key: value[1:2] for key, value in batch.items()}
    n_targets = int((one["labels"] != IGNORE_INDEX).sum())
    with torch.no_grad():
        expected = -model(one) * n_targets
    torch.testing.assert_close(model.score(one, [answers[1]])[0, 0], expected, atol=1e-4, rtol=1e-5)
    assert model.score(batch, answers).shape == (3, 3)


def test_bf16_autocast_forward(bert_dir):
    model = new_model(bert_dir)
    batch, _ = training_batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)
    assert torch.isfinite(loss)


def test_llama_text_encoder_end_to_end(tmp_path):
    model = new_model(save_tiny_llama(tmp_path / "llama"), target_modules=("q_proj", "v_proj"))
    batch, _ = training_batch(model)
    loss = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.text.special_embeddings.grad is not None
    assert len(model.eval().generate(batch, GenerationConfig(max_new_tokens=4))) == 3


def test_the_parts_learn_together_to_reproduce_the_answers(trained):
    model, batch, answers, losses, adapter, before = trained
    assert losses[-1] < 0.1 * losses[0]
    assert model.generate(batch) == answers  # samples 0 and 1 differ only by their image
    assert model.score(batch, answers).argmax(dim=1).tolist() == [0, 1, 2]
    assert torch.equal(adapter.lora_A, before["A"])  # LoRA-FA: A frozen, B trained
    assert not torch.equal(adapter.lora_B_matrix(), before["B"])


# ------------------------------------------------------------------------------------------------ checkpoints


def test_save_then_load_gives_bit_identical_outputs(trained, tmp_path):
    model, batch, _, _, _, _ = trained
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors",
                                                                      "tokenizer.json"]
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    text_keys = sorted(key for key in saved if key.startswith("text."))
    assert "text.special_embeddings" in text_keys and any(".lora_A" in key for key in text_keys)
    assert all(key == "text.special_embeddings" or ".lora_" in key for key in text_keys)  # no pretrained weight
    loaded = MAEMI.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert loaded.generate(batch) == model.generate(batch)
    torch.testing.assert_close(loaded.score(batch, ["TEM"]), model.score(batch, ["TEM"]), atol=0, rtol=0)


def test_ablation_variants_learn_and_round_trip(bert_dir, tmp_path):
    """The ablation's alternatives (benchmarks/ablation.py): a text encoder from random weights, trained whole and
    saved whole; the image as a prefix of the decoder's sequence instead of gated cross-attention."""
    vocab = tiny_vocab()
    config = tiny_config(bert_dir, vocab, lora=False, quantize_int8=False)
    config.text.pretrained = False
    config.decoder.image_fusion = "prefix"
    torch.manual_seed(0)
    model = MAEMI(config, vocab)
    pretrained = MAEMI(tiny_config(bert_dir, vocab, lora=False, quantize_int8=False), vocab)
    word = "text.model.embeddings.word_embeddings.weight"
    assert not torch.equal(model.state_dict()[word], pretrained.state_dict()[word])  # not the pretrained weights
    batch, _ = training_batch(model)
    select_trainable(model, TrainConfig())
    assert all(p.requires_grad for p in model.text.model.parameters())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert word in load_file(tmp_path / "ckpt" / "model.safetensors")  # trained, so saved
    loaded = MAEMI.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert loaded.generate(batch) == model.generate(batch)
    with pytest.raises(ValueError, match="pretrained = false"):
        TextConfig(path=str(bert_dir), pretrained=False)  # int8 and adapters on by default: say what to set


def test_peft_lora_variant_trains_only_its_adapters_and_round_trips(bert_dir, tmp_path):
    vocab = tiny_vocab()
    config = tiny_config(bert_dir, vocab, quantize_int8=False)
    config.text.adapter = "peft_lora"
    torch.manual_seed(0)
    model = MAEMI(config, vocab)
    trainable = [name for name, _ in select_trainable(model, TrainConfig()) if name.startswith("text.model.")]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".lora_")[1][0] for name in trainable} == {"A", "B"}  # plain LoRA trains both
    batch, _ = training_batch(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    saved = [key for key in load_file(tmp_path / "ckpt" / "model.safetensors") if key.startswith("text.model.")]
    assert sorted(saved) == sorted(trainable)  # the adapters, never the pretrained base
    loaded = MAEMI.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    with pytest.raises(ValueError, match="quantize_int8 = false"):
        TextConfig(path=str(bert_dir), adapter="peft_lora")


@pytest.fixture
def checkpoint(trained, tmp_path):
    trained[0].save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_a_missing_tensor_is_named(checkpoint):
    tensors = load_file(checkpoint / "model.safetensors")
    key = next(k for k in tensors if k.endswith("image_gate"))
    del tensors[key]
    save_file(tensors, checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"missing tensors \['{key}'\], unexpected tensors \[\]"):
        MAEMI.from_pretrained(checkpoint)


def test_an_extra_tensor_is_named(checkpoint):
    tensors = load_file(checkpoint / "model.safetensors")
    tensors["decoder.stray.weight"] = torch.zeros(2)
    save_file(tensors, checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \[\], unexpected tensors \['decoder.stray.weight'\]"):
        MAEMI.from_pretrained(checkpoint)


def test_a_different_text_encoder_is_refused(checkpoint, bert_dir, tmp_path):
    changed = tmp_path / "changed_bert"
    shutil.copytree(bert_dir, changed)
    weights = load_file(changed / "model.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1e-3
    save_file(weights, changed / "model.safetensors")
    with pytest.raises(CheckpointError, match="not the one it was trained with"):
        MAEMI.from_pretrained(checkpoint, text_path=changed)
    config = json.loads((checkpoint / "config.json").read_text())
    config["config"]["text"]["path"] = str(tmp_path / "moved")
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pass text_path="):
        MAEMI.from_pretrained(checkpoint)
    assert MAEMI.from_pretrained(checkpoint, text_path=bert_dir) is not None  # the original, found again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_with_bf16_autocast(trained):
    model, batch, answers, _, _, _ = trained
    model = model.to("cuda")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.isfinite(model(batch))
        assert model.generate(batch) == answers
    finally:
        model.to("cpu")
