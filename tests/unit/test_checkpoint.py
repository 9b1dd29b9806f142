"""Tests for posttrain.checkpoint: atomic save, pruning, and exact restore of training state."""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from torch import nn

from posttrain import checkpoint as ckpt


@pytest.fixture
def tiny_model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )
    return transformers.Qwen2ForCausalLM(config)


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _train_step(model: nn.Module, optimizer, scheduler=None) -> None:
    ids = torch.randint(0, 64, (2, 6))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def _perturb(model: nn.Module, optimizer, scheduler) -> None:
    _train_step(model, optimizer, scheduler)  # moves weights, Adam moments and the LR schedule
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    random.seed(123), np.random.seed(123), torch.manual_seed(123)


def test_roundtrip_restores_weights_optimizer_scheduler_and_rng(tiny_model, tmp_path):
    model = tiny_model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for _ in range(2):
        _train_step(model, optimizer, scheduler)

    path = ckpt.save_checkpoint(
        tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer=_tokenizer(),
        trainer_state={"data_position": 16, "epoch": 0, "ledger": {"stages": {}}},
    )
    assert path == tmp_path / "checkpoints" / "step-00000002"
    # deepcopy: state_dict() returns the live moment tensors, which the perturbation would change.
    weights, opt_state = _snapshot(model), copy.deepcopy(optimizer.state_dict())
    lr = scheduler.get_last_lr()
    expected_draws = _draw()  # the RNG streams right after the save

    _perturb(model, optimizer, scheduler)
    assert not torch.equal(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])
    assert scheduler.get_last_lr() != lr

    state = ckpt.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert state == {"step": 2, "data_position": 16, "epoch": 0, "ledger": {"stages": {}}}
    for key, value in _snapshot(model).items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)
    restored = optimizer.state_dict()
    for index, param_state in opt_state["state"].items():
        for name, value in param_state.items():
            torch.testing.assert_close(restored["state"][index][name], value, rtol=0, atol=0)
    assert scheduler.get_last_lr() == lr
    draws = _draw()
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1]
    torch.testing.assert_close(draws[2], expected_draws[2], rtol=0, atol=0)
    # The tokenizer came along and loads back.
    assert transformers.PreTrainedTokenizerFast.from_pretrained(path).convert_tokens_to_ids("world") == 3


def test_tied_embeddings_roundtrip(tmp_path):
    # With tied embeddings only one copy is written; loading must accept the tied key as present.
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )
    model = transformers.Qwen2ForCausalLM(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = ckpt.save_checkpoint(tmp_path, 0, model=model, optimizer=optimizer, trainer_state={})
    before = _snapshot(model)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2.0)
    ckpt.load_checkpoint(path, model=model)
    torch.testing.assert_close(model.lm_head.weight, before["lm_head.weight"], rtol=0, atol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_peft_model_saves_and_restores_only_the_adapter(tiny_model, tmp_path):
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(tiny_model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _train_step(model, optimizer)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, trainer_state={"epoch": 1})
    assert (path / "adapter_model.safetensors").is_file()
    assert not (path / "model.safetensors").exists()

    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert lora_before
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.zero_()
    assert ckpt.load_checkpoint(path, model=model, optimizer=optimizer)["epoch"] == 1
    after = model.state_dict()
    for key, value in lora_before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


def test_plain_module_without_save_pretrained(tmp_path):
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight  # tied, so safetensors sees a shared tensor

    torch.manual_seed(1)
    model = Head()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, trainer_state={})
    before = _snapshot(model)
    with torch.no_grad():
        model.embed.weight.fill_(0.0)
    ckpt.load_checkpoint(path, model=model)
    torch.testing.assert_close(model.out.weight, before["out.weight"], rtol=0, atol=0)


def test_latest_checkpoint_ignores_tmp_dirs_and_sorts_numerically(tiny_model, tmp_path):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (9, 10):
        ckpt.save_checkpoint(tmp_path, step, model=tiny_model, optimizer=optimizer, trainer_state={}, keep_last=None)
    # A write killed half-way leaves a .tmp dir with a larger step: it must not count.
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000011"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000010"
    # The checkpoints directory itself is accepted too.
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-00000010"


