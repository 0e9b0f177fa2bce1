"""Weight-space ensembling of a fine-tuned model with the model it started from: WiSE-FT (Wortsman et al.
2022, "Robust fine-tuning of zero-shot models", section 2, eq. 1),

    theta = (1 - alpha) * theta_base + alpha * theta_trained = theta_base + alpha * (theta_trained - theta_base),

where alpha in [0, 1] is the mixing coefficient: 1 keeps the trained weights, 0 is the base model. Moving
an unlearned model part of the way back keeps most of what it forgot and undoes part of its drift on
text it was not meant to change (docs/OWN_TEXT.md, "Fluency on general prompts")."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def interpolate_(base: torch.Tensor, trained: torch.Tensor, alpha: float) -> torch.Tensor:
    """`base + alpha * (trained - base)`, written into `base` (fp32) and returned.

    Args:
        base: the starting weights, fp32; overwritten.
        trained: the fine-tuned weights of the same shape, any floating dtype and device.
        alpha: the mixing coefficient, in [0, 1].

    Raises:
        ValueError: `alpha` outside [0, 1] (nan too), `base` not fp32, or the shapes differ.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"the mixing coefficient must be in [0, 1], not {alpha}")
    if base.dtype != torch.float32:
        raise ValueError(f"the weights are mixed in fp32, not {str(base.dtype).removeprefix('torch.')}")
    if base.shape != trained.shape:
        raise ValueError(f"weights of shape {tuple(base.shape)} and {tuple(trained.shape)} cannot be mixed")
    return base.lerp_(trained.to(device=base.device, dtype=torch.float32), alpha)


def interpolate(base: torch.Tensor, trained: torch.Tensor, alpha: float) -> torch.Tensor:
    """`interpolate_` into a new fp32 copy of `base`, returned in `trained`'s dtype and device.

    Raises:
        ValueError: as `interpolate_`.
    """
    start = base.to(device=trained.device, dtype=torch.float32, copy=True)
    return interpolate_(start, trained, alpha).to(trained.dtype)


def mix_state(base: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor],
              alpha: float) -> dict[str, torch.Tensor]:
    """The state dict of the mixed model, computed into `base`'s tensors (fp32, overwritten: no second copy of
    the model is made). Tensors that share storage in `base` (tied embeddings) are mixed once and stay
    shared; `trained`'s tensors that are not floating point (buffers of ids) are taken as they are.

    Args:
        base: the starting model's state dict, fp32 floating weights.
        trained: the fine-tuned model's, under the same names.
        alpha: the mixing coefficient, in [0, 1].

    Returns:
        {name: tensor} for every name of `trained`.

    Raises:
        ValueError: a floating weight of `trained` that `base` lacks or holds in another shape (another
            architecture), or as `interpolate_`.
    """
    out: dict[str, torch.Tensor] = {}
    mixed: dict[tuple, torch.Tensor] = {}  # by where base's tensor lies
    for name, tensor in trained.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        start = base.get(name)
        if start is None or start.shape != tensor.shape:
            raise ValueError(f"the trained weight {name} has no counterpart of shape {tuple(tensor.shape)} in the "
                             "base model")
        where = (start.data_ptr(), tuple(start.shape), start.stride())
        if where not in mixed:
            mixed[where] = interpolate_(start, tensor, alpha)
        out[name] = mixed[where]
    return out
