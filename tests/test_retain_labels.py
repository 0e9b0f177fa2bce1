"""`forget.retain_labels`: the retain blocks of a whp run labelled with their own tokens, or with the base
model's next-token distribution (a KL to the base on general text)."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.core.text import make_blocks
from whoharry.method.objectives import IGNORE
from whoharry.method.whp import top_k_targets
from whoharry.stages.shards import SoftTargets
from whoharry.stages.unlearn import base_targets, reference_log_probs

from .conftest import write_config

runner = CliRunner()


def test_base_targets_are_the_models_top_k_shifted_into_the_labels_convention(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(2, 200, (3, 12), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    got = base_targets(model, ids, k=5, batch_size=2, precision="fp32")
    assert got.ids.shape == (3, 12, 5) and got.probs.dtype == torch.float32 and model.training
    assert (got.probs[:, 0] == 0).all()  # nothing predicts the first token
    with torch.no_grad():
        logits = model.eval()(input_ids=ids.long()).logits
    want_ids, want_probs = top_k_targets(torch.softmax(logits[1, 5].float(), -1)[None], 5)
    assert torch.equal(got.ids[1, 6], want_ids[0]) and torch.allclose(got.probs[1, 6], want_probs[0], atol=1e-5)
    assert torch.allclose(got.probs[:, 1:].sum(-1), torch.ones(3, 11), atol=1e-5)
    # the NPO reference reads the same forward passes: one batch or three give the same sums
    assert torch.allclose(reference_log_probs(model, ids, 1, "fp32"), reference_log_probs(model, ids, 3, "fp32"),
                          atol=1e-4)


def test_hard_labels_as_soft_targets_leave_the_unlabelled_positions_empty():
    labels = torch.tensor([[IGNORE, 7, 9], [4, IGNORE, 5]], dtype=torch.int32)
    soft = SoftTargets.from_labels(labels, 3)
    assert soft.ids[0, :, 0].tolist() == [0, 7, 9] and soft.probs[..., 0].tolist() == [[0, 1, 1], [1, 0, 1]]
    assert (soft.probs[..., 1:] == 0).all()


def _retain_kl(base_dir, model_dir, ids) -> float:
    """Mean KL(base || model) per position over `ids`, in nats."""
    with torch.no_grad():
        base = torch.log_softmax(AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits, -1)
        model = torch.log_softmax(AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits, -1)
    return (base.exp() * (base - model)).sum(-1).mean().item()


def test_base_retain_labels_keep_the_model_near_the_base_on_the_retain_text(project, tiny_model_dir):
    """The same run with the retain blocks labelled by the base model's distribution (kept whole: top_k above
    the vocabulary) ends closer to the base on them than with their own tokens, which a model that has not
    read them learns, with hard labels and with soft targets; the setting enters the unlearn key only, and
    not at all without retain texts."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    retain = torch.tensor(make_blocks((project / "general.txt").read_text(), tok, 32).ids).long()
    for targets in ("hard", "soft"):
        config = write_config(project, tiny_model_dir,
                              data={"target": "target.txt", "anchors": "anchors.yaml", "block_length": 32,
                                    "retain": ["general.txt"]},
                              labels={"targets": targets, "top_k": len(tok) + 1},
                              unlearn={"epochs": 3, "learning_rate": 3e-3, "batch_size": 2, "precision": "fp32"})
        kl, manifests = {}, {}
        for retain_labels in ("text", "base"):
            out = project / f"run-{targets}-{retain_labels}"
            result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q",
                                         "--set", f"forget.retain_labels={retain_labels}"])
            assert result.exit_code == 0, result.output
            manifests[retain_labels] = {stage: json.loads((out / stage / "manifest.json").read_text())
                                        for stage in ("labels", "unlearn")}
            kl[retain_labels] = _retain_kl(tiny_model_dir, out / "unlearn" / "final", retain)
        assert kl["base"] < 0.5 * kl["text"], (targets, kl)
        assert manifests["base"]["labels"]["fingerprint"] == manifests["text"]["labels"]["fingerprint"]
        assert manifests["base"]["unlearn"]["fingerprint"] != manifests["text"]["unlearn"]["fingerprint"]
        assert manifests["base"]["unlearn"]["summary"]["final_loss"] < float("inf")
        summary = manifests["base"]["unlearn"]["summary"]
        assert summary["targets"] == targets and summary["retain_labels"] == "base"  # as asked, not as trained
        card = (project / f"run-{targets}-base" / "unlearn" / "final" / "README.md").read_text()
        assert "fitted to the base model's distribution" in card
    from whoharry.config import load_config
    from whoharry.stages import unlearn

    plain = load_config(write_config(project, tiny_model_dir))
    base = load_config(write_config(project, tiny_model_dir), ["forget.retain_labels=base"])
    assert unlearn.key(plain, project / "x") == unlearn.key(base, project / "x")  # no retain blocks to label
    # with hard labels the labels' key leaves top_k out; the base targets keep top_k tokens, so the unlearn key
    # holds it
    retained = write_config(project, tiny_model_dir, data={"target": "target.txt", "anchors": "anchors.yaml",
                                                           "block_length": 32, "retain": ["general.txt"]})
    keys = {(how, k): unlearn.key(load_config(retained, [f"forget.retain_labels={how}", f"labels.top_k={k}"]),
                                  project / "x")
            for how in ("text", "base") for k in (2, 8)}
    assert keys["text", 2] == keys["text", 8] and keys["base", 2] != keys["base", 8]