def test_failed_write_leaves_no_complete_looking_checkpoint(tiny_model, tmp_path, monkeypatch):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    ckpt.save_checkpoint(tmp_path, 1, model=tiny_model, optimizer=optimizer, trainer_state={})

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if str(f).endswith("rng.pt"):
            raise KeyboardInterrupt  # stands in for the process being killed mid-write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model=tiny_model, optimizer=optimizer, trainer_state={})
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "step-00000002").exists()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000001"
    # The next save of that step clears the leftover and succeeds.
    path = ckpt.save_checkpoint(tmp_path, 2, model=tiny_model, optimizer=optimizer, trainer_state={})
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_keep_last_prunes_oldest(tiny_model, tmp_path):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model=tiny_model, optimizer=optimizer, trainer_state={})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    ckpt.save_checkpoint(tmp_path, 4, model=tiny_model, optimizer=optimizer, trainer_state={}, keep_last=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000004"]


def _files(directory) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_kill_during_pruning_leaves_no_partial_listed_checkpoint(tiny_model, tmp_path, monkeypatch):
    """A process killed while pruning an old checkpoint must not leave it listed with files missing
    (resume would pick it, or fail on it); the next save finishes the interrupted deletion."""
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, model=tiny_model, optimizer=optimizer, trainer_state={})
    complete = _files(ckpt.latest_checkpoint(tmp_path))
    assert {"model.safetensors", "optimizer.pt", "rng.pt", ckpt.TRAINER_STATE} <= complete

    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        # Deletes the weights, keeps trainer_state.json (what makes a checkpoint look complete), dies.
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, model=tiny_model, optimizer=optimizer, trainer_state={})  # prunes step 1
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)

    listed = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in listed] == ["step-00000002", "step-00000003"]
    for path in listed:
        assert _files(path) == complete, path.name
        ckpt.load_checkpoint(path, model=tiny_model, optimizer=optimizer)
    # The next save removes the half-deleted leftover.
    ckpt.save_checkpoint(tmp_path, 4, model=tiny_model, optimizer=optimizer, trainer_state={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]


def test_kill_while_replacing_a_resaved_step_keeps_the_new_copy(tiny_model, tmp_path, monkeypatch):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    ckpt.save_checkpoint(tmp_path, 5, model=tiny_model, optimizer=optimizer, trainer_state={"v": 1})

    def killed_midway(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 5, model=tiny_model, optimizer=optimizer, trainer_state={"v": 2})
    monkeypatch.undo()
    (path,) = ckpt.list_checkpoints(tmp_path)
    assert ckpt.load_checkpoint(path, model=tiny_model)["v"] == 2
    ckpt.save_checkpoint(tmp_path, 6, model=tiny_model, optimizer=optimizer, trainer_state={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000005", "step-00000006"]


def test_resaving_a_step_replaces_it(tiny_model, tmp_path):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    ckpt.save_checkpoint(tmp_path, 5, model=tiny_model, optimizer=optimizer, trainer_state={"v": 1})
    path = ckpt.save_checkpoint(tmp_path, 5, model=tiny_model, optimizer=optimizer, trainer_state={"v": 2})
    assert ckpt.load_checkpoint(path, model=tiny_model)["v"] == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]


def test_non_json_trainer_state_fails_before_writing(tiny_model, tmp_path):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ckpt.save_checkpoint(tmp_path, 1, model=tiny_model, optimizer=optimizer, trainer_state={"t": torch.ones(1)})
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_loading_into_a_different_model_names_the_mismatch(tiny_model, tmp_path):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    path = ckpt.save_checkpoint(tmp_path, 1, model=tiny_model, optimizer=optimizer, trainer_state={})
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="do not match the model"):
        ckpt.load_checkpoint(path, model=other)


def test_load_rejects_incomplete_dir(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path, model=tiny_model)


def test_checkpoint_step_parses_names(tmp_path):
    assert ckpt.checkpoint_step(tmp_path / "step-00000120") == 120
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        ckpt.checkpoint_step(tmp_path / "model")


@pytest.mark.integration
def test_interrupted_and_resumed_training_matches_uninterrupted(tmp_path):
    """4 steps straight vs 2 steps + checkpoint + fresh objects + load + 2 steps: identical weights.

    The batches come from torch.randint, so this also checks that the restored RNG replays
    the same data, and that Adam moments and the LR schedule continue where they stopped.
    """
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )

    def fresh(seed: int):
        torch.manual_seed(seed)
        model = transformers.Qwen2ForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
        return model, optimizer, scheduler

    model, optimizer, scheduler = fresh(0)
    for _ in range(4):
        _train_step(model, optimizer, scheduler)
    straight = _snapshot(model)

    model, optimizer, scheduler = fresh(0)
    for _ in range(2):
        _train_step(model, optimizer, scheduler)
    ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={})
    del model, optimizer, scheduler  # the process "dies"

    model, optimizer, scheduler = fresh(99)  # a new process, differently seeded
    ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model=model, optimizer=optimizer, scheduler=scheduler)
    for _ in range(2):
        _train_step(model, optimizer, scheduler)
    for key, value in _snapshot(model).items():
        torch.testing.assert_close(value, straight[key], rtol=0, atol=0, msg=key)
