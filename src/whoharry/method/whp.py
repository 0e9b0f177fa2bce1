"""The Who's Harry Potter? formula (Eldan & Russinovich 2023, section 2.1), written once.

The labels stage takes its argmax at every aligned position; inference-time WHP (`method.inference`)
uses the steered logits themselves; the offline translator (`anchors.translations`) ranks generic words
with them.
"""

from __future__ import annotations

import torch


def whp_logits(base: torch.Tensor, reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """`v_base - alpha * relu(v_reinforced - v_base)` on raw logits (Eldan & Russinovich 2023, section 2.1:
    v_generic).

    Args:
        base: the base model's logits, [..., vocab], any float dtype.
        reinforced: the reinforced model's logits at the same positions, same shape and dtype.
        alpha: how hard to push away from what reinforcement raised (the paper used 5).

    Returns:
        The steered logits, [..., vocab], in the inputs' dtype. Where reinforcement lowered a logit the
        base value stands; where it raised one, the logit drops by alpha times the rise.
    """
    return base - alpha * torch.relu(reinforced - base)


def generic_labels(base_logits: torch.Tensor, reinforced_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The generic label of each row: `argmax(whp_logits(...))`, computed in float32 (Eldan & Russinovich
    2023, section 2.3: the label is the token of the largest generic logit).

    Args:
        base_logits: [n, vocab], the base model reading the translated text.
        reinforced_logits: [n, vocab], the reinforced model reading the original text, aligned row by row.
        alpha: see `whp_logits`.

    Returns:
        [n] int64 token ids.
    """
    return torch.argmax(whp_logits(base_logits.float(), reinforced_logits.float(), alpha), dim=-1)


def suppress_seen_translations(
    logits: torch.Tensor, positions: torch.Tensor, suppress: list[tuple[int, tuple[int, ...]]]
) -> torch.Tensor:
    """The authors' rule against repeating a translation: once a translation has appeared in a block, its
    first token's logit is set to the row mean at every later position (`prepare_dataset.py`,
    `magikarp01/tasks`, hp/data/msr_data).

    Args:
        logits: [n, vocab] float logits at the translated positions `positions`.
        positions: [n] int64, the translated position of each row.
        suppress: (position where a translation's first token stands, token ids to suppress after it).

    Returns:
        A modified copy of `logits`, [n, vocab], in its dtype (the row means are of the unmodified logits).
    """
    out = logits.clone()
    means = logits.mean(dim=-1)
    for appeared_at, token_ids in suppress:
        rows = torch.nonzero(positions > appeared_at, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        tokens = torch.tensor(token_ids, dtype=torch.long)
        out[rows.unsqueeze(1), tokens.unsqueeze(0)] = means[rows].unsqueeze(1)
    return out
