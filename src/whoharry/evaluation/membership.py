"""Membership inference: can a model's token probabilities tell the target text (trained on) from
held-out text of the same domain (never trained on)?

Each passage gets four scores, all oriented so that higher means "looks trained on":
- `loss`: minus the mean next-token loss, nats per token (the loss attack, Yeom et al. 2018, "Privacy
  risk in machine learning: analyzing the connection to overfitting");
- `zlib`: minus the summed loss (nats) divided by the passage's zlib-compressed length (bytes of its
  UTF-8 text), after the zlib ratio of Carlini et al. 2021, "Extracting training data from large
  language models", section 5.2 (which divides the log-perplexity by the zlib entropy);
- `mink`: the mean of the lowest k = 20% token log-probabilities (`eval.membership.k_fraction`; MUSE's
  PrivLeak uses 40%), nats (Min-K% Prob, Shi et al. 2024, "Detecting pretraining data from large language
  models", section 3);
- `minkpp`: the same over token log-probabilities standardised by the mean and standard deviation of
  the log-probability under the model's own next-token distribution at that position, in standard
  deviations (Min-K%++, Zhang et al. 2024, "Min-K%++: Improved baseline for detecting pre-training data
  from large language models").
The AUC of a score is the probability that a random target passage outscores a random held-out one, ties
counting one half (the Mann-Whitney U statistic divided by the number of pairs; Mann & Whitney 1947,
through `scipy.stats.mannwhitneyu`): 0.5 when the model cannot tell them apart, 1.0 when it separates them
perfectly.

Models may mask vocabulary rows with `-inf` logits: a token of probability 0 adds 0 to Min-K%++'s moments
(never 0 · -inf = nan), and a predicted token of probability 0 scores -inf. A nan that still arises (a
model whose logits are nan) stays nan: in the scores, and in the AUC of any scores holding one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from whoharry.core import models
from whoharry.core.text import evenly_spread, make_blocks
from whoharry.method.objectives import token_log_probs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whoharry.method.inference import InferenceTimeWHP

SCORES = ("loss", "zlib", "mink", "minkpp")
K_FRACTION = 0.2


@torch.no_grad()
def passage_scores(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase, text: str,
                   passage_tokens: int, precision: str, max_passages: int | None = None, *, desc: str = "passages",
                   progress: bool = False, k_fraction: float = K_FRACTION) -> list[dict[str, float]]:
    """The four scores of each passage of `passage_tokens` tokens (`core.text.make_blocks`; at most
    `max_passages`, evenly spread, when given), computed in float32 one passage at a time (a progress bar
    named `desc` with `progress`), the Min-K% scores over the lowest `k_fraction` of the tokens.

    Returns:
        Per passage, `score_tokens`'s dict.

    Raises:
        WhoharryError: the text is shorter than one passage.
    """
    device = next(model.parameters()).device
    model.eval()
    blocks = make_blocks(text, tokenizer, passage_tokens)
    chosen = evenly_spread(len(blocks.ids), max_passages or len(blocks.ids))
    records = []
    for b in tqdm(chosen, desc=desc, unit="passage", leave=False, disable=not progress):
        ids = torch.tensor([blocks.ids[b]], device=device)
        with models.autocast(precision, device):
            logits = model(input_ids=ids).logits[0, :-1].float()
        token_lp = token_log_probs(logits, ids[0, 1:])
        mean, spread = log_prob_moments(logits)
        spans = blocks.offsets[b]
        passage = blocks.text[spans[0][0] : spans[-1][1]]
        records.append(score_tokens(token_lp, (token_lp - mean) / spread, passage, k_fraction))
    return records


def log_prob_moments(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation of log p under each position's own next-token distribution, for
    Min-K%++; a token of probability 0 (a `-inf` logit) contributes 0, not 0 · -inf = nan.

    Args:
        logits: [n, vocab] float32.

    Returns:
        [n] means and [n] standard deviations (at least 1e-6), nats.
    """
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    possible = probs > 0
    mean = torch.where(possible, probs * logprobs, 0.0).sum(-1)
    second = torch.where(possible, probs * logprobs.square(), 0.0).sum(-1)
    return mean, (second - mean.square()).clamp_min(1e-12).sqrt()


def _lowest_mean(values: torch.Tensor, k: int) -> float:
    """The mean of the k lowest values; nan when any value is nan (topk would pass over it)."""
    if values.isnan().any():
        return float("nan")
    return values.topk(k, largest=False).values.mean().item()


def score_tokens(token_logprobs: torch.Tensor, standardised: torch.Tensor, passage: str,
                 k_fraction: float = K_FRACTION) -> dict[str, float]:
    """The four membership scores from a passage's token log-probabilities.

    Args:
        token_logprobs: [n] float, log p of each predicted token (nats).
        standardised: [n] float, the same standardised for Min-K%++.
        passage: the passage's text, for its zlib-compressed length.
        k_fraction: the share of tokens the Min-K% scores average, 0 to 1.

    Returns:
        `{"loss", "zlib", "mink", "minkpp"}` floats (k = max(1, int(k_fraction n)) lowest tokens for the Min-K%
        scores);
        -inf where a token has probability 0, nan where a log-probability is nan.
    """
    k = max(1, int(k_fraction * len(token_logprobs)))
    compressed = len(zlib.compress(passage.encode("utf-8")))
    return {
        "loss": token_logprobs.mean().item(),
        "zlib": token_logprobs.sum().item() / compressed,
        "mink": _lowest_mean(token_logprobs, k),
        "minkpp": _lowest_mean(standardised, k),
    }


def auc(members: Sequence[float] | np.ndarray, nonmembers: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """P(a member's score > a non-member's), ties counting one half: the Mann-Whitney U statistic of the
    members (`scipy.stats.mannwhitneyu`) over the number of pairs, the ROC AUC; nan when either side is
    empty or holds a nan score (a nan loses every comparison, which would read as a number).

    Args:
        members, nonmembers: scores, [m] and [n], or [..., m] and [..., n] for one AUC per leading index
            (bootstrap resamples).

    Returns:
        A float from 0 to 1, or an array of the leading shape.
    """
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if not m.shape[-1] or not n.shape[-1]:
        return float("nan") if m.ndim == 1 else np.full(m.shape[:-1], np.nan)
    # the statistic is the same whatever the p-value's method; the asymptotic one costs nothing
    u = stats.mannwhitneyu(m, n, axis=-1, method="asymptotic").statistic / (m.shape[-1] * n.shape[-1])
    return float(u) if np.ndim(u) == 0 else u
