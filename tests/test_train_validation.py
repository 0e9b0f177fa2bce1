"""Held-out blocks and best-checkpoint selection in the training loop, AdamW's betas, and the paper's
fine-tune recipe in configs/paper.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from whoharry.config import TrainConfig, load_config
from whoharry.core import validation
from whoharry.core.train import summary, train
from whoharry.errors import WhoharryError
from whoharry.method.objectives import Objective, causal_lm_loss

from .conftest import interrupted, tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]
# random blocks: the first epoch learns the token distribution, the next ones only memorise the blocks
# trained on, so the held-out loss is lowest after epoch 1 and rises from there (at this learning rate)
OVERFIT = {"epochs": 4, "learning_rate": 3e-2, "batch_size": 2, "precision": "fp32", "warmup_ratio": 0.0,
           "validation_share": 0.25, "select_best": True}


def _data(vocab: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (8, 16), generator=generator, dtype=torch.int32)
    ids[:, 0] = torch.arange(2, 10, dtype=torch.int32)  # each block's first token names it
    return ids


def _model(vocab: int = 300) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(vocab))


def _records(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line]


def _held_out_loss(model: torch.nn.Module, ids: torch.Tensor, seed: int = 0, share: float = 0.25) -> float:
    _, held_out = validation.split(ids, share, seed)
    with torch.no_grad():
        return causal_lm_loss(model(input_ids=ids[held_out].long()).logits, ids[held_out]).item()


def test_held_out_blocks_are_never_trained_on(tmp_path):
    ids = _data()
    model = _model()
    seen = {"train": set(), "eval": set()}
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen["train" if module.training else "eval"].update(
            kwargs["input_ids"][:, 0].tolist()), with_kwargs=True)
    cfg = TrainConfig(epochs=3, batch_size=2, precision="fp32", validation_share=0.25)
    result = train(model, ids, ids, cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    trained, held_out = validation.split(ids, 0.25, 0)
    assert len(held_out) == result.validation_blocks == 2  # ceil(0.25 x 8), as train_test_split counts
    assert sorted(trained + held_out) == list(range(8))
    assert seen["train"] == {int(ids[i, 0]) for i in trained}  # every other block trained on, each epoch
    assert seen["eval"] == {int(ids[i, 0]) for i in held_out}  # the held-out ones only measured
    assert result.steps == 9  # an epoch is a pass over the 6 blocks trained on
    assert validation.split(ids, 0.25, 0) == (trained, held_out) != validation.split(ids, 0.25, 1)
    # measured in the steps that end an epoch, and the last, as the loss and its perplexity
    measured = [r for r in _records(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in measured] == [3, 6, 9]
    assert all(r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-5) for r in measured)
    assert result.val_loss == pytest.approx(_held_out_loss(model, ids), rel=1e-5)
    assert summary(result)["validation_blocks"] == 2 and "best_step" not in summary(result)


def test_adam_betas_reach_the_optimizer(tmp_path, monkeypatch):
    made = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.defaults["betas"])

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    cfg = TrainConfig(epochs=1, batch_size=4, precision="fp32", adam_beta1=0.8, adam_beta2=0.98)
    train(_model(), _data(), _data(), cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    assert made == [(0.8, 0.98)]


def test_select_best_keeps_the_weights_of_lowest_held_out_loss(tmp_path, tokenizer):
    vocab = len(tokenizer)
    ids = _data(vocab)
    model = _model(vocab)
    last = {}
    cfg = TrainConfig(**OVERFIT)
    folder = tmp_path / "final"
    result = train(model, ids, ids, cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False,
                   on_step=lambda step: last.update({k: v.clone() for k, v in model.state_dict().items()}),
                   final=(folder, tokenizer))
    measured = {r["step"]: r["val_loss"] for r in _records(tmp_path) if "val_loss" in r}
    assert list(measured) == [3, 6, 9, 12]
    lowest = min(measured, key=measured.get)
    assert lowest != 12 and measured[12] > measured[lowest] + 0.1, measured  # the run overfits after epoch 1
    assert result.best_step == lowest and result.best_val_loss == pytest.approx(measured[lowest], abs=1e-6)
    assert summary(result)["best_step"] == lowest
    # the model in memory and the saved folder hold the best weights, not the last step's
    assert _held_out_loss(model, ids) == pytest.approx(measured[lowest], abs=1e-5)
    saved = AutoModelForCausalLM.from_pretrained(folder)
    assert _held_out_loss(saved, ids) == pytest.approx(measured[lowest], abs=1e-5)
    assert any(not torch.equal(last[name], value) for name, value in model.state_dict().items())
    assert [r.get("best") for r in _records(tmp_path) if "val_loss" in r].count(True) == 1


def test_select_best_resumed_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    ids = _data()
    cfg = TrainConfig(**OVERFIT, save_every=4)
    straight = _model()
    expected = train(straight, ids, ids, cfg, seed=3, stage_dir=tmp_path / "a", run_key="k", desc="a",
                     progress=False)
    assert expected.best_step not in (None, expected.steps)

    interrupted(monkeypatch, 10, lambda: train(_model(), ids, ids, cfg, seed=3, stage_dir=tmp_path / "b",
                                               run_key="k", desc="b", progress=False))
    checkpoints = tmp_path / "b" / "checkpoints"
    # the best so far is on disk, and the checkpoint a rerun resumes from holds the best of its time
    assert (checkpoints / "best.safetensors").is_file() and (checkpoints / "step-8" / "best.safetensors").is_file()
    state = json.loads((checkpoints / "step-8" / "state.json").read_text())
    assert state["best"]["step"] == expected.best_step
    resumed = _model()  # a fresh process: a new model from the base weights
    result = train(resumed, ids, ids, cfg, seed=3, stage_dir=tmp_path / "b", run_key="k", desc="b", progress=False)
    assert result.resumed_from == 8
    assert (result.best_step, result.best_val_loss) == (expected.best_step, expected.best_val_loss)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert len(_records(tmp_path / "b")) == result.steps


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("unlearn.select_best=true", "unlearn.select_best needs validation_share > 0"),
        ("reinforce.validation_share=1", r"reinforce.validation_share must be in \[0, 1\)"),
        ("unlearn.adam_beta2=1.0", r"unlearn.adam_beta2 must be in \[0, 1\)"),
        ("reinforce.adam_beta1=-0.1", r"reinforce.adam_beta1 must be in \[0, 1\)"),
    ],
)
def test_bad_validation_and_optimizer_settings_are_refused(override, message):
    with pytest.raises(WhoharryError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_select_best_with_a_forgetting_baseline_is_refused_before_training(project, tiny_model_dir, method):
    from typer.testing import CliRunner

    from whoharry.cli import app

    config = write_config(project, tiny_model_dir, unlearn={"validation_share": 0.25, "select_best": True})
    out = project / "run"
    result = CliRunner().invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q",
                                      "--method", method])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: unlearn.select_best keeps the weights of lowest held-out "
                                    f"cross-entropy, which with forget.method {method} is the model that forgot least")
    assert not (out / "unlearn").exists()


def test_the_loop_refuses_select_best_for_gradient_ascent_or_without_held_out_blocks(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, precision="fp32", validation_share=0.25, select_best=True)
    with pytest.raises(WhoharryError, match="select_best keeps the lowest held-out cross-entropy"):
        train(_model(), _data(), _data(), cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False,
              objective=Objective(kind="ga"))
    cfg.validation_share = 0.0  # a config built in code, not checked by load_config
    with pytest.raises(WhoharryError, match="select_best needs validation_share > 0"):
        train(_model(), _data(), _data(), cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_held_out_share_that_leaves_nothing_to_train_on_is_refused(tmp_path):
    ids = _data()
    cfg = TrainConfig(epochs=1, batch_size=2, precision="fp32", validation_share=0.9)
    with pytest.raises(WhoharryError, match="holds out 8 of 8 blocks, leaving none to train on"):
        train(_model(), ids, ids, cfg, seed=0, stage_dir=tmp_path, run_key="k", desc="t", progress=False)
    unlabelled = ids.clone().fill_(-100)
    with pytest.raises(WhoharryError, match="held-out blocks have no labelled token"):
        validation.split(unlabelled, 0.25, 0)


def test_perplexity_is_inf_on_overflow_and_never_made_from_nan():
    assert validation.perplexity(0.0) == 1.0
    assert validation.perplexity(1e4) == math.inf
    assert math.isnan(validation.perplexity(math.nan))


def test_reinforce_records_the_chosen_step_in_its_manifest(project, tiny_model_dir):
    from typer.testing import CliRunner

    from whoharry.cli import app

    config = write_config(project, tiny_model_dir, reinforce={"epochs": 2, "validation_share": 0.2,
                                                              "select_best": True, "adam_beta2": 0.98})
    out = project / "run"
    result = CliRunner().invoke(app, ["reinforce", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "reinforce" / "manifest.json").read_text())
    measured = {r["step"]: r["val_loss"] for r in _records(out / "reinforce") if "val_loss" in r}
    chosen = manifest["summary"]["best_step"]
    assert len(measured) == 2 and measured[chosen] == min(measured.values())
    assert manifest["summary"]["best_val_loss"] == pytest.approx(measured[chosen], abs=1e-6)
    assert manifest["summary"]["validation_blocks"] >= 1
    assert not (out / "reinforce" / "checkpoints").exists()  # cleared with the best weights once complete


def test_the_papers_config_sets_the_authors_fine_tune_recipe():
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    for stage in (cfg.unlearn, cfg.reinforce):
        assert (stage.epochs, stage.learning_rate, stage.batch_size, stage.grad_accum) == (3, 5e-5, 8, 1)
        assert (stage.warmup_ratio, stage.max_grad_norm, stage.weight_decay) == (0.0, 0.0, 0.0)
        assert (stage.adam_beta1, stage.adam_beta2, stage.max_steps) == (0.9, 0.98, None)
    assert (cfg.unlearn.validation_share, cfg.unlearn.select_best) == (0.05, True)
    assert (cfg.reinforce.validation_share, cfg.reinforce.select_best) == (0.0, False)  # every block reinforced
    assert cfg.labels.precision == "fp32" and cfg.labels.alpha == 5.0
    assert (cfg.labels.targets, cfg.labels.translations, cfg.augment.tokens) == ("hard", 1, 0)  # one argmax label
    assert cfg.model.name == "meta-llama/Llama-2-7b-chat-hf" and cfg.data.block_length == 512
    assert cfg.forget.method == "whp" and cfg.data.retain == []
    default = load_config(ROOT / "configs" / "default.yaml")
    assert (default.unlearn.adam_beta2, default.unlearn.validation_share, default.unlearn.select_best) == \
        (0.999, 0.0, False)


@pytest.mark.parametrize("retain", [[], ["general.txt"]])
def test_whp_unlearning_measures_the_held_out_blocks_against_their_generic_labels(project, tiny_model_dir, retain):
    """The held-out blocks are target blocks only, retain text or not (retain blocks are always trained on)."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from whoharry.cli import app

    config = write_config(project, tiny_model_dir, data={"retain": retain},
                          unlearn={"epochs": 2, "validation_share": 0.2, "select_best": True})
    out = project / "run"
    result = CliRunner().invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary_ = json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]
    stored = load_file(str(out / "labels" / "labels.safetensors"))
    ids, labels = stored["input_ids"], stored["labels"]
    _, held_out = validation.split(labels, 0.2, 0)  # of the target's blocks alone
    assert summary_["validation_blocks"] == len(held_out) >= 1
    unlearned = AutoModelForCausalLM.from_pretrained(out / "unlearn" / "final")
    with torch.no_grad():
        loss = causal_lm_loss(unlearned(input_ids=ids[held_out].long()).logits, labels[held_out]).item()
    assert loss == pytest.approx(summary_["best_val_loss"], abs=1e-5)  # the generic labels, not the text
    with torch.no_grad():
        own = causal_lm_loss(unlearned(input_ids=ids[held_out].long()).logits, ids[held_out]).item()
    assert abs(own - loss) > 1e-3


def test_held_out_blocks_come_only_from_the_first_blocks_when_asked():
    ids = _data()
    trained, held_out = validation.split(ids, 0.25, 0, among=4)
    assert len(held_out) == 1 and held_out[0] < 4  # ceil(0.25 x 4), among the first four
    assert sorted(trained + held_out) == list(range(8)) and {4, 5, 6, 7} <= set(trained)
