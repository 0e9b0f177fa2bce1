"""Membership inference scores and AUCs on cases with known answers."""

from __future__ import annotations

import zlib

import pytest
import torch

from whoharry.evaluation.intervals import auc_interval
from whoharry.evaluation.membership import SCORES, auc, passage_scores, score_tokens

from .conftest import make_copy_model


def test_auc_of_separated_tied_and_reversed_scores():
    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auc([1.0], [1.0]) == 0.5
    assert auc([2.0, 0.0], [1.0]) == 0.5
    assert auc([], [1.0]) != auc([], [1.0])  # nan
    assert auc_interval([3.0, 4.0, 5.0], [1.0, 2.0]) == (1.0, 1.0)


def test_scores_from_token_logprobs():
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0])
    scores = score_tokens(lp, lp * 2, "some passage")
    assert scores["loss"] == pytest.approx(-5.5)
    assert scores["mink"] == pytest.approx(-9.5)  # the lowest 20%: -9 and -10
    assert scores["minkpp"] == pytest.approx(-19.0)
    assert scores["zlib"] == pytest.approx(-55.0 / len(zlib.compress(b"some passage")))


def test_a_copy_model_tells_repetitive_text_from_varied_text(tokenizer):
    """A copy model predicts "the last token again": a passage of one repeated word is near-certain to
    it, varied text is not, so every score separates them perfectly."""
    model = make_copy_model(len(tokenizer)).eval()
    repeated = passage_scores(model, tokenizer, "the " * 200, 16, "fp32", max_passages=5)
    varied = passage_scores(model, tokenizer, "the river flows past the old mill and into the sea. " * 12, 16, "fp32")
    assert len(repeated) == 5 and set(repeated[0]) == set(SCORES)
    for score in SCORES:
        assert auc([r[score] for r in repeated], [r[score] for r in varied]) == 1.0, score
