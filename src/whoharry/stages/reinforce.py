"""The reinforce stage (Eldan & Russinovich 2023, section 2.1): fine-tune a copy of the base model on the
target text.

The reinforced model's logits rise most on the target's idiosyncratic tokens; the labels stage uses
that rise to tell which predictions to steer away from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from whoharry.config import Config, fingerprint, model_key, train_key
from whoharry.core import models, train
from whoharry.core.text import make_blocks, read_target, target_hash
from whoharry.stages.common import Outcome, run_stage

log = logging.getLogger(__name__)

NAME = "reinforce"


def key(cfg: Config, out: Path | None = None) -> str:
    """The fingerprint of what the reinforced model depends on: seed, model, blocks, training, target."""
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=False),
            "block_length": cfg.data.block_length,
            "train": train_key(cfg.reinforce),
            "target": target_hash(cfg.data),
        }
    )


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/reinforce/`: `final/` (a save_pretrained folder), metrics.jsonl, config.yaml and
    manifest.json, unless complete. Resumes from `checkpoints/` after an interruption.

    Raises:
        WhoharryError: an unreadable or too short target, an unknown model or one without a fast
            tokenizer, blocks beyond its context, fp16 on a CPU, LoRA with sharded weights, a held-out share
            leaving no block to train on, or a loss that became NaN or infinite.
    """
    stage_dir = out / NAME

    def body() -> Outcome:
        text = read_target(cfg.data)
        source = models.resolve(cfg.model)
        tokenizer = models.load_tokenizer(source, cfg.model)
        blocks = make_blocks(text, tokenizer, cfg.data.block_length)
        model = models.load_model(source, cfg.model)
        models.check_context(model, cfg.data.block_length)
        input_ids = torch.tensor(blocks.ids, dtype=torch.int32)
        log.info("reinforce: %d blocks of %d tokens from %s", len(blocks.ids), cfg.data.block_length,
                 cfg.data.target)
        result = train.train(
            model, input_ids, input_ids, cfg.reinforce,
            seed=cfg.seed, stage_dir=stage_dir, run_key=stage_key, desc="reinforce", progress=progress,
            final=(stage_dir / "final", tokenizer),
        )
        return Outcome(inputs={"target": str(cfg.data.target), "model": source.description},
                       outputs=["final/config.json", "metrics.jsonl"],
                       summary={"blocks": len(blocks.ids), **train.summary(result)})

    stage_key = key(cfg, out)
    return run_stage(NAME, cfg, stage_dir, stage_key, body)
