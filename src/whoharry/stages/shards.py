"""What the labels stage keeps on disk: its result (`labels.safetensors`), the progress a rerun resumes
from, and the per-process shards that `accelerate launch` merges in block order.

Every file here is a safetensors file written under a temporary name and renamed into place, so a
killed process leaves the last complete one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from whoharry.anchors.dictionary import Anchors
from whoharry.core import artifacts, corpus
from whoharry.core.text import Blocks
from whoharry.errors import WhoharryError
from whoharry.method.objectives import IGNORE

log = logging.getLogger(__name__)

LABELS_FILE = "labels.safetensors"
DATASET_DIR = "dataset"  # the same labels as a datasets.Dataset (save_to_disk), for any trainer


@dataclass
class SoftTargets:
    """Soft generic targets kept as their top k: `ids` [blocks, block_length, k] int32 (most likely first) and
    `probs` [blocks, block_length, k] float32 (each labelled row summing to 1; zeros where no label), in the
    labels' convention (the target of position t is predicted from t - 1)."""

    ids: torch.Tensor
    probs: torch.Tensor

    @staticmethod
    def empty(blocks: int, length: int, k: int) -> SoftTargets:
        """No target anywhere: ids 0, probabilities 0."""
        return SoftTargets(torch.zeros(blocks, length, k, dtype=torch.int32),
                           torch.zeros(blocks, length, k, dtype=torch.float32))

    @staticmethod
    def one_hot(ids: torch.Tensor, k: int) -> SoftTargets:
        """Each token's own id with probability 1 (a text's own tokens as soft targets), [blocks, length] -> k."""
        out = SoftTargets.empty(ids.shape[0], ids.shape[1], k)
        out.ids[:, :, 0] = ids
        out.probs[:, :, 0] = 1.0
        return out

    @staticmethod
    def from_labels(labels: torch.Tensor, k: int) -> SoftTargets:
        """Hard labels [blocks, length] as soft targets with k columns: each label with probability 1, none
        (id 0, probability 0) where it is `IGNORE`."""
        labelled = labels != IGNORE
        out = SoftTargets.one_hot(torch.where(labelled, labels, 0), k)
        out.probs[:, :, 0] = labelled.float()
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """As safetensors entries."""
        return {"soft_ids": self.ids, "soft_probs": self.probs}

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor]) -> SoftTargets | None:
        """Read back from `tensors`; None where there are none."""
        if "soft_ids" not in tensors:
            return None
        return SoftTargets(tensors["soft_ids"], tensors["soft_probs"])


@dataclass
class LabelSet:
    """Original token blocks and their generic labels, both [blocks, block_length] int32, with the soft
    targets when they were asked for (`labels.targets: soft`)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, Any]
    soft: SoftTargets | None = None


@dataclass
class Shard:
    """One process's labels: rows of the blocks it did (the others -100), anchor counts, unaligned positions,
    and soft targets of the same rows (soft labels only)."""

    labels: torch.Tensor
    found: Counter[str]
    unaligned: int
    soft: SoftTargets | None = None


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
        """Save the shard so far, after `batches_done` of this process's batches."""
        save_shard(self.path, shard, {"key": self.key, "batches_done": str(batches_done)})

    def load(self) -> tuple[int, Shard] | None:
        """(batches done, the shard so far), or None when there is no progress saved under this key."""
        loaded = load_shard(self.path, self.key)
        return None if loaded is None else (int(loaded[1]["batches_done"]), loaded[0])

    def clear(self) -> None:
        """Delete the saved progress, if any."""
        self.path.unlink(missing_ok=True)


