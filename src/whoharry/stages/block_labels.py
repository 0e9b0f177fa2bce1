"""One block's labels from the two models' logits (the labels stage's arithmetic, `stages.labels`): the
paper's argmax at each aligned position (Eldan & Russinovich 2023, section 2.3), or the generic
distributions averaged over several translations (Liu et al. 2024, *Revisiting Who's Harry Potter*, WHP+),
and the positions lost to re-tokenization.

Labels follow the transformers convention: the prediction made at position t is the label of t + 1.
"""

from __future__ import annotations

import torch

from whoharry.anchors.translate import NO_LABEL, BlockTranslation
from whoharry.method.objectives import IGNORE
from whoharry.method.whp import generic_distribution, generic_labels, suppress_seen_translations, top_k_targets

__all__ = ["Average", "block_labels", "count_unaligned"]


def block_labels(translation: BlockTranslation, base_logits: torch.Tensor, reinforced_logits: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """The paper's labels of one block, [length] int32, shifted into the transformers convention (-100 where
    none): at each aligned position the argmax of the generic logits (`generic_labels`)."""
    labels = torch.full((len(translation.mapping),), IGNORE, dtype=torch.int32)
    valid = _aligned(translation)
    if valid.numel():
        predicted = generic_labels(_generic_logits(translation, base_logits, valid), _rows(reinforced_logits, valid),
                                   alpha)
        _place(labels, valid, predicted.to(torch.int32))
    return labels


class Average:
    """One block's generic distributions summed over its translations, position by position (Liu et al.
    2024, WHP+): [length, vocab] float32 on the CPU, and how many translations aligned each position."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, translation: BlockTranslation, base_logits: torch.Tensor, reinforced_logits: torch.Tensor,
            alpha: float) -> None:
        """Add one translation's `generic_distribution` at the original positions it aligns."""
        length = len(translation.mapping)
        if self.total is None:
            self.total, self.count = torch.zeros(length, reinforced_logits.shape[-1]), torch.zeros(length)
        valid = _aligned(translation)
        if valid.numel():
            self.total.index_add_(0, valid, generic_distribution(_generic_logits(translation, base_logits, valid),
                                                                 _rows(reinforced_logits, valid), alpha))
            self.count[valid] += 1

    def finish(self, top_k: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Labels, [length] int32 (the mode of the mean distribution, -100 where no translation aligned the
        prediction), and with `top_k` the soft targets, [length, top_k] int32 ids and float32 probabilities
        summing to 1 (zeros where there is no label), both in the transformers convention."""
        length = self.total.shape[0]
        labels = torch.full((length,), IGNORE, dtype=torch.int32)
        soft_ids = torch.zeros(length, top_k, dtype=torch.int32) if top_k else None
        soft_probs = torch.zeros(length, top_k, dtype=torch.float32) if top_k else None
        aligned = torch.nonzero(self.count > 0, as_tuple=True)[0]
        if aligned.numel():
            mean = self.total[aligned] / self.count[aligned].unsqueeze(-1)
            if top_k:
                ids, probs = top_k_targets(mean, top_k)
                _place(labels, aligned, ids[:, 0])
                _place(soft_ids[:, : ids.shape[1]], aligned, ids)  # fewer columns than top_k: a vocabulary that small
                _place(soft_probs[:, : ids.shape[1]], aligned, probs)
            else:
                _place(labels, aligned, torch.argmax(mean, dim=-1).to(torch.int32))
        return labels, soft_ids, soft_probs


def _aligned(translation: BlockTranslation) -> torch.Tensor:
    """The original positions whose prediction has a translated counterpart, [n] int64."""
    return torch.nonzero(torch.tensor(translation.mapping) != NO_LABEL, as_tuple=True)[0]


def _rows(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The rows `positions` of a block's logits, [n, vocab] float32 on the CPU."""
    return logits[positions.to(logits.device)].float().cpu()


def _generic_logits(version: BlockTranslation, base_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The base model's fp32 logits at the translated positions aligned with the original positions `valid`,
    after the suppression of translations already seen."""
    positions = torch.tensor(version.mapping)[valid]
    # the rows are a new tensor (advanced indexing copies): suppressed in place
    return suppress_seen_translations(_rows(base_logits, positions), positions, version.suppress, inplace=True)


def _place(out: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> None:
    """Put the predictions made at positions `valid` in `out` as the labels of the positions after them."""
    keep = valid < out.shape[0] - 1
    out[valid[keep] + 1] = values[keep].to(out.dtype)


def count_unaligned(translation: BlockTranslation) -> int:
    """Positions outside anchors that found no translated counterpart (tokenization changed there)."""
    masked = set()
    for occ in translation.occurrences:
        masked.update(range(occ.first, occ.last))
        if occ.repeat and occ.first > 0:
            masked.add(occ.first - 1)
    return sum(1 for t, u in enumerate(translation.mapping) if u == NO_LABEL and t not in masked)
