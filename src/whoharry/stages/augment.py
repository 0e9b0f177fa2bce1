"""The augment stage: passages about the target's world, written by the base and/or reinforced model (or an
OpenAI-compatible endpoint), that the labels stage labels and the unlearn stage trains on with the target.

The paper fine-tuned on the books plus about a million tokens of generated text set in their world
(Eldan & Russinovich 2023, section 3), so that the generic labels reach what the model knows of the
world, not only what one text says. Here the writers are prompted with target contexts and genre
templates (`anchors.passages.seed_prompts`); a passage is kept when dense in anchor terms and neither a
near-duplicate of one kept before nor a copy of the target; passages are written until the kept ones
would pass `augment.tokens` (never past it) or the prompts run out.

Each batch of prompts is sampled after seeding torch with the run's seed and the batch's number, so the
text depends on the settings alone, and a rerun resumes after the last batch saved (`partial.jsonl`).
An endpoint answers at temperature 0; its text is as repeatable as the endpoint itself. One process writes:
under `accelerate launch` the main process writes while the others wait at the stage's barrier, as for the
made dictionary; a budget that takes longer than the process group's timeout is written by `whoharry
augment` first (the launched run then finds it complete).
A finished result is also kept in `$WHOHARRY_CACHE/augment/KEY/`, where a run in another folder with the
same settings and models finds it (`augment.shared_cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from whoharry.anchors.dictionary import load_anchors
from whoharry.anchors.passages import Deduplicator, Seed, anchor_density, seed_prompts
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.core import artifacts, distributed, models
from whoharry.core.http import ChatClient
from whoharry.core.text import read_target, target_hash
from whoharry.errors import WhoharryError
from whoharry.evaluation.completions import generate
from whoharry.stages import reinforce
from whoharry.stages.common import Outcome, require, run_stage

log = logging.getLogger(__name__)

NAME = "augment"
TEXT_FILE = "generated.txt"
PASSAGES_FILE = "passages.jsonl"
OUTPUTS = (TEXT_FILE, PASSAGES_FILE, "stats.json")
LLM_INSTRUCTION = ("Continue this text with a passage of about {words} words set in the same world, naming its "
                   "people, places and things as the text does. Reply with the continuation only.\n\n{prompt}")


def enabled(cfg: Config) -> bool:
    """Whether the run adds generated text to the target (`augment.tokens` > 0)."""
    return cfg.augment.tokens > 0


def uses_reinforced(cfg: Config) -> bool:
    """Whether the reinforced model writes (no endpoint configured, writer `reinforced` or `both`)."""
    return not cfg.augment.llm_url and cfg.augment.writer != "base"


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of what the generated text depends on: seed, model, augment settings, target, anchor
    dictionary, and the reinforced model's key when it writes."""
    skipped = {"shared_cache", "llm_key_env"}
    if cfg.augment.llm_url:  # the endpoint answers at temperature 0, one prompt at a time
        skipped |= {"writer", "temperature", "top_p", "batch_size"}
    settings = {k: v for k, v in to_dict(cfg.augment).items() if k not in skipped}
    return fingerprint(
        {
            "seed": cfg.seed,
            "model": model_key(cfg.model, reading=True),
            "augment": settings,
            "precision": None if cfg.augment.llm_url else cfg.labels.precision,
            "target": target_hash(cfg.data),
            "anchors": artifacts.file_hash(cfg.data.anchors) if cfg.data.anchors.is_file() else "missing",
            "reinforced": reinforce.key(cfg, out) if uses_reinforced(cfg) else None,
        }
    )


def shared_folder(stage_key: str) -> Path:
    """Where a finished result is kept for other runs: `$WHOHARRY_CACHE/augment/KEY`."""
    return models.cache_dir() / "augment" / stage_key


def batch_seed(seed: int, batch: int) -> int:
    """torch's seed before sampling batch `batch`: fixed by the run's seed and the batch alone."""
    return int.from_bytes(hashlib.sha256(f"whoharry-augment-{seed}-{batch}".encode()).digest()[:6], "big")


