"""The one training loop behind both fine-tuning stages.

Reinforcing is this loop with the text as its own labels; unlearning is this loop with the generic
labels. AdamW, linear warm-up then linear decay, gradient accumulation, gradient clipping, mixed
precision, and checkpoints every N steps that a rerun resumes from, ending with the same weights.
A share of the blocks may be held out, never trained on, its loss measured after every epoch; with
`select_best` the stage ends with the weights of the lowest held-out loss (`core.validation`,
`core.checkpoints`).

It runs through accelerate, so `accelerate launch` makes it data-parallel (DDP, FSDP or DeepSpeed
ZeRO-3, from the accelerate config file). `batch_size` is per process: an optimizer step sees
`batch_size x grad_accum x processes` blocks, the same blocks whatever the split, and the loss is the
mean over every labelled token of the step, so N processes take the steps one process would.

What the loop minimises is its `Objective`: cross-entropy against the labels (reinforce, WHP
unlearning), its negative (gradient ascent), or NPO's loss against a frozen reference; gradient
ascent and NPO may add a retain term, the cross-entropy on retain blocks paired with each batch.

The weights it updates must be fp32 (master weights; `precision` sets only the compute dtype): a model in
bf16 or fp16 is refused, as updates smaller than a weight's rounding step would be lost. With LoRA, the
adapters are merged into the saved model; an adapter on a layer whose weight is tied to another (`lm_head`
or `embed_tokens` of a model with `tie_word_embeddings`) unties them first, so the saved folder computes
exactly what was trained and its config says `tie_word_embeddings: false`. The default target `all-linear`
leaves the output layer out (peft's rule), so it keeps a tied model tied.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from whoharry.config import TrainConfig, to_dict
from whoharry.core import artifacts, checkpoints, distributed, fsdp, models, validation
from whoharry.core.final import save_final
from whoharry.errors import WhoharryError
from whoharry.method.objectives import IGNORE, Objective, causal_lm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one `train` call did. `final_loss` and `mean_loss` are the objective's value per optimizer
    step run in this call (nan when none ran); `tokens` counts the forget blocks' tokens read by all
    processes together (retain blocks not counted); `seconds` is wall-clock; `precision` is the autocast
    dtype's name ("bfloat16", "float16") or "fp32". With held-out blocks, `val_loss` is their loss after
    the last step, and with `select_best`, `best_step` the step whose weights the model ends with and
    `best_val_loss` its held-out loss."""

    steps: int
    resumed_from: int
    final_loss: float
    mean_loss: float
    tokens: int  # tokens read by all processes together
    seconds: float
    precision: str
    processes: int
    validation_blocks: int = 0  # held out, never trained on
    val_loss: float = math.nan
    best_step: int | None = None
    best_val_loss: float = math.nan


def total_steps(samples: int, cfg: TrainConfig, processes: int = 1) -> int:
    """Optimizer steps for `cfg.epochs` over `samples` blocks: ceil(epochs x samples / (batch_size x
    grad_accum x processes)), at least 1, capped at `cfg.max_steps` when that is set (non-zero)."""
    per_step = cfg.batch_size * cfg.grad_accum * processes
    steps = max(1, math.ceil(cfg.epochs * samples / per_step))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def sample_order(samples: int, step: int, cfg: TrainConfig, seed: int, processes: int = 1) -> list[list[int]]:
    """The micro-batches of one optimizer step, for all processes together (`batch_size x processes`
    blocks each): a reshuffle per epoch, fixed by seed and step alone."""
    width = cfg.batch_size * processes
    per_step = width * cfg.grad_accum
    first, last = step * per_step, (step + 1) * per_step
    chosen: list[int] = []
    for epoch in range(first // samples, (last - 1) // samples + 1):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(samples, generator=generator).tolist()
        lo, hi = max(first - epoch * samples, 0), min(last - epoch * samples, samples)
        chosen.extend(order[lo:hi])
    return [chosen[i : i + width] for i in range(0, len(chosen), width)]


def make_accelerator(cfg: TrainConfig, stage_dir: Path | None = None) -> Accelerator:
    """An Accelerator for one training run: its mixed precision follows `cfg.precision`
    (`models.autocast_dtype`), its gradient accumulation `cfg.grad_accum`, its trackers `cfg.log_with`
    (their files under `stage_dir/trackers/`).

    Raises:
        WhoharryError: fp16 asked for (explicitly) on a CPU; a tracker whose package is not installed.
    """
    device = distributed.device()
    dtype = models.autocast_dtype(cfg.precision, device)
    if dtype == torch.float16 and device.type == "cpu":
        raise WhoharryError("precision fp16 needs a GPU; use bf16 or fp32 on a CPU")
    mixed = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed and distributed.world() == 1:
        # one process may train with several precisions in turn (the evaluation's relearning, tests)
        AcceleratorState._reset_state()
    trackers = {"log_with": list(cfg.log_with), "project_dir": str(stage_dir / "trackers")} if cfg.log_with else {}
    with warnings.catch_warnings():  # accelerate warns of, and drops, a tracker it cannot import
        warnings.simplefilter("ignore")
        acc = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed, gradient_accumulation_steps=cfg.grad_accum,
                          **trackers)
    missing = [name for name in cfg.log_with if name not in {str(t) for t in acc.log_with or []}]
    if missing:
        raise WhoharryError(f"log_with {', '.join(missing)}: not installed; pip install {' '.join(missing)}")
    return acc


