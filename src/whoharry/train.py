"""The one training loop behind both fine-tuning stages.

Reinforcing is this loop with the text as its own labels; unlearning is this loop with the generic
labels. AdamW, linear warm-up then linear decay, gradient accumulation, gradient clipping, autocast,
and checkpoints every N steps that a rerun resumes from, ending with the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from whoharry import artifacts, models
from whoharry.config import TrainConfig
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float
    mean_loss: float
    tokens: int
    seconds: float
    precision: str


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position t's logits against labels[t + 1], ignoring -100."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:].long()
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


def total_steps(samples: int, cfg: TrainConfig) -> int:
    per_step = cfg.batch_size * cfg.grad_accum
    steps = max(1, math.ceil(cfg.epochs * samples / per_step))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def sample_order(samples: int, step: int, cfg: TrainConfig, seed: int) -> list[list[int]]:
    """The micro-batches of one optimizer step: a reshuffle per epoch, fixed by seed and step alone."""
    per_step = cfg.batch_size * cfg.grad_accum
    first, last = step * per_step, (step + 1) * per_step
    chosen: list[int] = []
    for epoch in range(first // samples, (last - 1) // samples + 1):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(samples, generator=generator).tolist()
        lo, hi = max(first - epoch * samples, 0), min(last - epoch * samples, samples)
        chosen.extend(order[lo:hi])
    return [chosen[i : i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]


def train(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    stage_dir: Path,
    run_key: str,
    desc: str,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` in place on (input_ids, labels) blocks; resume from `stage_dir/checkpoints`.
    `on_step(n)` runs after optimizer step n (for measurements; the model is put back in training mode)."""
    device = next(model.parameters()).device
    samples = input_ids.shape[0]
    steps = total_steps(samples, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * steps), steps)
    start = _resume(stage_dir / "checkpoints", run_key, model, optimizer, scheduler)
    metrics_path = stage_dir / "metrics.jsonl"
    if start:
        log.info("%s: resuming from checkpoint step-%d", desc, start)
        artifacts.truncate_metrics(metrics_path, "step", start)
    else:
        torch.manual_seed(seed)
    metrics = artifacts.MetricsLog(metrics_path, append=start > 0)
    model.train()
    losses: list[float] = []
    tokens = 0
    began = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not progress)
    for step in range(start, steps):
        micro_batches = sample_order(samples, step, cfg, seed)
        step_loss = 0.0
        for batch in micro_batches:
            ids = input_ids[batch].long().to(device)
            targets = labels[batch].long().to(device)
            with models.autocast(cfg.precision, device):
                logits = model(input_ids=ids).logits
            loss = causal_lm_loss(logits, targets) / len(micro_batches)
            loss.backward()
            step_loss += loss.item()
            tokens += int(ids.numel())
        if not math.isfinite(step_loss):
            raise WhoharryError(
                f"{desc}: the loss became {step_loss} at step {step + 1}; lower the learning rate "
                "or use precision fp32 (the last checkpoint is kept)"
            )
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        metrics.log(step=step + 1, loss=round(step_loss, 6), lr=scheduler.get_last_lr()[0],
                    seconds=round(time.perf_counter() - began, 3))
        bar.set_postfix(loss=f"{step_loss:.3f}")
        bar.update(1)
        done = step + 1
        if on_step is not None:
            on_step(done)
            model.train()
        if cfg.save_every and done % cfg.save_every == 0 and done < steps:
            _save_checkpoint(stage_dir / "checkpoints", done, run_key, model, optimizer, scheduler, cfg)
    bar.close()
    model.eval()
    dtype = models.autocast_dtype(cfg.precision, device)
    return TrainResult(
        steps=steps,
        resumed_from=start,
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / len(losses) if losses else float("nan"),
        tokens=tokens,
        seconds=time.perf_counter() - began,
        precision=str(dtype).removeprefix("torch.") if dtype else "fp32",
    )


def _save_checkpoint(root: Path, step: int, run_key: str, model, optimizer, scheduler, cfg: TrainConfig) -> None:
    """`checkpoints/step-N/`: weights (safetensors), optimizer and RNG state, then `state.json` last."""
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_untie(state), str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "run_key": run_key, "scheduler": scheduler.state_dict()}), encoding="utf-8"
    )
    artifacts.replace_dir(tmp, final)
    kept = sorted(_complete_checkpoints(root), key=lambda item: item[0])
    for _, old in kept[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): store each tensor on its own."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        pointer = tensor.data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.setdefault(pointer, name)
    return out


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for path in root.glob("step-*"):
            if (path / "state.json").is_file() and path.name.removeprefix("step-").isdigit():
                found.append((int(path.name.removeprefix("step-")), path))
    return found


def _resume(root: Path, run_key: str, model, optimizer, scheduler) -> int:
    """Load the newest complete checkpoint made with the same settings; return its step (0 if none)."""
    for step, path in sorted(_complete_checkpoints(root), reverse=True):
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("run_key") != run_key:
            log.info("ignoring %s: made with other settings", path)
            continue
        weights = load_file(str(path / "model.safetensors"))
        model.load_state_dict(weights)
        extra = torch.load(path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(extra["rng"])
        return step
    return 0


def clear_checkpoints(stage_dir: Path) -> None:
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)


def save_final(model, tokenizer, stage_dir: Path) -> Path:
    """Write `stage_dir/final/` as an ordinary save_pretrained folder (weights and tokenizer)."""
    final = stage_dir / "final"
    tmp = stage_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    artifacts.replace_dir(tmp, final)
    return final


def summary(result: TrainResult) -> dict[str, float | int | str]:
    return {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": round(result.final_loss, 6),
        "mean_loss": round(result.mean_loss, 6),
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 2),
        "precision": result.precision,
    }
