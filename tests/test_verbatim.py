"""Verbatim memorisation: ROUGE-L on known cases, and a model that reproduces the text scores 1."""

from __future__ import annotations

import pytest

from whoharry.evaluation.verbatim import rouge_l, verbatim_records

from .conftest import make_copy_model


def test_rouge_l_known_cases():
    assert rouge_l("the cat sat on the mat", "The cat sat on the mat.") == 1.0
    assert rouge_l("a b", "c d") == 0.0
    # LCS of "a c d" and "a b c d" is 3: precision 1, recall 3/4
    assert rouge_l("a c d", "a b c d") == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l("", "a") == 0.0


def test_a_model_that_repeats_the_text_reproduces_it(tokenizer):
    """On a text of one repeated word, the copy model's continuation is the true continuation;
    on varied text it is not."""
    model = make_copy_model(len(tokenizer)).eval()
    same = verbatim_records(model, tokenizer, "the " * 120, 8, 4, 3, "fp32", 2)
    assert len(same) == 3 and all(r["rouge_l"] == 1.0 for r in same)
    varied = verbatim_records(model, tokenizer, "the river flows past the old mill and into the sea. " * 10,
                              8, 4, 3, "fp32", 2)
    assert all(r["rouge_l"] < 1.0 for r in varied)
