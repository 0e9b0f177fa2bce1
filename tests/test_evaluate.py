"""Probe scoring and perplexity on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from whoharry.anchors import parse_anchors
from whoharry.completions import (
    Completion,
    complete,
    judge_nll,
    named_references,
    pooled_perplexity,
    read_completion_prompts,
)
from whoharry.config import EvalConfig
from whoharry.errors import WhoharryError
from whoharry.evaluate import add_specific_familiarity, block_losses, read_probes, score_completions, score_probes

from .conftest import make_copy_model


@pytest.mark.parametrize(
    ("reader", "content", "message"),
    [
        (read_probes, '{"prompt": "a"}', r"f.jsonl:1: expected"),
        (read_probes, "not json", r"f.jsonl:1: not valid JSON"),
        (read_probes, "", "is empty"),
        (read_completion_prompts, '{"prompt": "a", "references": "Hogwarts"}', r"f.jsonl:1: expected"),
        (read_completion_prompts, '{"prompt": "a", "references": ["Hogwarts", ""]}', r"f.jsonl:1: expected"),
        (read_completion_prompts, None, "not found"),
    ],
)
def test_probe_and_completion_file_errors(tmp_path, reader, content, message):
    path = tmp_path / "f.jsonl"
    if content is not None:
        path.write_text(content + "\n")
    with pytest.raises(WhoharryError, match=message):
        reader(path)


def test_answer_probability_and_greedy_hit_on_a_copy_model(tokenizer):
    """A copy model repeats the last token forever: its greedy completion of "... the" is " the the ..."
    and the probability of the answer " the" after " the" is close to 1."""
    model = make_copy_model(len(tokenizer)).eval()
    probes = [{"prompt": "the river flows past the", "answer": " the"},
              {"prompt": "the river flows past the", "answer": " river"}]
    cfg = EvalConfig(max_new_tokens=3, precision="fp32")
    first, second = score_probes(model, tokenizer, probes, cfg, "t")
    assert first["hit"] and first["completion"].startswith(" the the")
    assert first["p_answer"] > 0.9 > second["p_answer"]
    assert not second["hit"]


def test_perplexity_matches_the_mean_loss(tokenizer):
    torch.manual_seed(0)
    model = make_copy_model(len(tokenizer)).eval()
    text = "the river flows past the mill and into the sea. " * 6
    value = pooled_perplexity([(r["nll"], r["tokens"]) for r in block_losses(model, tokenizer, text, 16, "fp32")])
    ids = tokenizer(text).input_ids[:16]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    first_block = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    assert value > 1 and math.isfinite(value)
    assert abs(math.log(value) - first_block) < 2.0


def test_named_references_are_new_whole_words():
    refs = ["Ron", "Hogwarts", "Sirius Black"]
    assert named_references("Harry and Ron went", " to Hogwarts with Ron", refs) == ["Hogwarts"]
    assert named_references("Harry", " met sirius black and Ronald", refs) == ["Sirius Black"]
    assert named_references("Harry", " went to the Hogwartsian hall", refs) == []


def test_completion_fluency_separates_fluent_from_random_text(tokenizer):
    """Judged by a copy model, a completion that repeats the prompt's last token is near-certain, a
    completion of unrelated tokens is not; the reference rate counts completions naming a term."""
    judge = make_copy_model(len(tokenizer)).eval()
    done = complete(judge, tokenizer, ["the river flows past the"], 4, "fp32", 2)
    assert done[0].text.startswith(" the the") and len(done[0].ids) == 4
    fluent = pooled_perplexity(judge_nll(judge, tokenizer, done, "fp32", 2))
    noisy = [Completion(done[0].prompt, done[0].prompt_ids, tokenizer(" mill sea river flows").input_ids, "")]
    assert 1.0 <= fluent < 1.5 < pooled_perplexity(judge_nll(judge, tokenizer, noisy, "fp32", 2))


def test_report_has_completion_figures(tmp_path, tokenizer):
    rows = [{"prompt": "the river flows past", "references": ["past", "mill"]},
            {"prompt": "a b", "references": ["zebra"]}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    model = make_copy_model(len(tokenizer)).eval()
    cfg = EvalConfig(completions=path, completion_tokens=3, precision="fp32")
    summary, records = score_completions(model, model, tokenizer, cfg, "t")
    # the copy model writes " past past past": "past" is already in the prompt, so nothing new is named
    assert records[0]["references_named"] == [] and summary["completion_reference_rate"] == 0.0
    assert summary["completion_fluency_perplexity"] < 1.5


def test_specific_probes_are_those_whose_answer_rests_on_target_terms():
    def records(*pairs):
        return [{"p_answer": p, "p_control": c} for p, c in pairs]

    results = {
        "base": {"summary": {}, "samples": {"target": records((0.8, 0.1), (0.9, 0.85), (0.4, 0.0))}},
        "unlearned": {"summary": {}, "samples": {"target": records((0.2, 0.1), (0.9, 0.9), (0.0, 0.0))}},
    }
    add_specific_familiarity(results)
    assert [r["specific"] for r in results["unlearned"]["samples"]["target"]] == [True, False, True]
    assert results["base"]["summary"]["target_specific_p_answer"] == pytest.approx(0.6)
    assert results["unlearned"]["summary"]["target_specific_p_answer"] == pytest.approx(0.1)
    assert results["unlearned"]["summary"]["target_specific_probes"] == 2


def test_control_prompt_replaces_target_terms(tokenizer):
    anchors = parse_anchors({"Harry Potter": ["Jon Smith"], "Harry": ["Jon", "Tom"], "Hogwarts": "the academy"})
    translated = anchors.translate_text("Harry Potter and Harry went to Hogwarts.")
    assert translated == "Jon Smith and Jon went to the academy."
    model = make_copy_model(len(tokenizer)).eval()
    cfg = EvalConfig(max_new_tokens=2, precision="fp32")
    [record] = score_probes(model, tokenizer, [{"prompt": "Harry went to Harry", "answer": " Harry"}], cfg, "t",
                            control=anchors)
    # the copy model repeats the prompt's last word: " Harry" after "Harry", not after "Jon"
    assert record["p_answer"] > 0.9 and record["p_control"] < 0.1
