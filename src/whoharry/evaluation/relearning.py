"""The relearning test (Lynch et al. 2024): fine-tune a model for a few steps on a small slice of the
target text and measure how much familiarity comes back.

Knowledge that was removed has to be learnt again from the slice; knowledge that was only hidden
returns within a few steps. The same steps run on the base model give the mark to compare with.

The fine-tune always runs on fp32 weights, whatever `model.inference_dtype` the evaluation loaded the
model in: on bf16 weights an update smaller than the weight's rounding step is lost, so most weights
would never move and the familiarity that comes back would be under-measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from whoharry.config import EvalConfig, TrainConfig
from whoharry.core import train
from whoharry.core.text import evenly_spread, make_blocks
from whoharry.evaluation import probes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from whoharry.method.inference import CausalLM

BATCH_SIZE = 4


def relearn_blocks(text: str, tokenizer: PreTrainedTokenizerBase, block_length: int, count: int) -> torch.Tensor:
    """`count` evenly spread blocks of the target text: the slice the model relearns from."""
    blocks = make_blocks(text, tokenizer, block_length)
    return torch.tensor([blocks.ids[i] for i in evenly_spread(len(blocks.ids), count)], dtype=torch.long)


def relearn_curve(model: CausalLM, tokenizer: PreTrainedTokenizerBase, text: str, probe_rows: list[dict[str, str]],
                  cfg: EvalConfig, *, seed: int,
                  work_dir: Path, desc: str, progress: bool = False) -> list[dict]:
    """Fine-tune `model` in place for `cfg.relearning.steps` steps on the slice, scoring the probes before
    the first step, every `cfg.relearning.eval_every` steps and after the last: one record per measurement
    with the step and each probe's P(answer).

    A model whose weights are not all fp32 (an inference dtype of bf16 or fp16) is first cast to fp32 in
    place, so the fine-tune updates fp32 master weights; it is left in fp32, fine-tuned.
    """
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    relearn = cfg.relearning
    ids = relearn_blocks(text, tokenizer, cfg.block_length, relearn.blocks)
    train_cfg = TrainConfig(
        epochs=relearn.steps * BATCH_SIZE / ids.shape[0],
        learning_rate=relearn.learning_rate,
        batch_size=BATCH_SIZE,
        warmup_ratio=0.0,
        max_steps=relearn.steps,
        precision=cfg.precision,
    )

    def measure(step: int) -> dict:
        records = probes.score_probes(model, tokenizer, probe_rows, cfg, f"{desc} step {step}", greedy=False,
                                      progress=progress)
        return {"step": step, "p_answer": [r["p_answer"] for r in records]}

    curve = [measure(0)]

    def on_step(step: int) -> None:
        if step % relearn.eval_every == 0 or step == relearn.steps:
            curve.append(measure(step))

    train.train(model, ids, ids, train_cfg, seed=seed, stage_dir=work_dir, run_key="relearn", desc=desc,
                progress=progress, on_step=on_step)
    return curve