def save_shard(path: Path, shard: Shard, meta: dict[str, str]) -> None:
    """One process's labels with its counts and `meta` (the stage's key, progress) in the metadata."""
    meta = {**meta, "unaligned": str(shard.unaligned), "found": json.dumps(dict(shard.found))}
    tensors = {"labels": shard.labels, **(shard.soft.tensors() if shard.soft is not None else {})}
    with artifacts.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_shard(path: Path, key: str) -> tuple[Shard, dict[str, str]] | None:
    """A shard saved under `key` and its metadata, or None when the file is missing, saved under another
    key, or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("key") != key:
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        shard = Shard(tensors["labels"], Counter(json.loads(meta["found"])), int(meta["unaligned"]),
                      SoftTargets.from_tensors(tensors))
        return shard, meta
    except (OSError, ValueError, KeyError, SafetensorError):
        log.info("labels: ignoring unreadable file %s", path)
        return None


def rank_file(folder: Path, rank: int, processes: int) -> Path:
    """Where process `rank` of `processes` leaves its shard for the main process to merge."""
    return folder / f"rank-{rank}-of-{processes}.safetensors"


def finish(blocks: Blocks, anchors: Anchors, shards: list[Shard], alpha: float) -> LabelSet:
    """Merge the processes' shards (each block's row from the shard that labelled it) and count.

    Returns:
        A `LabelSet`: input_ids and labels, [blocks, block_length] int32, soft targets when the shards have
        them, and the statistics written to `stats.json` (blocks, tokens, positions labelled, changed and
        unaligned, alpha, anchor counts; for soft targets their k and bytes per token).
    """
    all_ids = torch.tensor(blocks.ids, dtype=torch.int32)
    all_labels = torch.full_like(all_ids, IGNORE)
    soft = None
    if shards[0].soft is not None:
        soft = SoftTargets.empty(*all_ids.shape, shards[0].soft.ids.shape[-1])
    found: Counter[str] = Counter()
    unaligned = 0
    for shard in shards:
        rows = (shard.labels != IGNORE).any(dim=1)
        all_labels[rows] = shard.labels[rows]
        if soft is not None and shard.soft is not None:
            soft.ids[rows], soft.probs[rows] = shard.soft.ids[rows], shard.soft.probs[rows]
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
    if soft is not None:
        k = soft.ids.shape[-1]
        stats.update(soft_top_k=k, soft_bytes_per_token=k * (soft.ids.element_size() + soft.probs.element_size()))
    return LabelSet(all_ids, all_labels, stats, soft)


def save_labels(stage_dir: Path, label_set: LabelSet) -> None:
    """`labels.safetensors` (input_ids and labels, [blocks, block_length] int32; soft_ids and soft_probs,
    [blocks, block_length, k] int32 and float32, when soft), the `dataset/` folder (`save_dataset`) and
    `stats.json`."""
    tensors = {"input_ids": label_set.input_ids, "labels": label_set.labels,
               **(label_set.soft.tensors() if label_set.soft is not None else {})}
    with artifacts.atomic_path(stage_dir / LABELS_FILE) as tmp:
        save_file(tensors, str(tmp))
    save_dataset(stage_dir / DATASET_DIR, label_set)
    artifacts.write_json(stage_dir / "stats.json", label_set.stats)


def save_dataset(path: Path, label_set: LabelSet) -> None:
    """The hard labels as a `datasets.Dataset` folder (`save_to_disk`), one row a block: `input_ids`,
    `labels` (the transformers convention, -100 unlabelled) and `attention_mask` (all ones: blocks are
    never padded), each a list of block_length int32 values; the authors' own fine-tuning script read its
    labels this way, and so can `transformers.Trainer` or TRL (`datasets.load_from_disk(path)`)."""
    from datasets import Dataset, Features, Sequence, Value

    column = Sequence(Value("int32"))
    features = Features({"input_ids": column, "labels": column, "attention_mask": column})
    data = {"input_ids": label_set.input_ids.tolist(), "labels": label_set.labels.tolist(),
            "attention_mask": torch.ones_like(label_set.input_ids).tolist()}
    with artifacts.atomic_path(path) as tmp, corpus.quiet():
        Dataset.from_dict(data, features=features).save_to_disk(str(tmp))


def load_labels(stage_dir: Path) -> LabelSet:
    """The `LabelSet` of a labels folder: input_ids and labels, both [blocks, block_length] int32, and the
    soft targets when it has them (its `stats` is empty: they stay in stats.json).

    Raises:
        WhoharryError: the folder holds no labels.
    """
    path = stage_dir / LABELS_FILE
    if not path.is_file():
        raise WhoharryError(f"no labels in {stage_dir}: run `whoharry labels` first")
    tensors = load_file(str(path))
    return LabelSet(tensors["input_ids"], tensors["labels"], {}, SoftTargets.from_tensors(tensors))


def read_rank(folder: Path, rank: int, processes: int, key: str) -> Shard:
    """The shard process `rank` of `processes` left in `folder` under `key`.

    Raises:
        WhoharryError: it is missing or unreadable.
    """
    loaded = load_shard(rank_file(folder, rank, processes), key)
    if loaded is None:
        raise WhoharryError(f"labels: process {rank} of {processes} left no readable shard in {folder}")
    return loaded[0]


