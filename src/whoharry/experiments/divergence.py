"""How far a model's next-token distributions lie from a reference model's: the mean KL divergence.

For the retrain-gap experiment the reference is the gold model (trained without the target), and the
figure is KL(p_gold || p_model) averaged over every predicted token of a set of passages: 0 when the
model predicts exactly as the gold model does.

Either model may mask vocabulary rows with `-inf` logits: a token the reference gives probability 0
adds 0 (never 0 · (-inf - log q) = nan); one the reference deems possible and the model impossible makes
the KL infinite, as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from whoharry.core import models
from whoharry.core.text import evenly_spread, make_blocks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whoharry.method.inference import InferenceTimeWHP


def passages(text: str, tokenizer: PreTrainedTokenizerBase, passage_tokens: int, count: int) -> list[list[int]]:
    """`count` passages of `passage_tokens` tokens (`core.text.make_blocks`), evenly spread over the text
    (all when fewer), as token-id lists.

    Raises:
        WhoharryError: the text is shorter than one passage.
    """
    blocks = make_blocks(text, tokenizer, passage_tokens).ids
    return [blocks[i] for i in evenly_spread(len(blocks), count)]


def kl_terms(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """p · (log p − log q) per vocabulary entry, p from the reference's logits and q from the model's
    (float32, same shape); 0 where p is 0, so `-inf` logits make no nan. Sum over the last axis for KL(p || q)."""
    log_p, log_q = torch.log_softmax(reference_logits, dim=-1), torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0)


@torch.no_grad()
def mean_kl(model: PreTrainedModel | InferenceTimeWHP, reference: PreTrainedModel, ids: list[list[int]],
            precision: str, batch_size: int = 8, *, desc: str = "KL", progress: bool = False) -> float:
    """KL(p_reference || p_model) of the next-token distributions, in nats per predicted token, averaged
    over every predicted position of the passages (all of one length); computed in float32 (a progress bar
    named `desc` with `progress`).

    Returns:
        The mean KL divergence (nats); nan without passages.
    """
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        batch = torch.tensor(ids[start : start + batch_size], device=device)
        with models.autocast(precision, device):
            theirs = reference(input_ids=batch).logits[:, :-1].float()
            ours = model(input_ids=batch).logits[:, :-1].float()
        total += float(kl_terms(theirs, ours).sum())
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    return total / tokens if tokens else float("nan")
