"""The shared training loop: it learns its labels, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from whoharry.config import TrainConfig
from whoharry.core.train import sample_order, total_steps, train
from whoharry.method.objectives import causal_lm_loss

from .conftest import interrupted, tiny_config


def _data(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (6, 16), generator=generator, dtype=torch.int32)
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, labels


def _model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(vocab))


def test_sample_order_covers_each_epoch_once():
    cfg = TrainConfig(batch_size=2, grad_accum=2, epochs=2)
    seen = [i for step in range(total_steps(7, cfg)) for batch in sample_order(7, step, cfg, 0) for i in batch]
    assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:14]) == list(range(7))


def test_loss_ignores_unlabelled_positions():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 10.0
    labels = torch.tensor([[-100, 2, -100]])
    assert causal_lm_loss(logits, labels).item() < 1e-3


def test_training_lowers_the_loss_on_its_labels(tmp_path):
    ids, labels = _data(300)
    model = _model(300)
    with torch.no_grad():
        before = causal_lm_loss(model(input_ids=ids.long()).logits, labels).item()
    cfg = TrainConfig(epochs=10, learning_rate=3e-3, batch_size=3, precision="fp32", warmup_ratio=0.0)
    result = train(model, ids, labels, cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    with torch.no_grad():
        after = causal_lm_loss(model(input_ids=ids.long()).logits, labels).item()
    assert result.steps == 20
    assert after < before * 0.7
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 20


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    ids, labels = _data(300)
    cfg = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=2, grad_accum=2, precision="fp32", save_every=2)

    straight = _model(300)
    train(straight, ids, labels, cfg, seed=3, stage_dir=tmp_path / "a", run_key="k", desc="a", progress=False)

    interrupted(monkeypatch, 3, lambda: train(_model(300), ids, labels, cfg, seed=3, stage_dir=tmp_path / "b",
                                              run_key="k", desc="b", progress=False))
    # a fresh process: a new model from the base weights, resuming from the step-2 checkpoint
    assert (tmp_path / "b" / "checkpoints" / "step-2" / "state.json").is_file()
    resumed = _model(300)
    result = train(resumed, ids, labels, cfg, seed=3, stage_dir=tmp_path / "b", run_key="k", desc="b", progress=False)
    assert result.resumed_from == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    steps = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(steps) == result.steps, "the records of the lost step are dropped on resume"


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    ids, labels = _data(300)
    cfg = TrainConfig(epochs=2, batch_size=2, precision="fp32", save_every=1)
    train(_model(300), ids, labels, TrainConfig(**{**cfg.__dict__, "max_steps": 2}), seed=0,
          stage_dir=tmp_path, run_key="old", desc="x", progress=False)
    result = train(_model(300), ids, labels, cfg, seed=0, stage_dir=tmp_path, run_key="new", desc="x", progress=False)
    assert result.resumed_from == 0


def test_a_loss_gone_nan_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from whoharry.errors import WhoharryError
    from whoharry.method import objectives as train_module

    ids, labels = _data(300)
    cfg = TrainConfig(epochs=3, batch_size=2, precision="fp32", save_every=1)
    real, calls = train_module.causal_lm_loss, []

    def nan_at_the_third_step(logits, targets, **kwargs):
        calls.append(1)
        loss = real(logits, targets, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module, "causal_lm_loss", nan_at_the_third_step)
    with pytest.raises(WhoharryError, match=r"loss became nan at step 3; lower the learning rate or use precision"):
        train(_model(300), ids, labels, cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]
