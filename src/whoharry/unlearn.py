"""The unlearn stage: fine-tune the base model on the original text with the generic labels."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from whoharry import artifacts, distributed, labels, models, train
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.text import make_blocks, read_text

log = logging.getLogger(__name__)


def unlearn_fingerprint(cfg: Config, out: Path) -> str:
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=False),
            "train": to_dict(cfg.unlearn),
            "retain": [artifacts.file_hash(path) for path in cfg.data.retain],
            "block_length": cfg.data.block_length,
            "labels": artifacts.stage_fingerprint(out / "labels"),
        }
    )


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/unlearn/` (final/, metrics.jsonl, config.yaml, manifest.json), running labels first
    when its artifact is missing or stale."""
    retain_texts = [read_text(path, "retain text") for path in cfg.data.retain]  # fail early on a bad path
    labels_dir = labels.run(cfg, out, progress=progress)
    stage_dir = out / "unlearn"
    key = unlearn_fingerprint(cfg, out)
    if artifacts.is_complete(stage_dir, key):
        log.info("unlearn: complete with these settings, skipped (%s)", stage_dir)
        return stage_dir
    began = time.perf_counter()
    input_ids, generic = labels.load_labels(labels_dir)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    model = models.load_model(source, cfg.model)
    models.check_context(model, cfg.data.block_length)
    log.info("unlearn: %d blocks with generic labels from %s", input_ids.shape[0], labels_dir)
    retain_blocks = 0
    for path, text in zip(cfg.data.retain, retain_texts, strict=True):
        retain = make_blocks(text, tokenizer, input_ids.shape[1])
        retain_ids = torch.tensor(retain.ids, dtype=torch.int32)
        retain_blocks += retain_ids.shape[0]
        log.info("unlearn: %d retain blocks from %s join the data with their own tokens", len(retain.ids), path)
        input_ids, generic = torch.cat([input_ids, retain_ids]), torch.cat([generic, retain_ids])
    result = train.train(
        model, input_ids, generic, cfg.unlearn,
        seed=cfg.seed, stage_dir=stage_dir, run_key=key, desc="unlearn", progress=progress,
        final=(stage_dir / "final", tokenizer),
    )
    record = artifacts.StageRecord(
        stage="unlearn",
        fingerprint=key,
        inputs={
            "model": source.description,
            "labels": artifacts.stage_fingerprint(labels_dir),
            "retain": ", ".join(str(path) for path in cfg.data.retain) or None,
        },
        outputs=["final/config.json", "metrics.jsonl"],
        seed=cfg.seed,
        seconds=time.perf_counter() - began,
        summary={"retain_blocks": retain_blocks, **train.summary(result)},
    )
    if distributed.is_main():
        artifacts.write_stage(stage_dir, record, to_dict(cfg))
        train.clear_checkpoints(stage_dir)
    distributed.barrier()
    return stage_dir
