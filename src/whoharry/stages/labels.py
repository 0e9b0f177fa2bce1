"""The labels stage (Eldan & Russinovich 2023, sections 2.2–2.3): generic next-token labels from the base and
reinforced models.

For each block, the base model reads the translated block (`anchors.translate`) and the reinforced
model the original one; at every aligned position the label is `method.whp.generic_labels`:

    argmax( v_base(translated) - alpha * relu( v_reinforced(original) - v_base(translated) ) )

on raw logits, after the authors' suppression of translations already seen. Labels follow the
transformers convention: `labels[b, t]` is the token the model should produce at position t (predicted
from position t - 1), -100 where there is no label. The argmax is kept (and, for soft targets, the top k
of the distribution averaged over several translations, Liu et al. 2024); full-vocabulary logits live
for one batch at a time. What is kept on disk, and how processes merge, is `stages.shards`.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from whoharry.anchors.dictionary import Anchors, load_anchors
from whoharry.anchors.translate import translate_block
from whoharry.config import (
    Config,
    InsideAnchors,
    LabelTargets,
    MatchOrder,
    Precision,
    fingerprint,
    model_key,
    to_dict,
    without_later_defaults,
)
from whoharry.core import artifacts, distributed, models
from whoharry.core.text import Blocks, make_blocks, pad, read_target, target_hash
from whoharry.method.objectives import IGNORE
from whoharry.method.whp import fp32_output_layer
from whoharry.stages import augment, reinforce
from whoharry.stages.block_labels import Average, block_labels, count_unaligned
from whoharry.stages.common import Outcome, require, run_stage
from whoharry.stages.shards import (
    DATASET_DIR,
    LABELS_FILE,
    LabelSet,
    Partial,
    Shard,
    SoftTargets,
    batches_of,
    finish,
    rank_file,
    read_rank,
    save_labels,
    save_shard,
)

log = logging.getLogger(__name__)

NAME = "labels"
__all__ = ["LABELS_FILE", "NAME", "block_rng", "compute_labels", "key", "label_shard", "run"]


def block_rng(seed: int, block: int, translation: int = 0) -> random.Random:
    """The random source for one translation's anchor choices in one block: the same whatever order blocks
    run in; translation 0 is the one a single-translation run makes."""
    return random.Random(f"whoharry-{seed}-{block}" + (f"-{translation}" if translation else ""))


@torch.no_grad()
def compute_labels(
    base: PreTrainedModel,
    reinforced: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    blocks: Blocks,
    anchors: Anchors,
    *,
    alpha: float,
    seed: int,
    batch_size: int = 4,
    precision: Precision = "auto",
    match_order: MatchOrder = "longest",
    inside_anchors: InsideAnchors = "mask",
    translations: int = 1,
    targets: LabelTargets = "hard",
    top_k: int = 16,
    progress: bool = True,
) -> LabelSet:
    """Translate every block, run both models, and keep only the label ids (one process, no saving).

    The label at each aligned position is `method.whp.generic_labels` (Eldan & Russinovich 2023, section 2.3,
    argmax taken), after the authors' suppression of translations already seen in the block.

    Args:
        base: reads the translated blocks; reinforced: reads the original ones.
        tokenizer: the models' fast tokenizer (with a pad token); blocks: from `core.text.make_blocks`.
        anchors: the dictionary (composite keys already removed by the caller, if wanted).
        alpha: see `method.whp.whp_logits`; seed: fixes each block's translation choices.
        batch_size: blocks per forward pass; precision: the models' autocast setting (the output layer and
            the formula run in fp32 whatever it is: `method.whp.fp32_output_layer`).
        match_order: which key wins an overlap (`Anchors.pattern`).
        inside_anchors: the labels of predictions from inside an anchor (`anchors.translate.translate_block`).
        translations: translations of each block, each with its own anchor choices (`block_rng`); the
            base model reads each, and a position's generic distributions (`method.whp.generic_distribution`)
            are averaged over the translations that align it (Liu et al. 2024, WHP+). With 1 translation and
            hard targets the label is `generic_labels` itself, the paper's; otherwise the mode of the
            average (with one translation the same token but for exact ties).
        targets: `soft` also keeps the averaged distribution as its `top_k` tokens (`method.whp.top_k_targets`).
        progress: a progress bar.

    Returns:
        A `LabelSet`: input_ids and labels, [blocks, block_length] int32, the soft targets (`soft`), and
        their statistics.
    """
    shard = label_shard(base, reinforced, tokenizer, blocks, anchors, batches_of(len(blocks.ids), batch_size),
                        alpha=alpha, seed=seed, precision=precision, match_order=match_order,
                        inside_anchors=inside_anchors, translations=translations, targets=targets, top_k=top_k,
                        progress=progress)
    return finish(blocks, anchors, [shard], alpha)


@torch.no_grad()
def label_shard(
    base: PreTrainedModel,
    reinforced: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    blocks: Blocks,
    anchors: Anchors,
    batches: list[list[int]],
    *,
    alpha: float,
    seed: int,
    precision: Precision = "auto",
    match_order: MatchOrder = "longest",
    inside_anchors: InsideAnchors = "mask",
    translations: int = 1,
    targets: LabelTargets = "hard",
    top_k: int = 16,
    progress: bool = True,
    metrics: artifacts.MetricsLog | None = None,
    partial: Partial | None = None,
    resume: tuple[int, Shard] | None = None,
) -> Shard:
    """Label the blocks of `batches`. With `partial`, the labels made so far are saved every few
    batches; `resume` (what `Partial.load` read) continues after them. Translation choices depend on
    the seed and the block alone, so any split of the batches gives the same labels.

    Args:
        base, reinforced, tokenizer, blocks, anchors, alpha, seed, precision, match_order, inside_anchors,
            translations, targets, top_k, progress: as in `compute_labels`.
        batches: the block indices to label, in batches (see `stages.shards.batches_of`).
        metrics: a log that gets one record per batch (running counts of labelled and changed positions,
            seconds).
        partial: where to save progress every `partial.every` batches.
        resume: (batches done, shard so far), from `Partial.load`.

    Returns:
        A `Shard`: labels [blocks, block_length] int32 (-100 in the rows of blocks not in `batches`, and at
        positions without a label), the soft targets of the same rows (`soft`), the anchor occurrences found
        and the positions left unaligned (both of the first translation).
    """
    pattern = anchors.pattern(match_order)
    device = next(base.parameters()).device
    base.eval()
    reinforced.eval()
    all_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    shard = Shard(torch.full_like(all_ids, IGNORE), Counter(), 0,
                  SoftTargets.empty(*all_ids.shape, top_k) if targets == "soft" else None)
    first = 0
    if resume is not None:
        first, shard = resume
        log.info("labels: resuming after batch %d of %d", first, len(batches))
    done_blocks = [b for batch in batches[:first] for b in batch]
    done = shard.labels[done_blocks] != IGNORE
    labelled_so_far = int(done.sum())
    changed_so_far = int((done & (shard.labels[done_blocks] != all_ids[done_blocks])).sum())
    bar = tqdm(total=sum(map(len, batches)), initial=len(done_blocks), desc="labels", unit="block",
               disable=not progress)
    began = time.perf_counter()
    with fp32_output_layer(reinforced, base):  # the logits the formula compares, in fp32
        for number in range(first, len(batches)):
            indices = batches[number]
            versions = [  # versions[n][row]: the n-th translation of each block of the batch
                [translate_block(blocks.text, blocks.ids[b], blocks.offsets[b], anchors, pattern, tokenizer,
                                 block_rng(seed, b, n), blocks.bos_token_id, inside_anchors) for b in indices]
                for n in range(translations)
            ]
            original = all_ids[indices].long().to(device)
            with models.autocast(precision, device):
                reinforced_logits = reinforced(input_ids=original).logits
            for translation in versions[0]:
                shard.found.update(occ.key for occ in translation.occurrences)
                shard.unaligned += count_unaligned(translation)
            averages = None if translations == 1 and targets == "hard" else [Average() for _ in indices]
            for version in versions:  # one translation's logits in memory at a time
                translated, mask = pad([t.ids for t in version], tokenizer.pad_token_id)
                with models.autocast(precision, device):
                    base_logits = base(input_ids=translated.to(device), attention_mask=mask.to(device)).logits
                for row, b in enumerate(indices):
                    if averages is None:  # the paper's: one translation, its argmax
                        shard.labels[b] = block_labels(version[row], base_logits[row], reinforced_logits[row], alpha)
                    else:
                        averages[row].add(version[row], base_logits[row], reinforced_logits[row], alpha)
                del base_logits
            for row, b in enumerate(indices if averages is not None else []):
                shard.labels[b], soft_ids, soft_probs = averages[row].finish(top_k if targets == "soft" else 0)
                if shard.soft is not None:
                    shard.soft.ids[b], shard.soft.probs[b] = soft_ids, soft_probs
            bar.update(len(indices))
            if metrics is not None:
                batch_labels = shard.labels[indices]
                batch_labelled = batch_labels != IGNORE
                labelled_so_far += int(batch_labelled.sum())
                changed_so_far += int((batch_labelled & (batch_labels != all_ids[indices])).sum())
                metrics.log(
                    batches=number + 1,
                    blocks=sum(map(len, batches[: number + 1])),
                    positions_labelled=labelled_so_far,
                    positions_changed=changed_so_far,
                    seconds=round(time.perf_counter() - began, 3),
                )
            so_far = number + 1  # batches labelled
            if partial is not None and partial.every and so_far % partial.every == 0 and so_far < len(batches):
                partial.save(so_far, shard)
    bar.close()
    return shard


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of what the labels depend on: seed, model, blocks, label settings, target, anchor
    dictionary, and the reinforced model's own key."""
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=True),
            "block_length": cfg.data.block_length,
            "labels": _label_settings(cfg),
            "target": target_hash(cfg.data),
            "anchors": artifacts.file_hash(cfg.data.anchors) if cfg.data.anchors.is_file() else "missing",
            "reinforced": reinforce.key(cfg, out),  # what the reinforced model must have been made with
            **({"augment": augment.key(cfg, out)} if augment.enabled(cfg) else {}),
        }
    )