def generated_text(stage_dir: Path) -> str:
    """The kept passages of a finished augment folder, joined by blank lines.

    Raises:
        WhoharryError: the folder holds no generated text.
    """
    path = stage_dir / TEXT_FILE
    if not path.is_file():
        raise WhoharryError(f"no generated text in {stage_dir}: run `whoharry augment` first")
    return path.read_text(encoding="utf-8")


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/augment/`: generated.txt (the kept passages, blank-line separated), passages.jsonl (every
    passage written, kept or not and why), stats.json, metrics.jsonl, config.yaml and manifest.json, unless
    complete. Reads `out/reinforce/` when the reinforced model writes (run first when missing or stale).

    Raises:
        WhoharryError: as the reinforce stage raises it, an unreadable target or anchor dictionary, a
            target in which no anchor key occurs, an unknown model, or an endpoint that fails.
    """
    reinforce_dir = require(reinforce, cfg, out, progress=progress) if uses_reinforced(cfg) else None
    stage_dir = out / NAME
    stage_key = key(cfg, out)

    def body() -> Outcome | None:
        if not distributed.is_main():  # one process writes; the others wait for its manifest
            return None
        shared = shared_folder(stage_key)
        if cfg.augment.shared_cache and artifacts.read_cached(shared / "done.json", stage_key) is not None:
            try:
                stage_dir.mkdir(parents=True, exist_ok=True)
                for name in OUTPUTS:
                    shutil.copyfile(shared / name, stage_dir / name)
                stats = json.loads((stage_dir / "stats.json").read_text(encoding="utf-8"))
                artifacts.MetricsLog(stage_dir / "metrics.jsonl").log(from_cache=str(shared))
                log.info("augment: the generated text of these settings read from %s", shared)
                return _outcome(cfg, stats, shared)
            except (OSError, ValueError) as err:
                log.warning("augment: the shared copy in %s is unreadable (%s); writing the text anew", shared, err)
        stats = _write(cfg, stage_dir, stage_key, reinforce_dir, progress)
        if cfg.augment.shared_cache:
            _share(stage_dir, shared, stage_key)
        return _outcome(cfg, stats, None)

    run_stage(NAME, cfg, stage_dir, stage_key, body)
    (stage_dir / "partial.jsonl").unlink(missing_ok=True)
    return stage_dir


def _outcome(cfg: Config, stats: dict[str, Any], shared: Path | None) -> Outcome:
    return Outcome(inputs={"target": str(cfg.data.target), "anchors": str(cfg.data.anchors),
                           "writer": cfg.augment.llm_url or cfg.augment.writer,
                           "shared_cache": str(shared) if shared else None},
                   outputs=[*OUTPUTS, "metrics.jsonl"], summary=stats)


def _share(stage_dir: Path, shared: Path, stage_key: str) -> None:
    """Copy the result to the shared cache (its `done.json` last); a cache that cannot be written is skipped."""
    try:
        shared.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            with artifacts.atomic_path(shared / name) as tmp:
                shutil.copyfile(stage_dir / name, tmp)
        artifacts.write_cached(shared / "done.json", stage_key, {})
    except OSError as err:
        log.warning("augment: could not keep the result in %s (%s)", shared, err)


class _Writers:
    """The models (or the endpoint) that write, loaded on first use."""

    def __init__(self, cfg: Config, reinforce_dir: Path | None) -> None:
        self.cfg, self.reinforce_dir = cfg, reinforce_dir
        self.source = models.resolve(cfg.model)
        self.tokenizer = models.load_tokenizer(self.source, cfg.model)
        self.loaded: dict[str, Any] = {}
        self.client = None
        if cfg.augment.llm_url:
            self.client = ChatClient(cfg.augment.llm_url, cfg.augment.llm_model, cfg.augment.llm_key_env,
                                     max_tokens=2 * cfg.augment.passage_tokens)

    def name(self, batch: int) -> str:
        """Who writes batch `batch`: the endpoint, or the configured model (`both`: base, then reinforced)."""
        if self.client is not None:
            return "llm"
        writer = self.cfg.augment.writer
        return writer if writer != "both" else ("base", "reinforced")[batch % 2]

    def write(self, batch: int, seeds: list[Seed]) -> list[str]:
        """The continuations of one batch of prompts."""
        aug = self.cfg.augment
        if self.client is not None:
            words = round(aug.passage_tokens * 0.75)
            return [self.client.ask(LLM_INSTRUCTION.format(words=words, prompt=seed.prompt), f"passage {seed.key}")
                    for seed in seeds]
        who = self.name(batch)
        if who not in self.loaded:  # both stay loaded, as in the labels stage
            if who == "base":
                model = models.load_model(self.source, self.cfg.model, inference=True)
            else:
                model = models.load_folder(self.reinforce_dir / "final", cfg=self.cfg.model)
            self.loaded[who] = model.requires_grad_(False)
        torch.manual_seed(batch_seed(self.cfg.seed, batch))
        prompts = [self.tokenizer(seed.prompt).input_ids for seed in seeds]
        ids = generate(self.loaded[who], self.tokenizer, prompts, aug.passage_tokens, self.cfg.labels.precision,
                       aug.temperature, aug.top_p)
        return [continuation_text(self.tokenizer, prompt, row) for prompt, row in zip(prompts, ids, strict=True)]


def continuation_text(tokenizer: Any, prompt: list[int], generated: list[int]) -> str:
    """The generated tokens as text that continues the prompt's: decoded together with the prompt and the
    prompt's text cut off, so a decoder that drops a leading space (Llama 2's) glues no word onto the prompt."""
    whole = tokenizer.decode(prompt + generated, skip_special_tokens=True)
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    return whole[len(head) :] if whole.startswith(head) else tokenizer.decode(generated, skip_special_tokens=True)


def _write(cfg: Config, stage_dir: Path, stage_key: str, reinforce_dir: Path | None, progress: bool
           ) -> dict[str, Any]:
    """Generate, filter and save; returns the statistics (also written to stats.json)."""
    aug = cfg.augment
    text = read_target(cfg.data)
    anchors = load_anchors(cfg.data.anchors)
    count = aug.max_prompts or max(aug.batch_size, 4 * aug.tokens // aug.passage_tokens)
    seeds = seed_prompts(text, anchors, aug.templates, count, cfg.seed)
    if not seeds:
        raise WhoharryError(f"augment: no key of {cfg.data.anchors} occurs in {cfg.data.target}: nothing to "
                            "prompt the writer with")
    writers = _Writers(cfg, reinforce_dir)
    saved = artifacts.ResumeLog(stage_dir / "partial.jsonl", stage_key)  # one line a batch
    done = list(saved.done)  # the batches saved before this run
    if done:
        log.info("augment: resuming after batch %d", len(done))
    metrics = artifacts.MetricsLog(stage_dir / "metrics.jsonl", append=bool(done))
    artifacts.truncate_metrics(stage_dir / "metrics.jsonl", "batch", len(done))
    dedup = Deduplicator(aug.max_similarity, text)
    records: list[dict[str, Any]] = []
    kept_tokens, full = 0, False
    batches = (len(seeds) + aug.batch_size - 1) // aug.batch_size
    bar = tqdm(total=aug.tokens, desc="augment", unit="tok", disable=not progress)
    began = time.perf_counter()
    for batch in range(batches):
        if full:
            break
        chunk = seeds[batch * aug.batch_size : (batch + 1) * aug.batch_size]
        if batch < len(done):
            written = done[batch]
        else:
            written = writers.write(batch, chunk)
            saved.append(written)
        for seed, continuation in zip(chunk, written, strict=True):
            record = _judge(seed, continuation, writers.name(batch), anchors, dedup, aug.min_density)
            if record["kept"]:
                record["tokens"] = len(writers.tokenizer(record["text"], add_special_tokens=False).input_ids)
                if full or kept_tokens + record["tokens"] > aug.tokens:  # the budget is reached: the last batch
                    record.update(kept=False, dropped="over the token budget")
                    full = True
                else:
                    kept_tokens += record["tokens"]
                    bar.update(record["tokens"])
            records.append(record)
        if batch >= len(done):
            metrics.log(batch=batch + 1, passages=len(records), kept=sum(r["kept"] for r in records),
                        kept_tokens=kept_tokens, seconds=round(time.perf_counter() - began, 3))
    bar.close()
    kept = [r for r in records if r["kept"]]
    artifacts.atomic_write_text(stage_dir / TEXT_FILE, "\n\n".join(r["text"].strip() for r in kept) + "\n")
    artifacts.atomic_write_text(stage_dir / PASSAGES_FILE, "".join(json.dumps(r) + "\n" for r in records))
    reasons: dict[str, int] = {}
    for record in records:
        if not record["kept"]:
            reasons[record["dropped"]] = reasons.get(record["dropped"], 0) + 1
    stats = {"passages_written": len(records), "passages_kept": len(kept), "tokens_kept": kept_tokens,
             "token_budget": aug.tokens, "dropped": reasons,
             "mean_anchor_density": sum(r["density"] for r in kept) / len(kept) if kept else 0.0,
             "kept_by_writer": {w: sum(r["writer"] == w for r in kept) for w in sorted({r["writer"] for r in kept})}}
    artifacts.write_json(stage_dir / "stats.json", stats)
    if not full:
        log.warning("augment: %d of %d tokens kept after %d passages; raise augment.max_prompts or lower "
                    "augment.min_density for more", kept_tokens, aug.tokens, len(records))
    log.info("augment: %d of %d passages kept, %d tokens", len(kept), len(records), kept_tokens)
    return stats


def _judge(seed: Seed, continuation: str, writer: str, anchors: Any, dedup: Deduplicator,
           min_density: float) -> dict[str, Any]:
    """One passage's record: its text (a template's prompt kept before its continuation; a target context,
    already in the target, left out), density, and whether it is kept (else why not)."""
    text = continuation if seed.source == "target" else seed.prompt + continuation
    density = anchor_density(continuation, anchors)
    record = {"prompt": seed.prompt, "source": seed.source, "key": seed.key, "writer": writer, "text": text,
              "density": round(density, 3), "kept": False}
    if density < min_density:
        record["dropped"] = "few anchor terms"
        return record
    why = dedup.why_not(continuation)
    if why is not None:
        record["dropped"] = why
        return record
    record["kept"] = True
    return record
