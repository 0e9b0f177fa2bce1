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
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from whoharry import artifacts, models
from whoharry.anchors import Anchors, load_anchors
from whoharry.config import Config, fingerprint, to_dict
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
class Partial:
    """The labels made so far, saved every `every` batches to `path` under the stage's key."""

    path: Path
    key: str
    every: int

    def save(self, blocks_done: int, labels: torch.Tensor, found: Counter[str], unaligned: int) -> None:
        meta = {"key": self.key, "blocks_done": str(blocks_done), "unaligned": str(unaligned),
                "found": json.dumps(dict(found))}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        save_file({"labels": labels}, str(tmp), metadata=meta)
        os.replace(tmp, self.path)

    def load(self) -> tuple[int, torch.Tensor, Counter[str], int] | None:
        """(blocks done, labels, anchor occurrences, unaligned positions), or None when there is no
        progress saved under this key."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), "pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("key") != self.key:
                    return None
                labels = handle.get_tensor("labels")
            return int(meta["blocks_done"]), labels, Counter(json.loads(meta["found"])), int(meta["unaligned"])
        except (OSError, ValueError, KeyError, SafetensorError):
            log.info("labels: ignoring unreadable progress file %s", self.path)
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


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
    metrics: artifacts.MetricsLog | None = None,
    partial: Partial | None = None,
    resume: tuple[int, torch.Tensor, Counter[str], int] | None = None,
) -> LabelSet:
    """Translate every block, run both models, and keep only the label ids. With `partial`, the labels
    made so far are saved every few batches; `resume` (what `Partial.load` read) continues from them."""
    pattern = anchors.pattern()
    device = next(base.parameters()).device
    base.eval()
    reinforced.eval()
    count = len(blocks.ids)
    all_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    all_labels = torch.full_like(all_ids, IGNORE)
    found: Counter[str] = Counter()
    unaligned = first = 0
    if resume is not None:
        first, all_labels, found, unaligned = resume
        log.info("labels: resuming at block %d of %d", first, count)
    bar = tqdm(total=count, initial=first, desc="labels", unit="block", disable=not progress)
    began = time.perf_counter()
    done = all_labels[:first] != IGNORE
    labelled_so_far = int(done.sum())
    changed_so_far = int((done & (all_labels[:first] != all_ids[:first])).sum())
    for batch_number, start in enumerate(range(first, count, batch_size), start=1):
        indices = list(range(start, min(start + batch_size, count)))
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
            found.update(occ.key for occ in translation.occurrences)
            unaligned += _count_unaligned(translation)
            all_labels[b] = _block_labels(translation, base_logits[row], reinforced_logits[row], alpha)
        bar.update(len(indices))
        if metrics is not None:
            batch_labels = all_labels[indices]
            batch_labelled = batch_labels != IGNORE
            labelled_so_far += int(batch_labelled.sum())
            changed_so_far += int((batch_labelled & (batch_labels != all_ids[indices])).sum())
            metrics.log(
                blocks=indices[-1] + 1,
                positions_labelled=labelled_so_far,
                positions_changed=changed_so_far,
                seconds=round(time.perf_counter() - began, 3),
            )
        if partial is not None and partial.every and batch_number % partial.every == 0 and indices[-1] + 1 < count:
            partial.save(indices[-1] + 1, all_labels, found, unaligned)
    bar.close()
    labelled = all_labels != IGNORE
    changed = labelled & (all_labels != all_ids)
    stats = {
        "blocks": count,
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
            "model": to_dict(cfg.model),
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
    base = models.load_model(source, cfg.model)
    models.check_context(base, cfg.data.block_length)
    reinforced = models.load_folder(out / "reinforce" / "final", next(base.parameters()).device)
    partial = Partial(stage_dir / "partial.safetensors", key, cfg.labels.save_every)
    saved = partial.load()
    metrics_path = stage_dir / "metrics.jsonl"
    if saved is not None:
        artifacts.truncate_metrics(metrics_path, "blocks", saved[0])
    label_set = compute_labels(
        base, reinforced, tokenizer, blocks, anchors,
        alpha=cfg.labels.alpha, seed=cfg.seed, batch_size=cfg.labels.batch_size,
        precision=cfg.labels.precision, progress=progress,
        metrics=artifacts.MetricsLog(metrics_path, append=saved is not None), partial=partial, resume=saved,
    )
    label_set.stats["composite_keys_split"] = composite
    missing = label_set.stats["anchor_keys_missing"]
    if missing:
        log.warning("labels: %d of %d anchor keys never occur in the target text", missing, len(anchors))
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
            "model": source.description,
            "reinforced": artifacts.stage_fingerprint(out / "reinforce"),
        },
        outputs=[LABELS_FILE, "stats.json", "metrics.jsonl"],
        seed=cfg.seed,
        seconds=time.perf_counter() - began,
        summary={k: v for k, v in stats.items() if k not in ("occurrences_per_key", "composite_keys_split")},
    )
    artifacts.write_stage(stage_dir, record, to_dict(cfg))
    partial.clear()
    return stage_dir
