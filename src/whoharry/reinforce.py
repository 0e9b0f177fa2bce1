"""The reinforce stage: fine-tune a copy of the base model on the target text.

The reinforced model's logits rise most on the target's idiosyncratic tokens; the labels stage uses
that rise to tell which predictions to steer away from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from whoharry import artifacts, distributed, models, train
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.text import make_blocks, read_text

log = logging.getLogger(__name__)


def reinforce_fingerprint(cfg: Config) -> str:
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=False),
            "block_length": cfg.data.block_length,
            "train": to_dict(cfg.reinforce),
            "target": artifacts.file_hash(cfg.data.target) if cfg.data.target.is_file() else "missing",
        }
    )


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/reinforce/` (final/, metrics.jsonl, config.yaml, manifest.json), unless done."""
    stage_dir = out / "reinforce"
    key = reinforce_fingerprint(cfg)
    if artifacts.is_complete(stage_dir, key):
        log.info("reinforce: complete with these settings, skipped (%s)", stage_dir)
        return stage_dir
    began = time.perf_counter()
    text = read_text(cfg.data.target)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    blocks = make_blocks(text, tokenizer, cfg.data.block_length)
    model = models.load_model(source, cfg.model)
    models.check_context(model, cfg.data.block_length)
    input_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    log.info("reinforce: %d blocks of %d tokens from %s", len(blocks.ids), cfg.data.block_length, cfg.data.target)
    result = train.train(
        model, input_ids, input_ids, cfg.reinforce,
        seed=cfg.seed, stage_dir=stage_dir, run_key=key, desc="reinforce", progress=progress,
        final=(stage_dir / "final", tokenizer),
    )
    record = artifacts.StageRecord(
        stage="reinforce",
        fingerprint=key,
        inputs={"target": str(cfg.data.target), "model": source.description},
        outputs=["final/config.json", "metrics.jsonl"],
        seed=cfg.seed,
        seconds=time.perf_counter() - began,
        summary={"blocks": len(blocks.ids), **train.summary(result)},
    )
    if distributed.is_main():
        artifacts.write_stage(stage_dir, record, to_dict(cfg))
        train.clear_checkpoints(stage_dir)
    distributed.barrier()
    return stage_dir
