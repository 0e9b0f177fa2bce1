"""Probe scoring and perplexity on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from whoharry.config import EvalConfig
from whoharry.errors import WhoharryError
from whoharry.evaluate import perplexity, read_probes, score_probes

from .conftest import make_copy_model


def test_probe_file_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(WhoharryError, match=r"p.jsonl:1: expected"):
        read_probes(path)
    path.write_text("not json\n")
    with pytest.raises(WhoharryError, match=r"p.jsonl:1: not valid JSON"):
        read_probes(path)
    path.write_text("\n")
    with pytest.raises(WhoharryError, match="holds no probes"):
        read_probes(path)


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
    value = perplexity(model, tokenizer, text, 16, "fp32")
    ids = tokenizer(text).input_ids[:16]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    first_block = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    assert value > 1 and math.isfinite(value)
    assert abs(math.log(value) - first_block) < 2.0
