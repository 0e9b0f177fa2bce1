"""Held-out blocks for the training loop: a share of the stage's blocks, chosen at random (fixed by the
seed) and never trained on, whose loss is measured in the step that ends each epoch and after the last.

The validation loss is the mean cross-entropy per labelled token of the held-out blocks against the
stage's own labels (the text when reinforcing, the generic labels when unlearning with WHP), whatever
objective the loop minimises. With `select_best`, `checkpoints.BestWeights` keeps the weights where it
was lowest, and they become the stage's final model.
"""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from whoharry.config import TrainConfig
from whoharry.errors import WhoharryError
from whoharry.method.objectives import IGNORE, causal_lm_loss

SPLIT_STREAM = 99_991  # the split's random stream, apart from the epochs' sample orders (seed x 100003 + epoch)


def split(labels: torch.Tensor, share: float, seed: int, among: int | None = None) -> tuple[list[int], list[int]]:
    """The blocks trained on and the blocks held out: ceil(share x blocks) of them, chosen at random
    (fixed by `seed`), as the authors' `train_test_split(test_size=share)` counts them.

    Args:
        labels: [blocks, length] the stage's labels (`IGNORE` where there is none).
        share: the held-out share, in [0, 1); 0 holds out nothing.
        seed: the run's seed.
        among: hold out only among the first `among` blocks, a share of those (the target's, when retain
            blocks follow them); the others are always trained on. Default: all blocks.

    Returns:
        (trained, held_out): sorted block indices; with share 0 every block, and none.

    Raises:
        WhoharryError: the share leaves no block to train on, or the held-out blocks have no label.
    """
    samples = labels.shape[0]
    pool = samples if among is None else min(among, samples)
    held = math.ceil(round(share * pool, 9)) if share > 0 else 0
    if not held:
        return list(range(samples)), []
    if held >= pool:
        raise WhoharryError(f"validation_share {share} holds out {held} of {pool} blocks, leaving none to "
                            "train on; lower it or give a longer text")
    generator = torch.Generator().manual_seed(seed * 100_003 + SPLIT_STREAM)
    order = torch.randperm(pool, generator=generator).tolist()
    held_out, trained = sorted(order[:held]), sorted(order[held:]) + list(range(pool, samples))
    if not bool((labels[held_out, 1:] != IGNORE).any()):
        raise WhoharryError(f"the {held} held-out blocks have no labelled token to measure; raise validation_share")
    return trained, held_out


def measured_steps(samples: int, steps: int, cfg: TrainConfig, processes: int = 1) -> set[int]:
    """The optimizer steps after which the held-out loss is measured: each step in which an epoch over the
    `samples` blocks trained on ends (the sample order of `train.sample_order`), and the last, `steps`."""
    per_step = cfg.batch_size * cfg.grad_accum * processes
    ends = {math.ceil(epoch * samples / per_step) for epoch in range(1, math.floor(cfg.epochs) + 1)}
    return {step for step in ends if step <= steps} | {steps}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, acc: Accelerator, input_ids: torch.Tensor, labels: torch.Tensor,
                    blocks: list[int], batch_size: int) -> float:
    """The mean cross-entropy per labelled token of `blocks` against their labels, in nats (nan when none
    is labelled). The blocks are shared out among the processes, every process making as many forward
    passes (sharded weights need all of them in each); the model is left in eval mode.

    Args:
        model: the model as accelerate prepared it (its forward runs in the training's mixed precision).
        acc: the training's Accelerator.
        input_ids, labels: [blocks, length] every block of the stage; `blocks` picks the held-out ones.
        batch_size: blocks per forward pass, per process.
    """
    model.eval()
    processes, rank = acc.num_processes, acc.process_index
    width = batch_size * processes
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # summed nats, labelled tokens
    for start in range(0, len(blocks), width):
        chunk = blocks[start : start + width]
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        ids = input_ids[mine or chunk[:1]].long().to(acc.device)  # a process with no block of its own
        targets = labels[mine or chunk[:1]].long().to(acc.device)  # keeps pace with a pass it does not count
        nats = causal_lm_loss(model(input_ids=ids).logits, targets, reduction="sum")
        if mine:
            total += torch.stack([nats.double(), (targets[:, 1:] != IGNORE).sum().double()])
    if processes > 1:
        total = acc.reduce(total, reduction="sum")
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


def perplexity(loss: float) -> float:
    """exp(loss): inf where that overflows, and nan for a nan loss (never a number made from one)."""
    if math.isnan(loss):
        return math.nan
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
