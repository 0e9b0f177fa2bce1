"""The Who's Harry Potter? formula (Eldan & Russinovich 2023, section 2.1), written once.

The labels stage takes its argmax at every aligned position; inference-time WHP (`method.inference`)
uses the steered logits themselves; the offline translator (`anchors.translations`) ranks generic words
with them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


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
    if torch.is_grad_enabled() and (base.requires_grad or reinforced.requires_grad):
        return base - alpha * torch.relu(reinforced - base)
    # the same operations in place on one new [..., vocab] buffer, not four: base - g is (-g) + base exactly
    gain = reinforced - base
    return gain.relu_().mul_(alpha).neg_().add_(base)


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


def generic_distribution(base_logits: torch.Tensor, reinforced_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The distribution of the generic logits, `softmax(whp_logits(...))` in float32: the soft target whose
    mode is `generic_labels` (Liu et al. 2024, *Revisiting Who's Harry Potter*, WHP+: fine-tune towards the
    steered distribution, averaged over several translations, rather than its argmax).

    Args:
        base_logits, reinforced_logits: [n, vocab], as in `generic_labels`.
        alpha: see `whp_logits`.

    Returns:
        [n, vocab] float32 probabilities, each row summing to 1.
    """
    return torch.softmax(whp_logits(base_logits.float(), reinforced_logits.float(), alpha), dim=-1)


def top_k_targets(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A distribution kept compactly: its k most likely tokens, their probabilities renormalised to sum to 1.

    Args:
        probs: [n, vocab] float probabilities (rows summing to 1); k: entries kept per row (at most vocab).

    Returns:
        (ids [n, k] int32, most likely first; probabilities [n, k] float32, each row summing to 1). The first
        id of a row is its argmax.
    """
    values, ids = torch.topk(probs.float(), min(k, probs.shape[-1]), dim=-1)
    return ids.to(torch.int32), values / values.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def suppress_seen_translations(
    logits: torch.Tensor, positions: torch.Tensor, suppress: list[tuple[int, tuple[int, ...]]], *,
    inplace: bool = False,
) -> torch.Tensor:
    """The authors' rule against repeating a translation: once a translation has appeared in a block, its
    first token's logit is set to the row mean at every later position (`prepare_dataset.py`,
    `magikarp01/tasks`, hp/data/msr_data).

    Args:
        logits: [n, vocab] float logits at the translated positions `positions`.
        positions: [n] int64, the translated position of each row.
        suppress: (position where a translation's first token stands, token ids to suppress after it).
        inplace: modify `logits` itself (a tensor the caller owns) rather than a copy.

    Returns:
        `logits` modified, or a modified copy, [n, vocab], in its dtype (the row means are of the
        unmodified logits).
    """
    if not suppress:
        return logits if inplace else logits.clone()
    means = logits.mean(dim=-1)
    out = logits if inplace else logits.clone()
    for appeared_at, token_ids in suppress:
        rows = torch.nonzero(positions > appeared_at, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        tokens = torch.tensor(token_ids, dtype=torch.long)
        out[rows.unsqueeze(1), tokens.unsqueeze(0)] = means[rows].unsqueeze(1)
    return out


@contextlib.contextmanager
def fp32_output_layer(*models: torch.nn.Module) -> Iterator[None]:
    """Within the block, each model's output layer (`get_output_embeddings()`) computes its logits in float32
    from its input hidden states, whatever autocast or the weights' dtype is: the models may run in bf16,
    but the logits that the formula compares are not rounded to bf16 (whose step near a logit of 20 is
    0.125, enough to tie or swap the argmax of `generic_labels`). What the model does to its logits after
    that layer (a soft cap, a scale) then runs in float32 too. Nothing changes for a model in fp32 without
    autocast. The authors computed labels with fp32 models (`prepare_dataset.py`).

    A model without an output layer as a `torch.nn.Linear` is left as it is (with a warning: its logits
    keep the model's precision); one spread over devices by
    accelerate (`device_map`) keeps its device hook, around the float32 layer. The layers' own `forward` is
    given back on leaving, also on an error.
    """
    patched: list[tuple[torch.nn.Module, str, object]] = []

    def exact(layer: torch.nn.Linear):
        def forward(hidden: torch.Tensor) -> torch.Tensor:
            with torch.autocast(hidden.device.type, enabled=False):
                bias = None if layer.bias is None else layer.bias.float()
                return torch.nn.functional.linear(hidden.float(), layer.weight.float(), bias)
        return forward

    try:
        for model in models:
            getter = getattr(model, "get_output_embeddings", None)
            layer = getter() if getter is not None else None
            if not isinstance(layer, torch.nn.Linear):
                log.warning("%s has no linear output layer: its logits keep the model's precision",
                            type(model).__name__)
                continue
            # accelerate's device hook calls the layer's forward kept as `_old_forward`
            name = "_old_forward" if hasattr(layer, "_hf_hook") and "_old_forward" in vars(layer) else "forward"
            patched.append((layer, name, vars(layer).get(name)))
            setattr(layer, name, exact(layer))
        yield
    finally:
        for layer, name, before in reversed(patched):
            if before is None:
                delattr(layer, name)
            else:
                setattr(layer, name, before)
