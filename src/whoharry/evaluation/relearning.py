"""The relearning attack: fine-tune a model for a few steps and measure how much familiarity with the target
probes comes back, from one of three sources (`eval.relearning.sources`):

- `target`: blocks of the target text itself (Lynch et al. 2024, *Eight Methods to Evaluate Robust
  Unlearning in LLMs*, section 4.5);
- `heldout`: blocks of text about the target that was never unlearned (`eval.membership.heldout`): public
  text about a subject brings back what was hidden (Hu et al. 2024, *Jogging the Memory of Unlearned LLMs
  Through Targeted Relearning Attacks*);
- `facts`: half of the target probes written out as statements, the other half scored: training on some
  facts restores others that were only hidden (Deeb & Roger 2024, *Do Unlearning Methods Remove Information
  from Language Model Weights?*).

Knowledge that was removed has to be learnt again; knowledge that was only hidden returns within a few
steps. The same steps run on the base model give the mark to compare with.

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
from whoharry.core.text import adds_bos, evenly_spread, make_blocks
from whoharry.evaluation import probes
from whoharry.evaluation.probes import seam

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from whoharry.method.inference import CausalLM

BATCH_SIZE = 4


def relearn_blocks(text: str, tokenizer: PreTrainedTokenizerBase, block_length: int, count: int) -> torch.Tensor:
    """`count` evenly spread blocks of the target text: the slice the model relearns from."""
    blocks = make_blocks(text, tokenizer, block_length)
    return torch.tensor([blocks.ids[i] for i in evenly_spread(len(blocks.ids), count)], dtype=torch.long)


def sources(cfg: EvalConfig, member_text: str | None) -> list[str]:
    """The sources of `cfg.relearning.sources` that have their text: the target's (`member_text`), the held-out
    text (`cfg.membership.heldout`), at least two target probes (one half to train on, one to score)."""
    have = {"target": member_text is not None, "heldout": cfg.membership.heldout is not None,
            "facts": cfg.probes.target is not None and len(probes.read_probes(cfg.probes.target, cfg.max_samples)) > 1}
    return [source for source in cfg.relearning.sources if have[source]]


def figure_key(source: str) -> str:
    """The summary key of relearning from `source`: the mean target P(answer) after the last step."""
    return f"relearn_{source}_p_answer"


def sample_kind(source: str) -> str:
    """Where relearning from `source` keeps its curve: the key of its per-sample records and of its curves in
    report.json (`relearning` for the target's blocks, as before there were other sources)."""
    return "relearning" if source == "target" else f"relearning_{source}"


def part_name(source: str) -> str:
    """The cached part of relearning from `source` (`relearning`, `relearning-heldout`, `relearning-facts`)."""
    return "relearning" if source == "target" else f"relearning-{source}"


def halves(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The facts a `facts` relearning trains on (the probes at even positions) and those it scores (odd)."""
    return rows[0::2], rows[1::2]


def fact_blocks(rows: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, block_length: int, count: int,
                seed: int) -> torch.Tensor:
    """`count` blocks of `block_length` tokens [count, block_length] int64 filled with the facts written out
    as statements (each probe's prompt and answer joined as `evaluation.probes.seam` joins them, ended by
    `.`, one per line), the facts shuffled anew (seeded) on each pass until the blocks are full; each block
    opens with BOS when the tokenizer adds one, as `core.text.make_blocks` cuts them.

    Raises:
        ValueError: no facts.
    """
    if not rows:
        raise ValueError("no facts to relearn from")
    generator = torch.Generator().manual_seed(seed)
    statements = ["{}{}.\n".format(*seam(row["prompt"], row["answer"])) for row in rows]
    bos = adds_bos(tokenizer)
    body = block_length - (1 if bos is not None else 0)
    ids: list[int] = []
    while len(ids) < body * count:
        order = torch.randperm(len(statements), generator=generator).tolist()
        ids += tokenizer("".join(statements[i] for i in order), add_special_tokens=False).input_ids
    blocks = [([bos] if bos is not None else []) + ids[i * body : (i + 1) * body] for i in range(count)]
    return torch.tensor(blocks, dtype=torch.long)


def relearn_curve(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor,
                  probe_rows: list[dict[str, str]], cfg: EvalConfig, *, seed: int,
                  work_dir: Path, desc: str, progress: bool = False) -> list[dict]:
    """Fine-tune `model` in place for `cfg.relearning.steps` steps on the blocks `ids` ([blocks, length] int64:
    `relearn_blocks` or `fact_blocks`), scoring the probes before the first step, every
    `cfg.relearning.eval_every` steps and after the last: one record per measurement with the step and each
    probe's P(answer).

    A model whose weights are not all fp32 (an inference dtype of bf16 or fp16) is first cast to fp32 in
    place, so the fine-tune updates fp32 master weights; it is left in fp32, fine-tuned.
    """
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    relearn = cfg.relearning
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
