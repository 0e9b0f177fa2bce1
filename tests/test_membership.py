"""Membership inference scores and AUCs on cases with known answers."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from whoharry.evaluation.intervals import auc_interval
from whoharry.evaluation.membership import SCORES, auc, log_prob_moments, passage_scores, score_tokens
from whoharry.experiments.divergence import kl_terms, mean_kl, passages

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


class MaskedVocabulary(torch.nn.Module):
    """A model whose logits are `-inf` on some vocabulary rows, as checkpoints mask unused rows."""

    def __init__(self, model: torch.nn.Module, masked: list[int]):
        super().__init__()
        self.model, self.masked = model, masked

    def forward(self, input_ids: torch.Tensor):
        out = self.model(input_ids=input_ids)
        out.logits[..., self.masked] = -math.inf
        return out


def unused_tokens(tokenizer, *texts: str, count: int = 20) -> list[int]:
    used = {token for text in texts for token in tokenizer(text).input_ids}
    return [token for token in range(len(tokenizer)) if token not in used][:count]


def test_minus_inf_logits_add_nothing_to_min_k_plus_plus(tokenizer):
    """Masked rows have probability 0: they add 0 to the moments (not 0 · -inf = nan), so every score
    stays a number and the AUC is what it is without the mask."""
    repeated_text, varied_text = "the " * 200, "the river flows past the old mill and into the sea. " * 12
    model = MaskedVocabulary(make_copy_model(len(tokenizer)), unused_tokens(tokenizer, repeated_text, varied_text))
    repeated = passage_scores(model.eval(), tokenizer, repeated_text, 16, "fp32", max_passages=5)
    varied = passage_scores(model, tokenizer, varied_text, 16, "fp32")
    for score in SCORES:
        values = [r[score] for r in repeated + varied]
        assert all(math.isfinite(v) for v in values), score
        assert auc([r[score] for r in repeated], [r[score] for r in varied]) == 1.0, score


def test_moments_of_a_distribution_with_impossible_tokens():
    logits = torch.tensor([[0.0, 0.0, -math.inf, -math.inf], [0.0, math.log(3.0), 0.0, -math.inf]])
    mean, spread = log_prob_moments(logits)
    assert mean[0].item() == pytest.approx(math.log(0.5)) and spread[0].item() == pytest.approx(1e-6)
    p = torch.tensor([0.2, 0.6, 0.2])
    assert mean[1].item() == pytest.approx((p * p.log()).sum().item())
    assert spread[1].item() == pytest.approx(((p * p.log().square()).sum() - (p * p.log()).sum() ** 2).sqrt().item())


def test_a_nan_stays_nan_and_an_impossible_token_is_minus_inf():
    lp = torch.tensor([-1.0, -2.0, float("nan"), -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0])
    scores = score_tokens(lp, lp, "text")
    assert all(math.isnan(v) for v in scores.values()), scores  # the lowest 20% would pass over the nan
    impossible = torch.tensor([-1.0, -math.inf, -2.0, -3.0, -4.0])
    assert all(v == -math.inf for v in score_tokens(impossible, impossible, "text").values())
    assert math.isnan(auc([0.3, float("nan")], [0.1, 0.2]))  # nan loses every comparison: it would read 0.25
    assert math.isnan(auc([0.3, 0.4], [float("nan")]))
    assert auc([-math.inf, 0.0], [-1.0]) == 0.5  # -inf is a score like any other
    assert all(math.isnan(v) for v in auc_interval([0.3, float("nan")], [0.1, 0.2]))


def test_kl_ignores_tokens_the_reference_deems_impossible():
    """KL(p || q) sums p (log p - log q): where p = 0 the term is 0 even when q = 0 too (-inf - -inf)."""
    masked = torch.tensor([[1.0, 2.0, -math.inf, 0.5]])
    assert kl_terms(masked, masked).sum().item() == 0.0
    assert kl_terms(masked, masked.clone().fill_(0.0)).sum().item() == pytest.approx(
        (masked.softmax(-1)[0, [0, 1, 3]] * (masked.log_softmax(-1)[0, [0, 1, 3]] - math.log(0.25))).sum().item())
    assert kl_terms(masked, torch.tensor([[1.0, -math.inf, 0.0, 0.5]])).sum().item() == math.inf


def test_mean_kl_of_models_masking_the_same_rows_is_zero(tokenizer):
    model = MaskedVocabulary(make_copy_model(len(tokenizer)), [1, 5, 7]).eval()
    ids = passages("the river flows past the old mill and into the sea. " * 12, tokenizer, 16, 3)
    assert mean_kl(model, model, ids, "fp32") == 0.0