def test_an_unknown_retain_labels_choice_is_one_error_line(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(project / "run"),
                                 "--set", "forget.retain_labels=model"])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "retain_labels" in result.output and "Traceback" not in result.output


def test_both_adds_each_retain_block_twice_once_with_its_tokens_once_with_the_base(tiny_model_dir):
    from whoharry.config import load_config
    from whoharry.stages.unlearn import with_retain

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    forget = torch.randint(2, 200, (3, 10), generator=generator, dtype=torch.int32)
    labels = forget.clone()
    labels[:, :2] = IGNORE
    retain = torch.randint(2, 200, (2, 10), generator=generator, dtype=torch.int32)
    results = {}
    for how in ("text", "base", "both"):
        cfg = load_config(None, [f"forget.retain_labels={how}", "labels.top_k=4", "unlearn.precision=fp32"])
        results[how] = with_retain(cfg, model, forget, labels, None, retain)
    ids, targets, soft = results["text"]
    assert ids.shape == (5, 10) and soft is None and torch.equal(targets[3:], retain)  # hard labels stay hard
    ids, targets, soft = results["both"]
    assert ids.shape == (7, 10) and torch.equal(ids[3:5], retain) and torch.equal(ids[5:], retain)
    assert soft.ids.shape == (7, 10, 4) and (soft.probs[:3, :, 0] == (labels != IGNORE).float()).all()
    assert torch.equal(soft.ids[3:5, :, 0], retain) and (soft.probs[3:5, :, 1:] == 0).all()  # their own tokens
    _, _, base = results["base"]
    assert torch.equal(soft.ids[5:], base.ids[3:]) and torch.allclose(soft.probs[5:], base.probs[3:])
    assert (soft.probs[5:, 1:, 1:] > 0).any()  # a distribution, not one token


def test_retain_labels_without_whp_retain_blocks_is_refused_before_any_training(project, tiny_model_dir):
    """ga and npo add their own retain term, and without `data.retain` there is nothing to label: a setting
    that would change nothing is one error line, and nothing is trained."""
    retained = {"target": "target.txt", "anchors": "anchors.yaml", "block_length": 32, "retain": ["general.txt"]}
    cases = [(write_config(project, tiny_model_dir, data=retained), ["--method", "ga"], "forget.method ga"),
             (write_config(project, tiny_model_dir), [], "data.retain is empty")]
    for config, extra, why in cases:
        out = project / "refused"
        result = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), *extra,
                                     "--set", "forget.retain_labels=both"])
        assert result.exit_code == 2, result.output
        assert result.output.count("error:") == 1 and why in result.output and "Traceback" not in result.output
        assert not (out / "reinforce").exists() and not (out / "unlearn").exists()
