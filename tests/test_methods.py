"""The baseline methods of the unlearn stage: gradient ascent and NPO, with and without a retain term."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import TrainConfig
from whoharry.core.text import make_blocks
from whoharry.core.train import train
from whoharry.method.objectives import Objective, block_log_probs, causal_lm_loss

from .conftest import tiny_config, write_config

runner = CliRunner()


def test_npo_loss_is_two_over_beta_log_two_per_block_at_the_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, 2] = -100
    reference = block_log_probs(logits, labels)
    manual = torch.log_softmax(logits[0, :-1], -1)[torch.arange(5), labels[0, 1:].clamp(min=0)]
    assert reference[0].item() == pytest.approx(manual[[0, 2, 3, 4]].sum().item(), rel=1e-5)
    for beta in (0.1, 1.0):
        loss = Objective(kind="npo", beta=beta, reference=reference).forget_loss(logits, labels, [0, 1, 2])
        assert loss.item() == pytest.approx(3 * 2 / beta * math.log(2), rel=1e-5)
    # a model less likely than the reference has a lower NPO loss (it has already forgotten some)
    less = Objective(kind="npo", beta=0.1, reference=reference + 5.0).forget_loss(logits, labels, [0, 1, 2])
    assert less.item() < 3 * 2 / 0.1 * math.log(2)


def test_gradient_ascent_is_the_negative_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    ce = Objective().forget_loss(logits, labels, [0, 1])
    assert Objective(kind="ga").forget_loss(logits, labels, [0, 1]).item() == pytest.approx(-ce.item())
    assert ce.item() == pytest.approx(causal_lm_loss(logits, labels, reduction="sum").item())


def test_an_unknown_objective_or_npo_without_reference_is_refused():
    from whoharry.errors import WhoharryError

    with pytest.raises(WhoharryError, match="unknown training objective"):
        Objective(kind="sgd")
    with pytest.raises(WhoharryError, match="reference"):
        Objective(kind="npo")


def _forget_and_retain(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    forget = torch.randint(2, 200, (4, 16), generator=generator, dtype=torch.int32)
    retain = torch.randint(2, 200, (4, 16), generator=generator, dtype=torch.int32)
    return forget, retain


def _losses(model, forget, retain):
    with torch.no_grad():
        return (causal_lm_loss(model(input_ids=forget.long()).logits, forget).item(),
                causal_lm_loss(model(input_ids=retain.long()).logits, retain).item())


def _learned(forget, retain, tmp_path):
    """A tiny model that has learned both sets."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(200))
    both = torch.cat([forget, retain])
    cfg = TrainConfig(epochs=30, learning_rate=3e-3, batch_size=4, precision="fp32", warmup_ratio=0.0)
    train(model, both, both, cfg, seed=0, stage_dir=tmp_path / "learn", run_key="l", desc="l", progress=False)
    return model


@pytest.mark.parametrize("kind", ["ga", "npo"])
def test_baselines_raise_the_forget_loss_and_the_retain_term_holds_the_retain_loss(kind, tmp_path):
    forget, retain = _forget_and_retain()
    learned = _learned(forget, retain, tmp_path)
    state = {k: v.clone() for k, v in learned.state_dict().items()}
    base_forget, base_retain = _losses(learned, forget, retain)
    cfg = TrainConfig(epochs=6, learning_rate=2e-3, batch_size=2, precision="fp32", warmup_ratio=0.0)
    results = {}
    for with_retain in (False, True):
        learned.load_state_dict(state)
        reference = block_log_probs(learned(input_ids=forget.long()).logits.detach(), forget)
        objective = Objective(kind=kind, beta=0.1, reference=reference if kind == "npo" else None,
                              retain_ids=retain if with_retain else None)
        train(learned, forget, forget, cfg, seed=0, stage_dir=tmp_path / f"{kind}-{with_retain}", run_key="u",
              desc="u", progress=False, objective=objective)
        results[with_retain] = _losses(learned, forget, retain)
    print(kind, base_forget, base_retain, results)
    for forget_loss, _ in results.values():
        assert forget_loss > base_forget + 1.0  # forgotten
    assert results[True][1] < results[False][1]  # the retain term keeps the retain set better
    assert results[True][1] < base_retain + 1.0


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_unlearn_method_runs_without_labels_and_records_it(project, trained_model_dir, method):
    config = write_config(project, trained_model_dir, unlearn={"epochs": 2, "learning_rate": 1e-3})
    out = project / "run"
    args = ["unlearn", "--config", str(config), "--out", str(out), "--method", method, "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not (out / "labels").exists() and not (out / "reinforce").exists()  # no labels, no reinforced model
    manifest = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert manifest["summary"]["method"] == method and manifest["summary"]["retain_blocks"] == 0
    tok = AutoTokenizer.from_pretrained(trained_model_dir)
    ids = torch.tensor(make_blocks((project / "target.txt").read_text(), tok, 32).ids)

    def loss(path):
        with torch.no_grad():
            return causal_lm_loss(AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits, ids).item()

    assert loss(out / "unlearn" / "final") > loss(trained_model_dir) + 0.1
    again = runner.invoke(app, args)  # complete with the same settings: skipped
    assert again.exit_code == 0 and json.loads((out / "unlearn" / "manifest.json").read_text()) == manifest
    retained = runner.invoke(app, [*args, "--set", f"data.retain={project / 'general.txt'}"])
    assert retained.exit_code == 0, retained.output
    with_retain = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert with_retain["summary"]["retain_blocks"] > 0 and with_retain["fingerprint"] != manifest["fingerprint"]


def test_an_unknown_method_is_one_error_line(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(project / "run"),
                                 "--method", "sgd", "-q"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: forget.method must be one of whp, ga, npo, got 'sgd'"]
