"""The labels stage: generic next-token labels from the base and reinforced models.

For each block, the base model reads the translated block and the reinforced model the original one;
at every aligned position the label is

    argmax( v_base(translated) - alpha * relu( v_reinforced(original) - v_base(translated) ) )

on raw logits. Labels follow the transformers convention: `labels[b, t]` is the token the model should
produce at position t (predicted from position t - 1), -100 where there is no label. Only the argmax is
kept; full-vocabulary logits live for one batch at a time.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from whoharry import artifacts, distributed, models
from whoharry.anchors import Anchors, load_anchors
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.errors import WhoharryError
from whoharry.text import Blocks, make_blocks, pad, read_text
from whoharry.translate import NO_LABEL, BlockTranslation, translate_block

log = logging.getLogger(__name__)

IGNORE = -100
LABELS_FILE = "labels.safetensors"


@dataclass
class LabelSet:
    """Original token blocks and their generic labels, both [blocks, block_length] int32."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, Any]


def generic_labels(
    base_logits: torch.Tensor,
    reinforced_logits: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """The label formula on raw logits, row by row: [n, vocab] x2 -> [n] token ids."""
    base = base_logits.float()
    offset = torch.relu(reinforced_logits.float() - base)
    return torch.argmax(base - alpha * offset, dim=-1)


def suppress_seen_translations(
    logits: torch.Tensor, positions: torch.Tensor, suppress: list[tuple[int, tuple[int, ...]]]
) -> torch.Tensor:
    """Set a translation's first-token logits to the row mean at translated positions after it appeared.

    `logits` is [n, vocab] for rows at translated `positions` [n]; returns a modified copy."""
    out = logits.clone()
    means = logits.mean(dim=-1)
    for appeared_at, token_ids in suppress:
        rows = torch.nonzero(positions > appeared_at, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        tokens = torch.tensor(token_ids, dtype=torch.long)
        out[rows.unsqueeze(1), tokens.unsqueeze(0)] = means[rows].unsqueeze(1)
    return out


def block_rng(seed: int, block: int) -> random.Random:
    """The random source for one block's translation choices: the same whatever order blocks run in."""
    return random.Random(f"whoharry-{seed}-{block}")


@dataclass
class Shard:
    """One process's labels: rows of the blocks it did (the others -100), anchor counts, unaligned positions."""

    labels: torch.Tensor
    found: Counter[str]
    unaligned: int


def batches_of(count: int, batch_size: int) -> list[list[int]]:
    """Block indices in batches, in order; process r of N takes batches r, r + N, r + 2N, ..."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


@dataclass
class Partial:
    """One process's labels made so far, saved every `every` batches to `path` under the stage's key."""

    path: Path
    key: str
    every: int

    def save(self, batches_done: int, shard: Shard) -> None:
        _save_shard(self.path, shard, {"key": self.key, "batches_done": str(batches_done)})

    def load(self) -> tuple[int, Shard] | None:
        """(batches done, the shard so far), or None when there is no progress saved under this key."""
        loaded = _load_shard(self.path, self.key)
        return None if loaded is None else (int(loaded[1]["batches_done"]), loaded[0])

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _save_shard(path: Path, shard: Shard, meta: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "unaligned": str(shard.unaligned), "found": json.dumps(dict(shard.found))}
    save_file({"labels": shard.labels}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_shard(path: Path, key: str) -> tuple[Shard, dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("key") != key:
                return None
            labels = handle.get_tensor("labels")
        return Shard(labels, Counter(json.loads(meta["found"])), int(meta["unaligned"])), meta
    except (OSError, ValueError, KeyError, SafetensorError):
        log.info("labels: ignoring unreadable file %s", path)
        return None


@torch.no_grad()
def compute_labels(
    base: torch.nn.Module,
    reinforced: torch.nn.Module,
    tokenizer,
    blocks: Blocks,
    anchors: Anchors,
    *,
    alpha: float,
    seed: int,
    batch_size: int = 4,
    precision: str = "auto",
    progress: bool = True,
) -> LabelSet:
    """Translate every block, run both models, and keep only the label ids (one process, no saving)."""
    shard = label_shard(base, reinforced, tokenizer, blocks, anchors, batches_of(len(blocks.ids), batch_size),
                        alpha=alpha, seed=seed, precision=precision, progress=progress)
    return finish(blocks, anchors, [shard], alpha)


@torch.no_grad()
def label_shard(
    base: torch.nn.Module,
    reinforced: torch.nn.Module,
    tokenizer,
    blocks: Blocks,
    anchors: Anchors,
    batches: list[list[int]],
    *,
    alpha: float,
    seed: int,
    precision: str = "auto",
    progress: bool = True,
    metrics: artifacts.MetricsLog | None = None,
    partial: Partial | None = None,
    resume: tuple[int, Shard] | None = None,
) -> Shard:
    """Label the blocks of `batches`. With `partial`, the labels made so far are saved every few
    batches; `resume` (what `Partial.load` read) continues after them. Translation choices depend on
    the seed and the block alone, so any split of the batches gives the same labels."""
    pattern = anchors.pattern()
    device = next(base.parameters()).device
    base.eval()
    reinforced.eval()
    all_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    shard = Shard(torch.full_like(all_ids, IGNORE), Counter(), 0)
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
    for number in range(first, len(batches)):
        indices = batches[number]
        translations = [
            translate_block(
                blocks.text, blocks.ids[b], blocks.offsets[b], anchors, pattern, tokenizer,
                block_rng(seed, b), blocks.bos_token_id,
            )
            for b in indices
        ]
        original = all_ids[indices].long().to(device)
        translated, mask = pad([t.ids for t in translations], tokenizer.pad_token_id)
        translated, mask = translated.to(device), mask.to(device)
        with models.autocast(precision, device):
            reinforced_logits = reinforced(input_ids=original).logits
            base_logits = base(input_ids=translated, attention_mask=mask).logits
        for row, (b, translation) in enumerate(zip(indices, translations, strict=True)):
            shard.found.update(occ.key for occ in translation.occurrences)
            shard.unaligned += _count_unaligned(translation)
            shard.labels[b] = _block_labels(translation, base_logits[row], reinforced_logits[row], alpha)
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
        if partial is not None and partial.every and (number + 1) % partial.every == 0 and number + 1 < len(batches):
            partial.save(number + 1, shard)
    bar.close()
    return shard


def finish(blocks: Blocks, anchors: Anchors, shards: list[Shard], alpha: float) -> LabelSet:
    """Merge the processes' shards (each block's row from the shard that labelled it) and count."""
    all_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    all_labels = torch.full_like(all_ids, IGNORE)
    found: Counter[str] = Counter()
    unaligned = 0
    for shard in shards:
        rows = (shard.labels != IGNORE).any(dim=1)
        all_labels[rows] = shard.labels[rows]
        found.update(shard.found)
        unaligned += shard.unaligned
    labelled = all_labels != IGNORE
    changed = labelled & (all_labels != all_ids)
    stats = {
        "blocks": len(blocks.ids),
        "block_length": all_ids.shape[1],
        "tokens": int(all_ids.numel()),
        "tokens_dropped": blocks.dropped_tokens,
        "positions_labelled": int(labelled.sum()),
        "positions_changed": int(changed.sum()),
        "positions_unaligned": unaligned,
        "alpha": alpha,
        "anchor_occurrences": int(sum(found.values())),
        "anchor_keys_found": len(found),
        "anchor_keys_missing": len(anchors) - len(found),
        "occurrences_per_key": dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    return LabelSet(all_ids, all_labels, stats)


def _block_labels(
    translation: BlockTranslation, base_logits: torch.Tensor, reinforced_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Labels of one block, shifted into the transformers convention."""
    mapping = torch.tensor(translation.mapping)
    valid = torch.nonzero(mapping != NO_LABEL, as_tuple=True)[0]
    length = len(translation.mapping)
    labels = torch.full((length,), IGNORE, dtype=torch.int32)
    if valid.numel() == 0:
        return labels
    positions = mapping[valid]
    generic = suppress_seen_translations(
        base_logits[positions.to(base_logits.device)].float().cpu(), positions, translation.suppress
    )
    predicted = generic_labels(generic, reinforced_logits[valid.to(reinforced_logits.device)].cpu(), alpha)
    # the prediction made at position t is the label of position t + 1
    keep = valid < length - 1
    labels[valid[keep] + 1] = predicted[keep].to(torch.int32)
    return labels


def _count_unaligned(translation: BlockTranslation) -> int:
    """Positions outside anchors that found no translated counterpart (tokenization changed there)."""
    masked = set()
    for occ in translation.occurrences:
        masked.update(range(occ.first, occ.last))
        if occ.repeat and occ.first > 0:
            masked.add(occ.first - 1)
    return sum(1 for t, u in enumerate(translation.mapping) if u == NO_LABEL and t not in masked)


def save_labels(stage_dir: Path, label_set: LabelSet) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f".{LABELS_FILE}.tmp"
    save_file({"input_ids": label_set.input_ids, "labels": label_set.labels}, str(tmp))
    tmp.replace(stage_dir / LABELS_FILE)
    artifacts.write_json(stage_dir / "stats.json", label_set.stats)


def load_labels(stage_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = stage_dir / LABELS_FILE
    if not path.is_file():
        raise WhoharryError(f"no labels in {stage_dir}: run `whoharry labels` first")
    tensors = load_file(str(path))
    return tensors["input_ids"], tensors["labels"]


def labels_fingerprint(cfg: Config, out: Path) -> str:
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=True),
            "block_length": cfg.data.block_length,
            # how often progress is saved does not change the labels
            "labels": {k: v for k, v in to_dict(cfg.labels).items() if k != "save_every"},
            "target": artifacts.file_hash(cfg.data.target) if cfg.data.target.is_file() else "missing",
            "anchors": artifacts.file_hash(cfg.data.anchors) if cfg.data.anchors.is_file() else "missing",
            "reinforced": artifacts.stage_fingerprint(out / "reinforce"),
        }
    )


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/labels/` (labels.safetensors, stats.json, config.yaml, manifest.json), unless done."""
    from whoharry import reinforce

    reinforce.run(cfg, out, progress=progress)
    stage_dir = out / "labels"
    key = labels_fingerprint(cfg, out)
    if artifacts.is_complete(stage_dir, key):
        log.info("labels: complete with these settings, skipped (%s)", stage_dir)
        return stage_dir
    began = time.perf_counter()
    text = read_text(cfg.data.target)
    anchors = load_anchors(cfg.data.anchors)
    composite = anchors.composite_keys()
    if composite:
        # as in the authors' label script: a splittable key is left to its parts
        log.info("labels: %d composite keys left to their parts: %s", len(composite), ", ".join(composite[:10]))
        anchors = anchors.without(composite)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    blocks = make_blocks(text, tokenizer, cfg.data.block_length)
    base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)  # no autocast weight cache
    models.check_context(base, cfg.data.block_length)
    reinforced = models.load_folder(out / "reinforce" / "final", next(base.parameters()).device, cfg.model)
    reinforced.requires_grad_(False)
    # under `accelerate launch`, each process labels every N-th batch and the main process merges
    processes, rank, main = distributed.world(), distributed.rank(), distributed.is_main()
    mine = batches_of(len(blocks.ids), cfg.labels.batch_size)[rank::processes]
    suffix = "" if processes == 1 else f"-{rank}-of-{processes}"
    partial = Partial(stage_dir / f"partial{suffix}.safetensors", key, cfg.labels.save_every)
    saved = partial.load()
    metrics_path = stage_dir / "metrics.jsonl"  # the main process's batches
    if saved is not None and main:
        artifacts.truncate_metrics(metrics_path, "batches", saved[0])
    shard = label_shard(
        base, reinforced, tokenizer, blocks, anchors, mine,
        alpha=cfg.labels.alpha, seed=cfg.seed, precision=cfg.labels.precision, progress=progress and main,
        metrics=artifacts.MetricsLog(metrics_path, append=saved is not None) if main else None,
        partial=partial, resume=saved,
    )
    del base, reinforced
    shards_dir = stage_dir / "shards"
    if processes > 1:
        _save_shard(shards_dir / f"rank-{rank}-of-{processes}.safetensors", shard, {"key": key})
        distributed.barrier()
    if main:
        shards = [shard] if processes == 1 else [_read_shard(shards_dir, r, processes, key) for r in range(processes)]
        _write(cfg, out, stage_dir, key, source.description, finish(blocks, anchors, shards, cfg.labels.alpha),
               composite, len(anchors), time.perf_counter() - began)
        shutil.rmtree(shards_dir, ignore_errors=True)
    distributed.barrier()
    partial.clear()
    return stage_dir


def _read_shard(folder: Path, rank: int, processes: int, key: str) -> Shard:
    loaded = _load_shard(folder / f"rank-{rank}-of-{processes}.safetensors", key)
    if loaded is None:
        raise WhoharryError(f"labels: process {rank} of {processes} left no readable shard in {folder}")
    return loaded[0]


def _write(cfg: Config, out: Path, stage_dir: Path, key: str, model: str, label_set: LabelSet,
           composite: list[str], keys: int, seconds: float) -> None:
    """labels.safetensors, stats.json, config.yaml and manifest.json (last)."""
    label_set.stats["composite_keys_split"] = composite
    missing = label_set.stats["anchor_keys_missing"]
    if missing:
        log.warning("labels: %d of %d anchor keys never occur in the target text", missing, keys)
    save_labels(stage_dir, label_set)
    stats = label_set.stats
    log.info(
        "labels: %d blocks, %d positions labelled, %d differ from the text, %d anchor occurrences",
        stats["blocks"], stats["positions_labelled"], stats["positions_changed"], stats["anchor_occurrences"],
    )
    record = artifacts.StageRecord(
        stage="labels",
        fingerprint=key,
        inputs={
            "target": str(cfg.data.target),
            "anchors": str(cfg.data.anchors),
            "model": model,
            "reinforced": artifacts.stage_fingerprint(out / "reinforce"),
        },
        outputs=[LABELS_FILE, "stats.json", "metrics.jsonl"],
        seed=cfg.seed,
        seconds=seconds,
        summary={**{k: v for k, v in stats.items() if k not in ("occurrences_per_key", "composite_keys_split")},
                 "processes": distributed.world()},
    )
    artifacts.write_stage(stage_dir, record, to_dict(cfg))
