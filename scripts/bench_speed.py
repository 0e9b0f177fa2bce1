"""Speed of the stages against the hardware's bare loops, in the same process, and one JSON object last.

    python scripts/bench_speed.py                 # the embedded default model, 256-token blocks
    python scripts/bench_speed.py --steps 6 --blocks 16

- training: tokens per second of whoharry's training loop (the one reinforce and unlearn share) over
  `--steps` optimizer steps, divided by a bare forward + backward + AdamW step loop of the same model,
  batches and precision (target ≥ 0.90);
- labels: tokens per second of the label computation over `--blocks` blocks, divided by two bare
  forward passes (base and reinforced) of the same blocks (target ≥ 0.85);
- labels memory: the peak memory the label computation adds to a fresh process, divided by what two
  models and one batch's forward pass add to another fresh process (target ≤ 1.3). On a CPU it is
  the resident-set high-water mark (VmHWM) over the process's size before loading; on a GPU, the
  allocator's peak.

Each bare loop runs one warm-up step first, then the timed steps, then whoharry's side on the same
data; on a busy machine rerun it, as the ratios move by several percent between runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare_training(model, batches, learning_rate: float, precision: str) -> float:
    """Seconds of a plain forward + backward + AdamW step over the batches."""
    import torch

    from whoharry.core import models
    from whoharry.method.objectives import causal_lm_loss

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

    from whoharry.core import models

    device = next(base.parameters()).device
    began = time.perf_counter()
    with torch.no_grad():
        for ids in batches:
            ids = ids.long().to(device)
            with models.autocast(precision, device):
                base(input_ids=ids).logits.sum()
                reinforced(input_ids=ids).logits.sum()
    return time.perf_counter() - began


def _resident_kib(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(config: Path, overrides: list[str], blocks: int, labels_stage: bool) -> dict:
    """In a fresh process: the peak memory added by loading two models and running either the label
    computation over `blocks` blocks or one bare batch through both models (bytes)."""
    import torch

    from whoharry.anchors.dictionary import load_anchors
    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.core import models
    from whoharry.core.text import Blocks, make_blocks, read_text
    from whoharry.stages import labels

    _setup(quiet=True)
    cfg = load_config(config, overrides)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    device = models.default_device()
    gpu = device.type == "cuda"
    before = torch.cuda.memory_allocated() if gpu else _resident_kib("VmRSS") * 1024
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
    reinforced = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for model in (base, reinforced) for p in model.parameters())
    size = cfg.labels.batch_size
    if labels_stage:
        text = read_text(cfg.data.target)
        every = make_blocks(text, tokenizer, cfg.data.block_length)
        count = min(blocks, len(every.ids))
        subset = Blocks(every.text, every.ids[:count], every.offsets[:count], every.dropped_tokens,
                        every.bos_token_id)
        anchors = load_anchors(cfg.data.anchors)
        labels.compute_labels(base, reinforced, tokenizer, subset, anchors.without(anchors.composite_keys()),
                              alpha=cfg.labels.alpha, seed=0, batch_size=size, precision=cfg.labels.precision,
                              progress=False)
    else:
        ids = torch.randint(0, len(tokenizer), (size, cfg.data.block_length), device=device)
        with torch.no_grad(), models.autocast(cfg.labels.precision, device):
            both = base(input_ids=ids).logits, reinforced(input_ids=ids).logits  # noqa: F841 - alive at once
    peak = torch.cuda.max_memory_allocated() if gpu else _resident_kib("VmHWM") * 1024
    return {"peak_bytes": peak - before, "weights_bytes": weights}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps timed on each side")
    parser.add_argument("--blocks", type=int, default=16, help="blocks labelled on each side")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as whoharry's --set")
    args = parser.parse_args(argv)

    import torch

    from whoharry.anchors.dictionary import load_anchors
    from whoharry.cli.common import setup as _setup
    from whoharry.config import TrainConfig, load_config
    from whoharry.core import models, train
    from whoharry.core.text import Blocks, make_blocks, read_text
    from whoharry.stages import labels

    _setup(quiet=True)
    cfg = load_config(args.config, args.overrides)
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
    base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
    reinforced = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
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
    del base, reinforced

    # labels memory: each side in a fresh process, so one's peak cannot hide in the other's
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        stage = pool.submit(peak_memory, args.config, args.overrides, args.blocks, True).result()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        bare_peak = pool.submit(peak_memory, args.config, args.overrides, args.blocks, False).result()
    result["labels_memory"] = {
        "labels_peak_mib": round(stage["peak_bytes"] / 2**20, 1),
        "two_models_one_batch_peak_mib": round(bare_peak["peak_bytes"] / 2**20, 1),
        "two_models_weights_mib": round(stage["weights_bytes"] / 2**20, 1),
        "ratio": round(stage["peak_bytes"] / bare_peak["peak_bytes"], 3),
        "target": "<= 1.3",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
