"""The unlearn stage (Eldan & Russinovich 2023, section 2.3): fine-tune the base model on the original text
with the generic labels (or, with `labels.targets: soft`, towards the generic distributions: Liu et al.
2024, WHP+).

`forget.method` picks how: `whp` (the generic labels, this project's method), or one of the baselines
it is measured against, which need no labels: `ga`, gradient ascent on the target's own tokens, and
`npo`, negative preference optimisation against the base model as the frozen reference (Zhang et al.
2024). Both take `data.retain` as a retain term in the loss; whp mixes the retain blocks into its data,
labelled with their own tokens, the base model's distribution or both (`forget.retain_labels`). With
`forget.wise_ft` below 1, any method's trained weights are then mixed with the base's (WiSE-FT; `train.train`
mixes them before writing `final/`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from whoharry.config import Config, Precision, fingerprint, model_key, to_dict, train_key
from whoharry.core import artifacts, distributed, models, train
from whoharry.core.text import make_blocks, read_target, target_hash
from whoharry.errors import WhoharryError
from whoharry.evaluation import card
from whoharry.method.objectives import Objective, block_log_probs
from whoharry.method.whp import top_k_targets
from whoharry.stages import labels
from whoharry.stages.common import Outcome, require, run_stage
from whoharry.stages.shards import SoftTargets, load_labels

log = logging.getLogger(__name__)

NAME = "unlearn"


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of what the unlearned model depends on: seed, model, training, retain texts, and
    the labels' key and the retain blocks' targets (whp) or the forget settings and target (the baselines),
    and the WiSE-FT coefficient when below 1.

    Raises:
        OSError: a retain text, or a baseline's target, cannot be read (files are hashed here).
    """
    if cfg.forget.method == "whp":
        inputs = {"labels": labels.key(cfg, out)}
        if cfg.data.retain and cfg.forget.retain_labels != "text":  # keys of the earlier runs stay as they were
            # the base targets keep labels.top_k tokens, which the labels' key holds for soft labels only
            inputs["retain_labels"] = {"how": cfg.forget.retain_labels, "top_k": cfg.labels.top_k}
    else:
        forget = {name: value for name, value in to_dict(cfg.forget).items()
                  if name not in ("retain_labels", "wise_ft")}
        inputs = {"forget": forget, "target": target_hash(cfg.data)}
    if cfg.forget.wise_ft != 1:  # keys of the earlier runs stay as they were
        inputs["wise_ft"] = cfg.forget.wise_ft
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=False),
            "train": train_key(cfg.unlearn),
            "retain": [target_hash(cfg.data, path) for path in cfg.data.retain],
            "block_length": cfg.data.block_length,
            **inputs,
        }
    )


