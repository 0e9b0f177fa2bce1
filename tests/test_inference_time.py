"""Inference-time WHP: the two-model logit combination, its generation, and `whoharry eval --ensemble`."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.evaluation.completions import generate
from whoharry.method.inference import InferenceTimeWHP
from whoharry.method.whp import generic_labels

from .conftest import write_config

runner = CliRunner()


def test_its_argmax_is_the_label_formula_and_left_padding_is_respected(tokenizer, tiny_model_dir, trained_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reinforced = AutoModelForCausalLM.from_pretrained(trained_model_dir).eval()
    ensemble = InferenceTimeWHP(base, reinforced, alpha=5.0)
    ids = torch.tensor([tokenizer("Harry Potter went to Hogwarts on the").input_ids])
    with torch.no_grad():
        combined = ensemble(input_ids=ids).logits[0]
        expected = generic_labels(base(input_ids=ids).logits[0], reinforced(input_ids=ids).logits[0], 5.0)
    assert torch.equal(combined.argmax(-1), expected)
    # a left-padded row reads as the same row alone
    prompts = [tokenizer("Harry").input_ids, tokenizer("Ron Weasley played").input_ids]
    batched = generate(ensemble, tokenizer, prompts, 5, "fp32")
    alone = [generate(ensemble, tokenizer, [prompt], 5, "fp32")[0] for prompt in prompts]
    assert batched == alone


def test_with_nothing_reinforced_it_generates_as_the_base_does(tokenizer, trained_model_dir):
    base = AutoModelForCausalLM.from_pretrained(trained_model_dir).eval()
    ensemble = InferenceTimeWHP(base, base, alpha=5.0)
    prompts = [tokenizer("Harry Potter went").input_ids, tokenizer("The river").input_ids]
    assert generate(ensemble, tokenizer, prompts, 6, "fp32") == generate(base, tokenizer, prompts, 6, "fp32")


def test_eval_ensemble_scores_the_combination_beside_the_base(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir, eval={"parts": ["probes", "verbatim", "relearning"]})
    out = project / "run"
    assert runner.invoke(app, ["reinforce", "--config", str(config), "--out", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["eval", "--ensemble", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval-ensemble" / "report.json").read_text())
    assert report["models"]["unlearned"].startswith("ensemble of the base and")
    summary = report["summary"]
    assert "verbmem_rouge_l" in summary["unlearned"]
    assert summary["unlearned"]["target_p_answer"] != summary["base"]["target_p_answer"]
    assert not any(key.startswith("relearn") for key in summary["unlearned"])  # no weights to fine-tune
    assert any(key.startswith("relearn") for key in summary["base"])
    assert not (out / "eval").exists()  # the fine-tuned model's report is left alone
