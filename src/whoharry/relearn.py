"""The relearning test (Lynch et al. 2024): fine-tune a model for a few steps on a small slice of the
target text and measure how much familiarity comes back.

Knowledge that was removed has to be learnt again from the slice; knowledge that was only hidden
returns within a few steps. The same steps run on the base model give the mark to compare with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from whoharry import probes, train
from whoharry.config import EvalConfig, TrainConfig
from whoharry.text import make_blocks

BATCH_SIZE = 4


def relearn_blocks(text: str, tokenizer, block_length: int, count: int) -> torch.Tensor:
    """`count` evenly spread blocks of the target text: the slice the model relearns from."""
    blocks = make_blocks(text, tokenizer, block_length)
    total = len(blocks.ids)
    chosen = [int(i * total / count) for i in range(min(count, total))]
    return torch.tensor([blocks.ids[i] for i in chosen], dtype=torch.long)


def relearn_curve(model, tokenizer, text: str, probe_rows: list[dict[str, str]], cfg: EvalConfig, *, seed: int,
                  work_dir: Path, desc: str, progress: bool = False) -> list[dict]:
    """Fine-tune `model` in place for `cfg.relearn_steps` steps on the slice, scoring the probes before the
    first step, every `cfg.relearn_eval_every` steps and after the last: one record per measurement with
    the step and each probe's P(answer)."""
    ids = relearn_blocks(text, tokenizer, cfg.block_length, cfg.relearn_blocks)
    train_cfg = TrainConfig(
        epochs=cfg.relearn_steps * BATCH_SIZE / ids.shape[0],
        learning_rate=cfg.relearn_learning_rate,
        batch_size=BATCH_SIZE,
        warmup_ratio=0.0,
        max_steps=cfg.relearn_steps,
        precision=cfg.precision,
    )

    def measure(step: int) -> dict:
        records = probes.score_probes(model, tokenizer, probe_rows, cfg, f"{desc} step {step}", greedy=False,
                                      progress=progress)
        return {"step": step, "p_answer": [r["p_answer"] for r in records]}

    curve = [measure(0)]

    def on_step(step: int) -> None:
        if step % cfg.relearn_eval_every == 0 or step == cfg.relearn_steps:
            curve.append(measure(step))

    train.train(model, ids, ids, train_cfg, seed=seed, stage_dir=work_dir, run_key="relearn", desc=desc,
                progress=progress, on_step=on_step)
    return curve
