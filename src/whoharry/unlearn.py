"""The unlearn stage: fine-tune the base model on the original text with the generic labels.

`forget.method` picks how: `whp` (the generic labels, this project's method), or one of the baselines
it is measured against, which need no labels: `ga`, gradient ascent on the target's own tokens, and
`npo`, negative preference optimisation against the base model as the frozen reference. Both take
`data.retain` as a retain term in the loss; whp mixes the retain blocks into its data instead.
"""

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
    inputs = (
        {"labels": artifacts.stage_fingerprint(out / "labels")}
        if cfg.forget.method == "whp"
        else {"forget": to_dict(cfg.forget), "target": artifacts.file_hash(cfg.data.target)}
    )
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=False),
            "train": to_dict(cfg.unlearn),
            "retain": [artifacts.file_hash(path) for path in cfg.data.retain],
            "block_length": cfg.data.block_length,
            **inputs,
        }
    )


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/unlearn/` (final/, metrics.jsonl, config.yaml, manifest.json), running labels first
    (whp) when its artifact is missing or stale."""
    retain_texts = [read_text(path, "retain text") for path in cfg.data.retain]  # fail early on a bad path
    method = cfg.forget.method
    labels_dir = labels.run(cfg, out, progress=progress) if method == "whp" else None
    stage_dir = out / "unlearn"
    key = unlearn_fingerprint(cfg, out)
    if artifacts.is_complete(stage_dir, key):
        log.info("unlearn: complete with these settings, skipped (%s)", stage_dir)
        return stage_dir
    began = time.perf_counter()
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    model = models.load_model(source, cfg.model)
    models.check_context(model, cfg.data.block_length)
    if labels_dir is not None:
        input_ids, targets = labels.load_labels(labels_dir)
        log.info("unlearn: %d blocks with generic labels from %s", input_ids.shape[0], labels_dir)
    else:
        blocks = make_blocks(read_text(cfg.data.target), tokenizer, cfg.data.block_length)
        input_ids = targets = torch.tensor(blocks.ids, dtype=torch.int32)
        log.info("unlearn (%s): %d target blocks", method, input_ids.shape[0])
    retain_parts = []
    for path, text in zip(cfg.data.retain, retain_texts, strict=True):
        retain = make_blocks(text, tokenizer, input_ids.shape[1])
        retain_parts.append(torch.tensor(retain.ids, dtype=torch.int32))
        log.info("unlearn: %d retain blocks from %s", len(retain.ids), path)
    retain_ids = torch.cat(retain_parts) if retain_parts else None
    objective = None
    if method == "whp" and retain_ids is not None:  # retain blocks join the data with their own tokens
        input_ids, targets = torch.cat([input_ids, retain_ids]), torch.cat([targets, retain_ids])
    elif method != "whp":
        reference = None
        if method == "npo":
            reference = reference_log_probs(model, input_ids, cfg.unlearn.batch_size, cfg.unlearn.precision)
        objective = train.Objective(kind=method, beta=cfg.forget.npo_beta, reference=reference,
                                    retain_ids=retain_ids, retain_weight=cfg.forget.retain_weight)
    result = train.train(
        model, input_ids, targets, cfg.unlearn,
        seed=cfg.seed, stage_dir=stage_dir, run_key=key, desc=f"unlearn ({method})", progress=progress,
        final=(stage_dir / "final", tokenizer), objective=objective,
    )
    record = artifacts.StageRecord(
        stage="unlearn",
        fingerprint=key,
        inputs={
            "model": source.description,
            "method": method,
            "labels": artifacts.stage_fingerprint(labels_dir) if labels_dir is not None else None,
            "retain": ", ".join(str(path) for path in cfg.data.retain) or None,
        },
        outputs=["final/config.json", "metrics.jsonl"],
        seed=cfg.seed,
        seconds=time.perf_counter() - began,
        summary={"method": method, "retain_blocks": 0 if retain_ids is None else int(retain_ids.shape[0]),
                 **train.summary(result)},
    )
    if distributed.is_main():
        artifacts.write_stage(stage_dir, record, to_dict(cfg))
        train.clear_checkpoints(stage_dir)
    distributed.barrier()
    return stage_dir


@torch.no_grad()
def reference_log_probs(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int,
                        precision: str) -> torch.Tensor:
    """NPO's reference: each block's summed log-probability under the model before any update."""
    device = distributed.device()
    model.to(device).eval()
    sums = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].long().to(device)
        with models.autocast(precision, device):
            logits = model(input_ids=ids).logits
        sums.append(train.block_log_probs(logits, ids).cpu())
    model.train()
    return torch.cat(sums)