# Settings whose value at their default leaves them out of the key: labels made before they existed keep theirs.
_LATER_DEFAULTS = {"translations": 1, "targets": "hard"}


def _label_settings(cfg: Config) -> dict:
    """The labels section as it enters the key: not how often progress is saved, nor top_k for hard labels,
    nor the later settings at their defaults."""
    settings = to_dict(cfg.labels)
    settings.pop("save_every")
    if cfg.labels.targets != "soft":
        settings.pop("top_k")
    return without_later_defaults(settings, _LATER_DEFAULTS)


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/labels/`: labels.safetensors, dataset/ (the same labels for `datasets.load_from_disk`),
    stats.json, metrics.jsonl, config.yaml and manifest.json, unless complete. Reads `out/reinforce/` (run
    first when missing or stale). Saves its progress every `labels.save_every` batches, and a rerun resumes
    from it. Under `accelerate launch` each process
    labels every N-th batch and the main process merges the shards in block order.

    Raises:
        WhoharryError: as the reinforce stage raises it (when it runs first), an unreadable target or
            anchor dictionary, an unknown model or one without a fast tokenizer, a target shorter than one
            block, blocks beyond the model's context, a device map under several processes, no reinforced
            model, or a process that left no shard.
    """
    reinforce_dir = require(reinforce, cfg, out, progress=progress)
    augment_dir = require(augment, cfg, out, progress=progress) if augment.enabled(cfg) else None
    stage_dir = out / NAME
    stage_key = key(cfg, out)
    processes, rank, main = distributed.world(), distributed.rank(), distributed.is_main()
    suffix = "" if processes == 1 else f"-{rank}-of-{processes}"
    partial = Partial(stage_dir / f"partial{suffix}.safetensors", stage_key, cfg.labels.save_every)

    def body() -> Outcome | None:
        text = read_target(cfg.data)
        if augment_dir is not None:  # the generated passages follow the target, labelled the same way
            text = text.rstrip() + "\n\n" + augment.generated_text(augment_dir)
        anchors = load_anchors(cfg.data.anchors)
        composite = anchors.composite_keys()
        if composite:
            # as in the authors' label script: a splittable key is left to its parts
            log.info("labels: %d composite keys left to their parts: %s", len(composite),
                     ", ".join(composite[:10]))
            anchors = anchors.without(composite)
        source = models.resolve(cfg.model)
        tokenizer = models.load_tokenizer(source, cfg.model)
        blocks = make_blocks(text, tokenizer, cfg.data.block_length)
        base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)  # no autocast cache
        models.check_context(base, cfg.data.block_length)
        reinforced = models.load_folder(reinforce_dir / "final", next(base.parameters()).device, cfg.model)
        reinforced.requires_grad_(False)
        mine = batches_of(len(blocks.ids), cfg.labels.batch_size)[rank::processes]
        saved = partial.load()
        metrics_path = stage_dir / "metrics.jsonl"  # the main process's batches
        if saved is not None and main:
            artifacts.truncate_metrics(metrics_path, "batches", saved[0])
        shard = label_shard(
            base, reinforced, tokenizer, blocks, anchors, mine,
            alpha=cfg.labels.alpha, seed=cfg.seed, precision=cfg.labels.precision,
            match_order=cfg.labels.match_order, inside_anchors=cfg.labels.inside_anchors,
            translations=cfg.labels.translations, targets=cfg.labels.targets, top_k=cfg.labels.top_k,
            progress=progress and main,
            metrics=artifacts.MetricsLog(metrics_path, append=saved is not None) if main else None,
            partial=partial, resume=saved,
        )
        del base, reinforced
        shards_dir = stage_dir / "shards"
        if processes > 1:
            save_shard(rank_file(shards_dir, rank, processes), shard, {"key": stage_key})
            distributed.barrier()
        outcome = None
        if main:
            shards = [shard] if processes == 1 else [read_rank(shards_dir, r, processes, stage_key)
                                                     for r in range(processes)]
            label_set = finish(blocks, anchors, shards, cfg.labels.alpha)
            outcome = _save(cfg, stage_dir, label_set, composite, len(anchors), source.description, reinforce_dir)
            shutil.rmtree(shards_dir, ignore_errors=True)
        return outcome

    run_stage(NAME, cfg, stage_dir, stage_key, body)
    partial.clear()  # only once the manifest says the labels are complete
    return stage_dir


def _save(cfg: Config, stage_dir: Path, label_set: LabelSet, composite: list[str], keys: int, model: str,
          reinforce_dir: Path) -> Outcome:
    """Write labels.safetensors and stats.json (main process); return what the manifest says of them."""
    label_set.stats["composite_keys_split"] = composite
    stats = label_set.stats
    # a dictionary most of whose keys never occur is about another text (the demo's applied to a new target)
    stats["anchor_keys_found_share"] = round(stats["anchor_keys_found"] / keys, 4) if keys else 0.0
    stats["dictionary_mismatch"] = stats["anchor_keys_found"] < keys / 2
    if stats["dictionary_mismatch"]:
        log.warning("labels: only %d of the %d keys of %s occur in the target %s: the dictionary is about another "
                    "text, and few positions get a generic label", stats["anchor_keys_found"], keys,
                    cfg.data.anchors, cfg.data.target)
    elif stats["anchor_keys_missing"]:
        log.warning("labels: %d of %d anchor keys never occur in the target text", stats["anchor_keys_missing"], keys)
    save_labels(stage_dir, label_set)
    log.info(
        "labels: %d blocks, %d positions labelled, %d differ from the text, %d anchor occurrences",
        stats["blocks"], stats["positions_labelled"], stats["positions_changed"], stats["anchor_occurrences"],
    )
    return Outcome(
        inputs={"target": str(cfg.data.target), "anchors": str(cfg.data.anchors), "model": model,
                "reinforced": artifacts.stage_fingerprint(reinforce_dir)},
        outputs=[LABELS_FILE, DATASET_DIR, "stats.json", "metrics.jsonl"],
        summary={**{k: v for k, v in stats.items() if k not in ("occurrences_per_key", "composite_keys_split")},
                 "processes": distributed.world()},
    )
