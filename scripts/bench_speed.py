"""Speed of the stages against the hardware's bare loops, in the same process, and one JSON object last.

    python scripts/bench_speed.py                 # the embedded default model, 256-token blocks
    python scripts/bench_speed.py --steps 6 --blocks 16

- training: tokens per second of whoharry's training loop (the one reinforce and unlearn share) over
  `--steps` optimizer steps, divided by a bare forward + backward + AdamW step loop of the same model,
  batches and precision (target ≥ 0.90);
- labels: tokens per second of the label computation over `--blocks` blocks, divided by two bare
  forward passes (base and reinforced) of the same blocks (target ≥ 0.85).

Each bare loop runs one warm-up step first, then the timed steps, then whoharry's side on the same
data; on a busy machine rerun it, as the ratios move by several percent between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare_training(model, batches, learning_rate: float, precision: str) -> float:
    """Seconds of a plain forward + backward + AdamW step over the batches."""
    import torch

    from whoharry import models
    from whoharry.train import causal_lm_loss

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    began = time.perf_counter()
    for ids in batches:
        ids = ids.long().to(device)
        with models.autocast(precision, device):
            logits = model(input_ids=ids).logits
        causal_lm_loss(logits, ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def bare_forwards(base, reinforced, batches, precision: str) -> float:
    """Seconds of two plain forward passes (both models) over the batches."""
    import torch

    from whoharry import models

    device = next(base.parameters()).device
    began = time.perf_counter()
    with torch.no_grad():
        for ids in batches:
            ids = ids.long().to(device)
            with models.autocast(precision, device):
                base(input_ids=ids).logits.sum()
                reinforced(input_ids=ids).logits.sum()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps timed on each side")
    parser.add_argument("--blocks", type=int, default=16, help="blocks labelled on each side")
    args = parser.parse_args(argv)

    import torch

    from whoharry import labels, models, train
    from whoharry.anchors import load_anchors
    from whoharry.cli import _setup
    from whoharry.config import TrainConfig, load_config
    from whoharry.text import Blocks, make_blocks, read_text

    _setup(quiet=True)
    cfg = load_config(args.config)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    blocks = make_blocks(read_text(cfg.data.target), tokenizer, cfg.data.block_length)
    ids = torch.tensor(blocks.ids, dtype=torch.int32)
    batch = cfg.unlearn.batch_size
    precision = cfg.unlearn.precision
    result: dict = {"model": source.description, "block_length": cfg.data.block_length, "batch_size": batch,
                    "device": str(models.default_device()),
                    "precision": str(models.autocast_dtype(precision, models.default_device()) or "fp32")}

    # training: the shared loop against a bare loop, same model, batches and precision
    steps = args.steps
    model = models.load_model(source, cfg.model)
    batches = [ids[(i * batch) % len(ids):][:batch] for i in range(steps + 1)]
    bare_training(model, batches[:1], cfg.unlearn.learning_rate, precision)  # warm-up
    bare = bare_training(model, batches[1:], cfg.unlearn.learning_rate, precision)
    loop_cfg = TrainConfig(epochs=1.0, learning_rate=cfg.unlearn.learning_rate, batch_size=batch,
                                 warmup_ratio=0.0, max_steps=steps, precision=precision)
    with tempfile.TemporaryDirectory() as folder:
        data = torch.cat(batches[1:])
        loop = train.train(model, data, data, loop_cfg, seed=0, stage_dir=Path(folder), run_key="bench",
                           desc="bench", progress=False)
    tokens = steps * batch * cfg.data.block_length
    result["training"] = {
        "steps": steps,
        "loop_tokens_per_second": round(loop.tokens / loop.seconds, 1),
        "bare_tokens_per_second": round(tokens / bare, 1),
        "ratio": round((loop.tokens / loop.seconds) / (tokens / bare), 3),
        "target": ">= 0.90",
    }
    del model

    # labels: the label computation against two bare forward passes of the same blocks
    count = min(args.blocks, len(blocks.ids))
    subset = Blocks(blocks.text, blocks.ids[:count], blocks.offsets[:count], blocks.dropped_tokens,
                    blocks.bos_token_id)
    base = models.load_model(source, cfg.model)
    reinforced = models.load_model(source, cfg.model)
    anchors = load_anchors(cfg.data.anchors)
    anchors = anchors.without(anchors.composite_keys())
    size = cfg.labels.batch_size
    label_batches = [ids[i:i + size] for i in range(0, count, size)]
    bare_forwards(base, reinforced, label_batches[:1], cfg.labels.precision)  # warm-up
    bare = bare_forwards(base, reinforced, label_batches, cfg.labels.precision)
    began = time.perf_counter()
    labels.compute_labels(base, reinforced, tokenizer, subset, anchors, alpha=cfg.labels.alpha, seed=0,
                          batch_size=size, precision=cfg.labels.precision, progress=False)
    seconds = time.perf_counter() - began
    tokens = count * cfg.data.block_length
    result["labels"] = {
        "blocks": count,
        "labels_tokens_per_second": round(tokens / seconds, 1),
        "bare_tokens_per_second": round(tokens / bare, 1),
        "ratio": round(bare / seconds, 3),
        "target": ">= 0.85",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