def preflight(cfg: Config) -> list[str]:
    """The retain texts, read before any training so that a bad path fails at once, and the settings the
    forget method cannot take.

    Raises:
        WhoharryError: `unlearn.select_best` with ga or npo, `forget.retain_labels` other than `text` where
            there are no whp retain blocks to label (ga, npo, or no `data.retain`), or a retain text is
            missing, empty, binary or not UTF-8.
    """
    if cfg.forget.retain_labels != "text" and (cfg.forget.method != "whp" or not cfg.data.retain):
        why = f"forget.method {cfg.forget.method} adds its own retain term" if cfg.forget.method != "whp" else (
            "data.retain is empty")
        raise WhoharryError(f"forget.retain_labels={cfg.forget.retain_labels} labels the retain blocks that whp mixes "
                            f"into its data, and {why}; leave it at text")
    if cfg.unlearn.select_best and cfg.forget.method != "whp":
        raise WhoharryError(
            f"unlearn.select_best keeps the weights of lowest held-out cross-entropy, which with forget.method "
            f"{cfg.forget.method} is the model that forgot least; set unlearn.select_best=false"
        )
    return [read_target(cfg.data, path, "retain text") for path in cfg.data.retain]


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/unlearn/`: `final/` (a save_pretrained folder), metrics.jsonl, config.yaml and
    manifest.json, unless complete. With `whp` it reads `out/labels/` (run first when missing or stale).
    Resumes from `checkpoints/` after an interruption.

    Raises:
        WhoharryError: select_best with ga or npo, or an unreadable retain text (both checked first), as
            the labels stage raises it (whp), an unreadable or too short target (the baselines), an unknown
            model or one without a fast tokenizer, blocks beyond its context, an unknown forget method, fp16
            on a CPU, LoRA with sharded weights, a held-out share leaving no block to train on, or a loss
            that became NaN or infinite.
        OSError: as `key` raises it (a baseline's target file missing).
    """
    retain_texts = preflight(cfg)
    method = cfg.forget.method
    labels_dir = require(labels, cfg, out, progress=progress) if method == "whp" else None
    stage_dir = out / NAME
    stage_key = key(cfg, out)
    # the checkpoints hold the training, which the mixing coefficient does not change
    trained = replace(cfg, forget=replace(cfg.forget, wise_ft=1.0))
    training_key = stage_key if cfg.forget.wise_ft == 1 else key(trained, out)

    def body() -> Outcome:
        source = models.resolve(cfg.model)
        tokenizer = models.load_tokenizer(source, cfg.model)
        model = models.load_model(source, cfg.model)
        models.check_context(model, cfg.data.block_length)
        soft = None
        if labels_dir is not None:
            label_set = load_labels(labels_dir)
            input_ids, targets, soft = label_set.input_ids, label_set.labels, label_set.soft
            log.info("unlearn: %d blocks with generic %s from %s", input_ids.shape[0],
                     "labels" if soft is None else "soft targets", labels_dir)
        else:
            blocks = make_blocks(read_target(cfg.data), tokenizer, cfg.data.block_length)
            input_ids = targets = torch.tensor(blocks.ids, dtype=torch.int32)
            log.info("unlearn (%s): %d target blocks", method, input_ids.shape[0])
        forget_blocks = input_ids.shape[0]  # the only ones held out (`validation_share`)
        retain_parts = []
        for path, text in zip(cfg.data.retain, retain_texts, strict=True):
            retain = make_blocks(text, tokenizer, input_ids.shape[1])
            retain_parts.append(torch.tensor(retain.ids, dtype=torch.int32))
            log.info("unlearn: %d retain blocks from %s", len(retain.ids), path)
        retain_ids = torch.cat(retain_parts) if retain_parts else None
        objective = None
        if method == "whp" and retain_ids is not None:  # retain blocks join the data, with their own targets
            input_ids, targets, soft = with_retain(cfg, model, input_ids, targets, soft, retain_ids,
                                                   progress and distributed.is_main())
        if soft is not None:
            objective = Objective(kind="soft", target_ids=soft.ids, target_probs=soft.probs)
        elif method != "whp":
            reference = None
            if method == "npo":
                reference = reference_log_probs(model, input_ids, cfg.unlearn.batch_size, cfg.unlearn.precision,
                                                progress and distributed.is_main())
            objective = Objective(kind=method, beta=cfg.forget.npo_beta, reference=reference,
                                  retain_ids=retain_ids, retain_weight=cfg.forget.retain_weight)
        result = train.train(
            model, input_ids, targets, cfg.unlearn,
            seed=cfg.seed, stage_dir=stage_dir, run_key=training_key, desc=f"unlearn ({method})", progress=progress,
            final=(stage_dir / "final", tokenizer), objective=objective, held_out_from=forget_blocks,
            wise_ft=None if cfg.forget.wise_ft == 1 else (cfg.forget.wise_ft, lambda: base_weights(cfg, source)),
        )
        return Outcome(
            inputs={
                "model": source.description,
                "method": method,
                "labels": artifacts.stage_fingerprint(labels_dir) if labels_dir is not None else None,
                "retain": ", ".join(str(path) for path in cfg.data.retain) or None,
            },
            outputs=["final/config.json", "metrics.jsonl"],
            summary={"method": method, "retain_blocks": 0 if retain_ids is None else int(retain_ids.shape[0]),
                     **({"targets": cfg.labels.targets} if method == "whp" else {}),
                     **({"retain_labels": cfg.forget.retain_labels} if method == "whp" and retain_ids is not None
                        else {}),
                     **({"wise_ft": cfg.forget.wise_ft} if cfg.forget.wise_ft != 1 else {}),
                     **train.summary(result)},
        )

    done = run_stage(NAME, cfg, stage_dir, stage_key, body)
    if distributed.is_main():  # the card, and the provenance a copy of final/ keeps
        card.write_card(done / "final", cfg, out)
    return done


def base_weights(cfg: Config, source: models.ModelSource) -> dict[str, torch.Tensor]:
    """The base model's state dict, fp32 on the CPU (4 bytes a parameter: 28 GB for a 7B model), for
    `forget.wise_ft`: what training started from."""
    log.info("unlearn: loading the base model again to mix with (forget.wise_ft %g)", cfg.forget.wise_ft)
    return models.load_model(source, cfg.model, device=torch.device("cpu")).state_dict()


def with_retain(cfg: Config, model: PreTrainedModel, input_ids: torch.Tensor, targets: torch.Tensor,
                soft: SoftTargets | None, retain_ids: torch.Tensor, progress: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, SoftTargets | None]:
    """whp's data with the retain blocks appended, labelled as `forget.retain_labels` says: `text`, their own
    tokens (one-hot soft targets beside soft generic ones); `base`, the base model's distribution
    (`base_targets`); `both`, each retain block twice, once each way. Hard generic labels become one-hot soft
    targets whenever a retain block has a distribution for its target.

    Args:
        model: the base model, before training (read for `base` and `both`).
        input_ids, targets: [blocks, length] int32, the target's blocks and their generic labels.
        soft: their soft targets [blocks, length, k], or None (hard labels).
        retain_ids: [retain blocks, length] int32.

    Returns:
        (input_ids, targets, soft) over the target's blocks followed by the retain blocks.
    """
    how = cfg.forget.retain_labels
    log.info("unlearn: the retain blocks fit %s", card.RETAIN_LABELS[how])
    if how == "text" and soft is None:  # hard labels stay hard: the retain tokens label themselves
        return torch.cat([input_ids, retain_ids]), torch.cat([targets, retain_ids]), None
    k = cfg.labels.top_k if soft is None else soft.ids.shape[-1]
    soft = soft if soft is not None else SoftTargets.from_labels(targets, k)
    ways = [SoftTargets.one_hot(retain_ids, k)] if how != "base" else []  # one copy of the blocks per way
    if how != "text":
        ways.append(base_targets(model, retain_ids, k, cfg.unlearn.batch_size, cfg.unlearn.precision, progress))
    copies = [retain_ids] * len(ways)
    return (torch.cat([input_ids, *copies]), torch.cat([targets, *copies]),
            SoftTargets(torch.cat([soft.ids, *(way.ids for way in ways)]),
                        torch.cat([soft.probs, *(way.probs for way in ways)])))


@torch.no_grad()
def reference_log_probs(model: PreTrainedModel, input_ids: torch.Tensor, batch_size: int,
                        precision: Precision, progress: bool = False) -> torch.Tensor:
    """NPO's reference (Zhang et al. 2024): each block's summed log-probability of its tokens after the
    first, under the model before any update. The model is moved to this process's device and left in
    training mode.

    Args:
        model: the base model, before training.
        input_ids: [blocks, length] int token ids.
        batch_size: blocks per forward pass; precision: the autocast setting; progress: show a bar.

    Returns:
        [blocks] float32 on the CPU, in nats.
    """
    sums = [block_log_probs(logits, ids).cpu()
            for ids, logits in _forward(model, input_ids, batch_size, precision, "unlearn: NPO reference", progress)]
    return torch.cat(sums)


@torch.no_grad()
def base_targets(model: PreTrainedModel, input_ids: torch.Tensor, k: int, batch_size: int,
                 precision: Precision, progress: bool = False) -> SoftTargets:
    """The retain blocks' targets under `forget.retain_labels: base`: the model's own next-token distribution
    before any update, kept as its top k (`method.whp.top_k_targets`), so that fitting them is a KL to the
    base model on general text (the retain regulariser of Maini et al. 2024, TOFU, section 4). The model is
    moved to this process's device and left in training mode.

    Args:
        model: the base model, before training.
        input_ids: [blocks, length] int token ids.
        k: tokens kept per position; batch_size, precision, progress: as `reference_log_probs`.

    Returns:
        SoftTargets [blocks, length, k] in the labels' convention: position t holds the distribution predicted
        at t - 1, position 0 none (probabilities 0).
    """
    out = SoftTargets.empty(input_ids.shape[0], input_ids.shape[1], k)
    start = 0
    for ids, logits in _forward(model, input_ids, batch_size, precision, "unlearn: base targets", progress):
        rows = torch.softmax(logits[:, :-1].float(), dim=-1)
        top_ids, top_probs = top_k_targets(rows.reshape(-1, rows.shape[-1]), k)
        shape = (ids.shape[0], ids.shape[1] - 1, top_ids.shape[-1])
        out.ids[start : start + ids.shape[0], 1:, : shape[-1]] = top_ids.reshape(shape).cpu()
        out.probs[start : start + ids.shape[0], 1:, : shape[-1]] = top_probs.reshape(shape).cpu()
        start += ids.shape[0]
    return out


def _forward(model: PreTrainedModel, input_ids: torch.Tensor, batch_size: int, precision: Precision, desc: str,
             progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [b, length] int64, logits [b, length, vocab]) for each batch of `input_ids` under the model in
    eval mode on this process's device, under autocast; the model is left in training mode."""
    device = distributed.device()
    model.to(device).eval()
    for start in tqdm(range(0, input_ids.shape[0], batch_size), desc=desc, unit="batch", leave=False,
                      disable=not progress):
        ids = input_ids[start : start + batch_size].long().to(device)
        with models.autocast(precision, device):
            logits = model(input_ids=ids).logits
        yield ids, logits
    model.train()