def prepare_model(model: PreTrainedModel, cfg: TrainConfig) -> torch.nn.Module:
    """Gradient checkpointing, LoRA adapters and torch.compile, as configured (before accelerate wraps it).

    Returns:
        The model itself, or with `cfg.lora_rank` a peft `PeftModel` around it (the adapters are
        injected into `model`'s own modules).

    Raises:
        WhoharryError: LoRA asked for while the weights are sharded (FSDP or DeepSpeed ZeRO-3).
    """
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    if cfg.lora_rank:
        if distributed.sharded():
            raise WhoharryError("LoRA runs on one GPU or with DDP; with FSDP or DeepSpeed ZeRO-3 set lora_rank=0")
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
            target_modules=targets[0] if targets == ["all-linear"] else targets,
        ))
    if cfg.compile:
        model.compile()
    return model


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Gradient (activation) checkpointing on or off: transformers 5 names it activation checkpointing."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def train(
    model: PreTrainedModel,
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
    final: tuple[Path, PreTrainedTokenizerBase] | None = None,
    objective: Objective | None = None,
    held_out_from: int | None = None,
    wise_ft: tuple[float, Callable[[], dict[str, torch.Tensor]]] | None = None,
) -> TrainResult:
    """Fine-tune `model` in place on (input_ids, labels) blocks; resume from `stage_dir/checkpoints`.

    AdamW (`cfg.learning_rate`, `cfg.weight_decay`, betas `cfg.adam_beta1`, `cfg.adam_beta2`) with linear
    warm-up (`cfg.warmup_ratio` of the steps) then linear decay to 0, gradient clipping at `cfg.max_grad_norm`
    (when > 0), a checkpoint every `cfg.save_every` steps, and one `metrics.jsonl` record per optimizer step
    (step, loss, lr, seconds). `cfg.validation_share` of the blocks are held out (`validation.split`): an
    epoch is a pass over the others, and the steps that end an epoch, and the last, add the held-out loss
    and perplexity to their record (`val_loss`, `val_perplexity`). With `cfg.select_best` the model ends
    with the weights of the lowest held-out loss (with sharded weights only `final` does: the model in
    memory keeps the last step's).

    Args:
        model: the model to train; it is left in eval mode, gradient checkpointing switched off.
        input_ids: [blocks, length] token ids (int32 in the stages; cast to int64 per batch).
        labels: [blocks, length] target ids in the transformers convention (`labels[:, t]` is predicted
            from position t - 1), `IGNORE` (-100) where there is no label.
        cfg: the training settings (`batch_size` is per process).
        seed: fixes the sample order and, on a fresh start, torch's generator.
        stage_dir: where `checkpoints/` and `metrics.jsonl` go.
        run_key: a checkpoint saved under another key (or another number of processes) is not resumed.
        desc: the progress bar's and messages' label.
        progress: show a progress bar (main process only).
        on_step: called with n after optimizer step n (for measurements, one process only; the model is
            put back in training mode after it).
        final: `(folder, tokenizer)`: write the trained model there as a save_pretrained folder (LoRA
            merged in, a tied layer it adapted untied first; sharded weights gathered).
        objective: what to minimise; default cross-entropy against `labels` (`Objective()`).
        held_out_from: hold blocks out only among the first N (the target's, when retain blocks follow
            them); default all.
        wise_ft: `(alpha, base_weights)`: `final` holds base + alpha * (trained - base) (WiSE-FT,
            `method.wise_ft.mix_state`), mixed in fp32 from the fp32 trained weights and rounded to
            `cfg.save_dtype` once; `base_weights()` gives the starting model's fp32 state dict on the CPU
            (called on the main process only, its tensors overwritten). The model in memory stays as trained.

    Returns:
        A `TrainResult`. Each step's loss is the objective's value: for `ce` the mean cross-entropy per
        labelled token (nats), for `npo` the mean per block, plus the weighted retain term when there is one.

    Raises:
        WhoharryError: a trainable weight that is not fp32 (before anything is changed), fp16 on a CPU,
            LoRA with sharded weights, a held-out share leaving no block to train on or none labelled,
            `select_best` without held-out blocks or with an objective other than cross-entropy, or a loss
            that became NaN or infinite (the last checkpoint is kept), or with `wise_ft` a trained weight
            the base model lacks (after training: `final` is then not written).
    """
    halved = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                     if p.requires_grad and p.dtype != torch.float32})
    if halved:  # updates below a bf16 weight's rounding step would be lost: most weights would never move
        raise WhoharryError(f"{desc}: training needs fp32 weights, this model's are {', '.join(halved)} "
                            "(precision sets the compute dtype; load the model in fp32)")
    objective = objective or Objective()
    if cfg.select_best and objective.kind not in ("ce", "soft"):  # its lowest cross-entropy: the least forgetting
        raise WhoharryError(f"{desc}: select_best keeps the lowest held-out cross-entropy, which with the "
                            f"{objective.kind} objective is the model that forgot least; turn it off")
    retain = objective.retain_ids
    trained, held_out = validation.split(labels, cfg.validation_share, seed, among=held_out_from)
    if cfg.select_best and not held_out:
        raise WhoharryError(f"{desc}: select_best needs validation_share > 0")
    acc = make_accelerator(cfg, stage_dir)
    if cfg.log_with:
        acc.init_trackers(stage_dir.name, config=_flat(cfg))
    processes, rank = acc.num_processes, acc.process_index
    samples = len(trained)
    steps = total_steps(samples, cfg, processes)
    measured = validation.measured_steps(samples, steps, cfg, processes) if held_out else set()
    best = checkpoints.BestWeights(stage_dir / "checkpoints") if cfg.select_best else None
    labelled = (labels[:, 1:] != IGNORE).sum(dim=1)  # tokens each block contributes to the loss
    model = prepare_model(model, cfg)
    by_torch = distributed.torch_fsdp()  # accelerate dropped the FSDP asked for: torch's own (core.fsdp)
    if by_torch:
        fsdp.shard(model, models.autocast_dtype(cfg.precision, acc.device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    # the scheduler is stepped here once per optimizer step, so accelerate is not given it
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * steps), steps)
    if acc.state.deepspeed_plugin is not None:  # no data loader to read the batch size from
        acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    # a model torch shards is not given to accelerate, which would wrap it in DDP as well
    wrapped, optimizer = (model, acc.prepare(optimizer)) if by_torch else acc.prepare(model, optimizer)
    shards = (wrapped, optimizer) if by_torch else None  # what torch's own FSDP checkpoints
    start = checkpoints.resume(stage_dir / "checkpoints", run_key, acc, scheduler, best, shards)
    metrics_path = stage_dir / "metrics.jsonl"
    if start:
        log.info("%s: resuming from checkpoint step-%d", desc, start)
        if acc.is_main_process:
            artifacts.truncate_metrics(metrics_path, "step", start)
    else:
        torch.manual_seed(seed)
    metrics = artifacts.MetricsLog(metrics_path, append=start > 0) if acc.is_main_process else None
    wrapped.train()
    losses: list[float] = []
    tokens, val_loss = 0, math.nan
    began = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not (progress and acc.is_main_process))
    for step in range(start, steps):
        micro_batches = [[trained[i] for i in batch] for batch in sample_order(samples, step, cfg, seed, processes)]
        step_units = max(1, objective.units(labelled, [i for batch in micro_batches for i in batch]))
        if retain is not None:
            retain_batches = sample_order(retain.shape[0], step, cfg, seed + 1, processes)
            retain_tokens = max(1, int(sum(retain[batch].numel() - len(batch) for batch in retain_batches)))
        step_loss = torch.zeros((), device=acc.device)
        for index, batch in enumerate(micro_batches):
            mine = batch[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
            ids = input_ids[mine].long().to(acc.device)
            targets = labels[mine].long().to(acc.device)
            with acc.accumulate(wrapped):
                logits = wrapped(input_ids=ids).logits
                # this process's share of the step's mean: processes average their gradients and
                # accelerate divides by grad_accum, so both are multiplied back in
                loss = objective.forget_loss(logits, targets, mine) / step_units
                if retain is not None:
                    kept = retain_batches[index][rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
                    kept_ids = retain[kept].long().to(acc.device)
                    kept_loss = causal_lm_loss(wrapped(input_ids=kept_ids).logits, kept_ids, reduction="sum")
                    loss = loss + objective.retain_weight * kept_loss / retain_tokens
                acc.backward(loss * processes * cfg.grad_accum)
                if acc.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach()
            tokens += int(ids.numel()) * processes
        scheduler.step()
        value = float(acc.reduce(step_loss, reduction="sum")) if processes > 1 else float(step_loss)
        if not math.isfinite(value):
            raise WhoharryError(
                f"{desc}: the loss became {value} at step {step + 1}; lower the learning rate "
                "or use precision fp32 (the last checkpoint is kept)"
            )
        losses.append(value)
        done, held = step + 1, {}
        if done in measured:
            val_loss = validation.validation_loss(wrapped, acc, input_ids, labels, held_out, cfg.batch_size)
            held = {"val_loss": round(val_loss, 6), "val_perplexity": validation.perplexity(val_loss)}
            if best is not None and best.offer(done, val_loss, acc, wrapped):
                held["best"] = True
            wrapped.train()
        if metrics is not None:
            metrics.log(step=done, loss=round(value, 6), lr=scheduler.get_last_lr()[0],
                        seconds=round(time.perf_counter() - began, 3), **held)
        if cfg.log_with:  # the trackers log from the main process only
            acc.log({"loss": value, "lr": scheduler.get_last_lr()[0],
                     **{k: v for k, v in held.items() if k != "best"}}, step=done)
        bar.set_postfix(loss=f"{value:.3f}")
        bar.update(1)
        if on_step is not None:
            on_step(done)
            wrapped.train()
        if cfg.save_every and done % cfg.save_every == 0 and done < steps:
            checkpoints.save(stage_dir / "checkpoints", done, run_key, acc, scheduler, cfg.keep_checkpoints, best,
                             shards)
    bar.close()
    if cfg.log_with:
        acc.end_training()
    wrapped.eval()
    chosen = best is not None and best.step is not None and best.step != steps  # the last step's are in place
    best_state = best.load_into(acc, wrapped) if chosen else None
    if best is not None and best.step is not None:
        log.info("%s: ends with the weights of step %d, validation loss %.4f", desc, best.step, best.loss)
    if final is not None:
        save_final(acc, wrapped, final[1], final[0], cfg.save_dtype, best_state, chosen, wise_ft, desc)
    unwrapped = acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
    if cfg.gradient_checkpointing:
        _checkpointing(unwrapped, False)
    dtype = models.autocast_dtype(cfg.precision, acc.device)
    return TrainResult(
        steps=steps,
        resumed_from=start,
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / len(losses) if losses else float("nan"),
        tokens=tokens,
        seconds=time.perf_counter() - began,
        precision=str(dtype).removeprefix("torch.") if dtype else "fp32",
        processes=processes,
        validation_blocks=len(held_out),
        val_loss=val_loss,
        best_step=None if best is None else best.step,
        best_val_loss=math.nan if best is None or best.step is None else best.loss,
    )


def _flat(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings as trackers take them: numbers, strings and booleans, lists joined."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in to_dict(cfg).items()
            if v is not None}


def summary(result: TrainResult) -> dict[str, float | int | str]:
    """A `TrainResult` for a manifest: losses rounded to 6 decimals, `train_seconds` to 0.01 s."""
    return {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": round(result.final_loss, 6),
        "mean_loss": round(result.mean_loss, 6),
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 2),
        "precision": result.precision,
        "processes": result.processes,
        **({"validation_blocks": result.validation_blocks, "val_loss": round(result.val_loss, 6),
            "val_perplexity": validation.perplexity(result.val_loss)} if result.validation_blocks else {}),
        **({"best_step": result.best_step, "best_val_loss": round(result.best_val_loss, 6)}
           if result.best_step is not None else {}),
    }
