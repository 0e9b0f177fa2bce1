"""How far a model's next-token distributions lie from a reference model's: the mean KL divergence.

For the retrain-gap experiment the reference is the gold model (trained without the target), and the
figure is KL(p_gold || p_model) averaged over every predicted token of a set of passages: 0 when the
model predicts exactly as the gold model does.
"""

from __future__ import annotations

import torch

from whoharry import models
from whoharry.text import make_blocks


def passages(text: str, tokenizer, passage_tokens: int, count: int) -> list[list[int]]:
    """`count` passages of `passage_tokens` tokens, evenly spread over the text (all when fewer)."""
    blocks = make_blocks(text, tokenizer, passage_tokens).ids
    if len(blocks) <= count:
        return blocks
    step = len(blocks) / count
    return [blocks[int(i * step)] for i in range(count)]


@torch.no_grad()
def mean_kl(model, reference, ids: list[list[int]], precision: str, batch_size: int = 8) -> float:
    """KL(p_reference || p_model) per predicted token, averaged over all tokens of the passages."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(ids), batch_size):
        batch = torch.tensor(ids[start : start + batch_size], device=device)
        with models.autocast(precision, device):
            theirs = reference(input_ids=batch).logits[:, :-1].float()
            ours = model(input_ids=batch).logits[:, :-1].float()
        log_p, log_q = torch.log_softmax(theirs, dim=-1), torch.log_softmax(ours, dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    return total / tokens if tokens else float("nan")
