"""Soft generic targets over several translations (`labels.translations`, `labels.targets: soft`): the
top-k distribution, its cross-entropy, its reduction to the hard label, and the stages end to end."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.translate import translate_block
from whoharry.cli import app
from whoharry.core.text import make_blocks
from whoharry.method.objectives import IGNORE, Objective, causal_lm_loss, soft_cross_entropy
from whoharry.method.whp import generic_distribution, generic_labels, top_k_targets
from whoharry.stages.labels import block_rng, compute_labels
from whoharry.stages.shards import SoftTargets

from .conftest import make_copy_model, write_config

runner = CliRunner()


def test_top_k_targets_sum_to_one_and_lead_with_the_argmax():
    torch.manual_seed(0)
    base, reinforced = torch.randn(5, 40), torch.randn(5, 40)
    probs = generic_distribution(base, reinforced, alpha=5.0)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(5))
    ids, kept = top_k_targets(probs, 4)
    assert ids.dtype == torch.int32 and ids.shape == kept.shape == (5, 4)
    assert torch.allclose(kept.sum(dim=-1), torch.ones(5))
    assert torch.equal(ids[:, 0].long(), generic_labels(base, reinforced, alpha=5.0))
    assert (kept[:, :-1] >= kept[:, 1:]).all()
    # renormalised: the kept tokens keep their ratios
    assert torch.allclose(kept[:, 1] / kept[:, 0], probs.gather(1, ids[:, 1:2].long()).squeeze(1)
                          / probs.gather(1, ids[:, :1].long()).squeeze(1))


def test_soft_cross_entropy_of_one_hot_targets_is_the_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, 3] = IGNORE
    own = SoftTargets.one_hot(labels.clamp(min=0), 3)
    soft = soft_cross_entropy(logits, own.ids, own.probs, labels)
    assert torch.allclose(soft, causal_lm_loss(logits, labels, reduction="sum"))
    # a target split between two tokens costs the mean of their losses
    split = SoftTargets.empty(2, 6, 3)
    split.ids[..., 0], split.ids[..., 1] = 2, 5
    split.probs[..., 0] = split.probs[..., 1] = 0.5
    all_labelled = torch.zeros(2, 6, dtype=torch.long)
    half = 0.5 * (causal_lm_loss(logits, torch.full((2, 6), 2), reduction="sum")
                  + causal_lm_loss(logits, torch.full((2, 6), 5), reduction="sum"))
    assert torch.allclose(soft_cross_entropy(logits, split.ids, split.probs, all_labelled), half)
    objective = Objective(kind="soft", target_ids=split.ids, target_probs=split.probs)
    assert torch.allclose(objective.forget_loss(logits, all_labelled, [0, 1]), half)


def test_the_soft_objective_needs_its_targets():
    from whoharry.errors import WhoharryError

    with pytest.raises(WhoharryError, match="soft objective needs"):
        Objective(kind="soft")


def test_one_translation_soft_targets_reduce_to_the_hard_labels(tokenizer):
    """With one translation the soft target's mode is the paper's hard label at every position, its rows sum
    to 1 where there is a label and are empty where there is none."""
    model = make_copy_model(len(tokenizer)).eval()
    anchors = parse_anchors({"Harry": ["Jon", "Ben"], "Hogwarts Express": "school train", "Ron": "Tom"})
    text = "Harry took the Hogwarts Express with Ron, and later Harry slept. " * 3
    blocks = make_blocks(text, tokenizer, 24)
    hard = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    soft = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False,
                          targets="soft", top_k=4)
    assert hard.soft is None and soft.soft is not None
    assert torch.equal(hard.labels, soft.labels)
    labelled = soft.labels != IGNORE
    assert torch.equal(soft.soft.ids[..., 0][labelled], soft.labels[labelled])
    sums = soft.soft.probs.sum(dim=-1)
    assert torch.allclose(sums[labelled], torch.ones(int(labelled.sum())))
    assert (sums[~labelled] == 0).all()
    assert soft.stats["soft_top_k"] == 4 and soft.stats["soft_bytes_per_token"] == 32


def test_several_translations_average_the_distributions_of_their_choices(tokenizer):
    """With a copy model the generic distribution after an anchor's last token is peaked on its translation's
    last token: over two translations that chose differently it splits between both; where they chose alike
    it stays on the one."""
    model = make_copy_model(len(tokenizer)).eval()
    anchors = parse_anchors({"Harry": ["Jon", "Ben"]})
    text = "Harry took the train, and later Harry slept at home in the town. " * 6
    blocks = make_blocks(text, tokenizer, 24)
    soft = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False,
                          translations=2, targets="soft", top_k=2)
    names = {value: tokenizer(" " + value, add_special_tokens=False).input_ids[-1] for value in ("Jon", "Ben")}
    split = alike = 0
    for b, ids in enumerate(blocks.ids):
        first, second = (translate_block(text, ids, blocks.offsets[b], anchors, anchors.pattern(), tokenizer,
                                         block_rng(0, b, n), blocks.bos_token_id) for n in (0, 1))
        for occ_a, occ_b in zip(first.occurrences, second.occurrences, strict=True):
            t = occ_a.last
            if t + 1 >= len(ids) or first.mapping[t] == -1 or second.mapping[t] == -1 or occ_a.repeat:
                continue
            got = dict(zip(soft.soft.ids[b, t + 1].tolist(), soft.soft.probs[b, t + 1].tolist(), strict=True))
            if occ_a.value != occ_b.value:
                split += 1
                assert set(got) == set(names.values()), (b, t)
                assert all(abs(p - 0.5) < 0.05 for p in got.values()), got
            else:
                alike += 1
                assert got[names[occ_a.value]] > 0.95, got
    assert split and alike


def test_soft_targets_through_labels_and_unlearn(project, tiny_model_dir):
    """`labels.targets: soft` with two translations writes the top-k targets beside the labels, and the unlearn
    stage trains on them (retain blocks with their own tokens), ending with a finite loss."""
    config = write_config(project, tiny_model_dir, labels={"translations": 2, "targets": "soft", "top_k": 3},
                          data={"target": "target.txt", "anchors": "anchors.yaml", "block_length": 32,
                                "retain": ["general.txt"]})
    out = project / "run"
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "--max-steps", "2", "-q"])
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out / "labels" / "labels.safetensors"))
    blocks, length = tensors["labels"].shape
    assert tensors["soft_ids"].shape == (blocks, length, 3) and tensors["soft_probs"].dtype == torch.float32
    labelled = tensors["labels"] != IGNORE
    assert torch.allclose(tensors["soft_probs"].sum(-1)[labelled], torch.ones(int(labelled.sum())), atol=1e-5)
    import json

    manifest = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert manifest["summary"]["retain_blocks"] > 0 and manifest["summary"]["targets"] == "soft"
    assert manifest["summary"]["final_loss"] == manifest["summary"]["final_loss"]  # not NaN
    hard = project / "hard"
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["labels", "--config", str(config), "--out", str(hard), "--max-steps", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert "soft_ids" not in load_file(str(hard / "labels" / "labels.safetensors"))


def test_top_k_beyond_the_vocabulary_keeps_the_whole_distribution(tokenizer):
    model = make_copy_model(len(tokenizer)).eval()
    anchors = parse_anchors({"Harry": ["Jon", "Ben"]})
    blocks = make_blocks("Harry took the train, and later Harry slept. " * 4, tokenizer, 16)
    soft = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False,
                          targets="soft", top_k=len(tokenizer) + 10)
    labelled = soft.labels != IGNORE
    assert torch.allclose(soft.soft.probs.sum(-1)[labelled], torch.ones(int(labelled.sum())), atol=1e-5)
    assert (soft.soft.probs[..., len(tokenizer):] == 0).all()
