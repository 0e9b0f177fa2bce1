"""Membership inference: can a model's token probabilities tell the target text (trained on) from
held-out text of the same domain (never trained on)?

Each passage gets four scores, all oriented so that higher means "looks trained on":
- `loss`: minus the mean next-token loss;
- `zlib`: minus the summed loss divided by the passage's zlib-compressed length (Carlini et al. 2021);
- `mink`: the mean of the lowest 20% token log-probabilities (Min-K%, Shi et al. 2024);
- `minkpp`: the same over token log-probabilities standardised by the mean and spread of the model's
  log-probabilities at that position (Min-K%++, Zhang et al. 2024).
The AUC of a score is the probability that a random target passage outscores a random held-out one:
0.5 when the model cannot tell them apart, 1.0 when it separates them perfectly.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from whoharry import models
from whoharry.text import make_blocks

SCORES = ("loss", "zlib", "mink", "minkpp")
K_FRACTION = 0.2


@torch.no_grad()
def passage_scores(model, tokenizer, text: str, passage_tokens: int, precision: str,
                   max_passages: int | None = None) -> list[dict[str, float]]:
    """The four scores of each passage of `passage_tokens` tokens (evenly spread when capped)."""
    device = next(model.parameters()).device
    model.eval()
    blocks = make_blocks(text, tokenizer, passage_tokens)
    chosen = list(range(len(blocks.ids)))
    if max_passages is not None and len(chosen) > max_passages:
        step = len(chosen) / max_passages
        chosen = [int(i * step) for i in range(max_passages)]
    records = []
    for b in chosen:
        ids = torch.tensor([blocks.ids[b]], device=device)
        with models.autocast(precision, device):
            logits = model(input_ids=ids).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        token_lp = logprobs.gather(1, ids[0, 1:, None])[:, 0]
        probs = logprobs.exp()
        mean = (probs * logprobs).sum(-1)
        spread = ((probs * logprobs.square()).sum(-1) - mean.square()).clamp_min(1e-12).sqrt()
        spans = blocks.offsets[b]
        passage = blocks.text[spans[0][0] : spans[-1][1]]
        records.append(score_tokens(token_lp, (token_lp - mean) / spread, passage))
    return records


def score_tokens(token_logprobs: torch.Tensor, standardised: torch.Tensor, passage: str) -> dict[str, float]:
    """The four membership scores from a passage's token log-probabilities."""
    k = max(1, int(K_FRACTION * len(token_logprobs)))
    compressed = len(zlib.compress(passage.encode("utf-8")))
    return {
        "loss": token_logprobs.mean().item(),
        "zlib": token_logprobs.sum().item() / compressed,
        "mink": token_logprobs.topk(k, largest=False).values.mean().item(),
        "minkpp": standardised.topk(k, largest=False).values.mean().item(),
    }


def auc(members, nonmembers) -> float:
    """P(a member's score > a non-member's), ties counting one half (the Mann-Whitney statistic)."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if not m.size or not n.size:
        return float("nan")
    return float(((m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])).mean())
