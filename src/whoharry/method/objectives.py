"""The training objectives the one loop (`core.train`) minimises, as pure functions of logits and labels.

- cross-entropy against the labels: reinforcement (the target's own tokens) and WHP unlearning (the
  generic labels), Eldan & Russinovich 2023, sections 2.1 and 2.3;
- gradient ascent: its negative, the usual baseline (e.g. MUSE, Shi et al. 2024, section 4);
- cross-entropy against a distribution: WHP unlearning towards soft generic targets, the mean of the
  generic distributions over several translations kept as their top-k (Liu et al. 2024, *Revisiting Who's
  Harry Potter*, WHP+);
- NPO: negative preference optimisation against a frozen reference (Zhang et al. 2024, "Negative
  preference optimization: from catastrophic collapse to effective unlearning", eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from whoharry.errors import WhoharryError

IGNORE = -100  # the label of a position that is not trained on (the transformers convention)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Cross-entropy of position t's logits against labels[t + 1], skipping `IGNORE` (-100).

    Args:
        logits: [blocks, length, vocab], any float dtype (computed in float32).
        labels: [blocks, length] token ids, int32 or int64.
        reduction: the mean over labelled tokens, or their sum.

    Returns:
        A scalar float32 tensor, in nats (the mean is nan when no position is labelled).
    """
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:].long()
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction
    )


def soft_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor, target_probs: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of position t's distribution against the soft target of position t + 1,
    `-sum_j p_j log q(id_j)`, over the positions whose label is not `IGNORE` (KL to the target, plus its
    constant entropy).

    Args:
        logits: [blocks, length, vocab], any float dtype (computed in float32).
        target_ids: [blocks, length, k] int token ids; target_probs: [blocks, length, k] their probabilities
            (rows summing to 1 where labelled), in the labels' convention (the target of position t is
            predicted from t - 1).
        labels: [blocks, length], `IGNORE` where there is no target.

    Returns:
        A scalar float32 tensor, in nats.
    """
    picked = token_log_probs(logits[:, :-1], target_ids[:, 1:])
    per_position = -(picked * target_probs[:, 1:].float()).sum(dim=-1)
    # where, not a product: an unlabelled position's -inf log-probability must not make a NaN
    return torch.where(labels[:, 1:] != IGNORE, per_position, 0.0).sum()


ObjectiveKind = Literal["ce", "ga", "npo", "soft"]
OBJECTIVES: tuple[ObjectiveKind, ...] = ("ce", "ga", "npo", "soft")


@dataclass
class Objective:
    """What one optimizer step minimises, as a mean over the step's blocks or tokens.

    - `ce`: cross-entropy against the labels, averaged over every labelled token of the step;
    - `ga`: gradient ascent, the negative of that;
    - `soft`: cross-entropy against soft targets (`soft_cross_entropy`), `target_ids` and `target_probs`
      [blocks, length, k] indexed by block like the labels, averaged over every labelled token of the step;
    - `npo`: negative preference optimisation (Zhang et al. 2024),
      `2/beta * mean over blocks of log(1 + (p_model(block) / p_reference(block)) ** beta)`, with the
      reference's summed log-probability of each block's labels given in `reference`.

    With `retain_ids`, each micro-batch also takes as many retain blocks (their own order, fixed by seed
    and step) and adds `retain_weight` times their cross-entropy, averaged over the step's retain tokens.

    Raises:
        WhoharryError: an unknown `kind`, `npo` without `reference`, or `soft` without its targets.
    """

    kind: ObjectiveKind = "ce"
    beta: float = 0.1
    reference: torch.Tensor | None = None  # [blocks] summed log-probabilities (npo)
    retain_ids: torch.Tensor | None = None  # [blocks, length]
    retain_weight: float = 1.0
    target_ids: torch.Tensor | None = None  # [blocks, length, k] (soft)
    target_probs: torch.Tensor | None = None  # [blocks, length, k] (soft)

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise WhoharryError(f"unknown training objective {self.kind!r}; one of {', '.join(OBJECTIVES)}")
        if self.kind == "npo" and self.reference is None:
            raise WhoharryError("the npo objective needs the reference model's log-probabilities")
        if self.kind == "soft" and (self.target_ids is None or self.target_probs is None):
            raise WhoharryError("the soft objective needs the target ids and probabilities")

    def units(self, labelled: torch.Tensor, blocks: list[int]) -> int:
        """What the step's forget loss is averaged over: the labelled tokens of `blocks` (`labelled` is
        [blocks] int, each block's count), or for NPO the number of blocks."""
        return len(blocks) if self.kind == "npo" else int(labelled[blocks].sum())

    def forget_loss(self, logits: torch.Tensor, targets: torch.Tensor, blocks: list[int]) -> torch.Tensor:
        """The summed loss of these blocks (the loop divides by the step's units).

        Args:
            logits: [batch, length, vocab]; targets: [batch, length] labels; blocks: the batch's block
                indices (NPO reads their `reference` entries).

        Returns:
            A scalar float32 tensor, in nats.
        """
        if self.kind == "ce":
            return causal_lm_loss(logits, targets, reduction="sum")
        if self.kind == "ga":
            return -causal_lm_loss(logits, targets, reduction="sum")
        if self.kind == "soft":
            return soft_cross_entropy(logits, self.target_ids[blocks].to(logits.device),
                                      self.target_probs[blocks].to(logits.device), targets)
        log_ratio = block_log_probs(logits, targets) - self.reference[blocks].to(logits.device)
        return (-2.0 / self.beta * torch.nn.functional.logsigmoid(-self.beta * log_ratio)).sum()


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, *, ranks: bool = False
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(tokens[..., i]) under the distribution of logits[..., i, :]: the one place token
    log-probabilities are read off logits.

    Args:
        logits: [..., n, vocab], any float dtype (computed in float32).
        tokens: [..., n] token ids (non-negative), or [..., n, k]: k candidate tokens per position.
        ranks: also return each token's rank among all tokens at its position (1: the most likely); one
            token per position only.

    Returns:
        [..., n] (or [..., n, k]) float32 log-probabilities (nats); with `ranks`, also [..., n] int64 ranks.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if tokens.dim() == logits.dim():  # k candidates per position
        return log_probs.gather(-1, tokens.long())
    picked = log_probs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    if not ranks:
        return picked
    return picked, (log_probs > picked.unsqueeze(-1)).sum(dim=-1) + 1


def next_token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) of a causal LM for t >= 1: [blocks, length, vocab], [blocks, length]
    -> [blocks, length - 1] float32 (entries where ids is `IGNORE` are meaningless: mask them)."""
    return token_log_probs(logits[:, :-1], ids[:, 1:].clamp(min=0))


def block_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each block's labels (positions 1…, `IGNORE` skipped).

    Args:
        logits: [blocks, length, vocab]; labels: [blocks, length].

    Returns:
        [blocks] float32, in nats (NPO's sequence log-likelihood, Zhang et al. 2024).
    """
    keep = labels[:, 1:] != IGNORE
    return (next_token_log_probs(logits, labels) * keep).sum(dim=1)


