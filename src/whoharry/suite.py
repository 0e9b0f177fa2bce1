"""The parts of the evaluation suite, each a function of one model returning (summary figures, per-sample
records), and the cache that lets a rerun skip the finished ones.

A part's result is stored under `parts/MODEL/PART.json` with the fingerprint of the model and of the
settings that part depends on (PART_FIELDS), so adding parts, or rerunning after an interruption,
computes only what is missing. Parts, in order:

    probes       target, general and related token-probability probes (whoharry.probes)
    completions  greedy completions scored by the offline judge (and the LLM judge when configured),
                 and their fluency under the base model (whoharry.completions, judge)
    sampling     sampled completions scored by the offline judge
    knowmem      answers to questions about the target (whoharry.knowmem)
    robustness   the target facts paraphrased, after a hint, and few-shot (whoharry.probes)
    verbatim     continuations of target excerpts (whoharry.verbatim)
    membership   target text against held-out text of its domain (whoharry.membership)
    utility      perplexity on general text
    benchmarks   lm-eval tasks (whoharry.benchmarks)
    relearning   familiarity after fine-tuning on a target slice (whoharry.relearn); runs last, as it
                 changes the model
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from whoharry import (
    artifacts,
    benchmarks,
    completions,
    judge,
    knowmem,
    llm_judge,
    membership,
    models,
    probes,
    relearn,
    verbatim,
)
from whoharry.anchors import Anchors
from whoharry.config import Config, EvalConfig, fingerprint, to_dict
from whoharry.probes import PROBE_SETS
from whoharry.text import make_blocks, read_text

log = logging.getLogger(__name__)

Part = tuple[dict[str, float], dict[str, Any]]  # (summary figures, per-sample records by kind)


# The settings each part's figures depend on, beside the model, the seed, the anchor dictionary and the
# target text (which every part's key holds) and the settings every part shares (COMMON_FIELDS).
PART_FIELDS = {
    "probes": ("target_probes", "general_probes", "related_probes", "max_new_tokens"),
    "completions": ("completions", "completion_tokens", "judge_terms"),
    "llm_judge": ("completions", "completion_tokens", "judge_terms", "llm_judge_url", "llm_judge_model",
                  "llm_judge_rubric", "target_name"),
    "sampling": ("completions", "completion_tokens", "judge_terms", "completion_samples", "sample_temperature"),
    "knowmem": ("qa", "qa_tokens"),
    "robustness": ("target_probes", "paraphrased_probes", "hint", "fewshot", "max_new_tokens"),
    "verbatim": ("verbatim_excerpts", "verbatim_prompt_tokens", "verbatim_continuation_tokens"),
    "membership": ("heldout_target", "membership_passage_tokens", "membership_max_passages"),
    "utility": ("general_text", "block_length"),
    "relearning": ("target_probes", "relearn_steps", "relearn_eval_every", "relearn_blocks", "relearn_learning_rate",
                   "block_length"),
    "benchmark": ("lm_eval_limit",),
}
COMMON_FIELDS = ("max_samples", "batch_size", "precision")


def value_key(value: Any) -> Any:
    """A setting as it enters a fingerprint: a file by its path and content hash."""
    if isinstance(value, Path):
        return [str(value), artifacts.file_hash(value) if value.is_file() else None]
    return to_dict(value)


def part_fingerprint(cfg: Config, part: str) -> str:
    """The fingerprint of everything one part's figures depend on, the model aside."""
    fields = PART_FIELDS[part.split("-", 1)[0]] + COMMON_FIELDS
    return fingerprint({
        "part": part,
        "settings": {name: value_key(getattr(cfg.eval, name)) for name in fields},
        "seed": cfg.seed,
        "anchors": value_key(cfg.data.anchors),
        "target": value_key(cfg.data.target),
    })


@dataclass
class Context:
    """What every part of one evaluation shares."""

    config: Config
    folder: Path  # the eval stage folder (parts/ cache, relearning work folders)
    overwrite: bool
    control: Anchors | None  # the anchor dictionary: generic controls of target probes, judge terms
    member_text: str | None  # the target text
    progress: bool
    base_id: str = ""  # identifies the base model, the judge of every model's completion fluency

    @property
    def cfg(self) -> EvalConfig:
        return self.config.eval

    @property
    def seed(self) -> int:
        return self.config.seed

    def cached(self, model_name: str, model_id: str, part: str, compute: Callable[[], Part]) -> Part:
        """The part's (summary, samples) from the cache when made by the same model and settings."""
        path = self.folder / "parts" / model_name / f"{part}.json"
        judge = self.base_id if part == "completions" else None
        key = fingerprint({"model": model_id, "judge": judge, "settings": part_fingerprint(self.config, part)})
        if path.is_file() and not self.overwrite:
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                stored = {}
            if stored.get("key") == key:
                log.info("eval: %s %s cached, skipped", model_name, part)
                return stored["summary"], stored["samples"]
        began = time.perf_counter()
        summary, samples = compute()
        seconds = time.perf_counter() - began
        log.info("eval: %s %s done in %.0f s", model_name, part, seconds)
        artifacts.write_json(path, {"key": key, "seconds": round(seconds, 2), "summary": summary, "samples": samples})
        return summary, samples


def _mean(records: list[dict], field: str) -> float:
    return sum(float(r[field]) for r in records) / len(records)


def _naming_share(records: list[dict]) -> float:
    """The share of completions that name at least one of their prompt's reference terms."""
    return sum(bool(r["references_named"]) for r in records) / len(records)


def part_probes(model, tokenizer, ctx: Context, name: str) -> Part:
    summary, samples = {}, {}
    for probe_set in PROBE_SETS:
        path: Path | None = getattr(ctx.cfg, f"{probe_set}_probes")
        if path is None:
            continue
        rows = probes.read_probes(path, ctx.cfg.max_samples)
        control = ctx.control if probe_set == "target" else None
        samples[probe_set] = probes.score_probes(model, tokenizer, rows, ctx.cfg, f"{name} {probe_set} probes", control,
                                                 progress=ctx.progress)
        summary.update(probes.summarize(probe_set, samples[probe_set]))
    return summary, samples


def _judged(ctx: Context, done: list[completions.Completion], rows: list[dict]) -> list[dict]:
    """Completion records with the offline judge's 0–3 score and the target terms named."""
    terms = [*(ctx.control.entries if ctx.control else []), *ctx.cfg.judge_terms]
    out = []
    for row, completion in zip(rows, done, strict=True):
        score, named = judge.score(row["prompt"], completion.text, row["references"], terms)
        out.append({"prompt": row["prompt"], "completion": completion.text,
                    "references_named": completions.named_references(row["prompt"], completion.text,
                                                                     row["references"]),
                    "judge_score": score, "terms_named": named})
    return out


def part_completions(model, judge_model, tokenizer, ctx: Context, name: str) -> Part:
    """Greedy completions scored by the offline judge, and their fluency under the judge model (the base)."""
    cfg = ctx.cfg
    rows = completions.read_completion_prompts(cfg.completions)[: cfg.max_samples]
    done = completions.complete(model, tokenizer, [row["prompt"] for row in rows], cfg.completion_tokens,
                                cfg.precision, cfg.batch_size, f"{name} completions", progress=ctx.progress)
    records = _judged(ctx, done, rows)
    judged = completions.judge_nll(judge_model, tokenizer, done, cfg.precision, cfg.batch_size)
    for record, (nll, tokens) in zip(records, judged, strict=True):
        record.update(judge_nll=nll, tokens=tokens)
    summary = {
        "completion_reference_rate": _naming_share(records),
        "completion_judge_score": _mean(records, "judge_score"),
        "completion_fluency_perplexity": completions.pooled_perplexity(judged),
    }
    return summary, {"completions": records}


def part_sampling(model, tokenizer, ctx: Context, name: str) -> Part:
    """`completion_samples` sampled completions of each prompt, scored by the offline judge."""
    cfg = ctx.cfg
    rows = completions.read_completion_prompts(cfg.completions)[: cfg.max_samples]
    rows = [row for row in rows for _ in range(cfg.completion_samples)]
    done = completions.complete(model, tokenizer, [row["prompt"] for row in rows], cfg.completion_tokens,
                                cfg.precision, cfg.batch_size, f"{name} sampled completions",
                                cfg.sample_temperature, ctx.seed, progress=ctx.progress)
    records = _judged(ctx, done, rows)
    summary = {"completion_reference_rate_sampled": _naming_share(records),
               "completion_judge_score_sampled": _mean(records, "judge_score")}
    return summary, {"completions_sampled": records}


def part_llm_judge(records: list[dict], ctx: Context) -> Part:
    """The LLM judge's 0–3 scores of the greedy completions."""
    cfg = ctx.cfg
    judge_cfg = llm_judge.LLMJudgeConfig(base_url=cfg.llm_judge_url or "", model=cfg.llm_judge_model,
                                         rubric=cfg.llm_judge_rubric, api_key_env=cfg.llm_judge_key_env)
    prompts = {row["prompt"]: row["references"] for row in completions.read_completion_prompts(cfg.completions)}
    items = [{"prompt": r["prompt"], "completion": r["completion"], "references": prompts.get(r["prompt"], [])}
             for r in records]
    scored = llm_judge.judge_completions(judge_cfg, cfg.target_name, items)
    merged = [{"prompt": r["prompt"], "completion": r["completion"], **s} for r, s in zip(records, scored, strict=True)]
    return {"completion_llm_score": _mean(merged, "llm_score")}, {"completions_llm": merged}


def part_knowmem(model, tokenizer, ctx: Context, name: str) -> Part:
    questions = knowmem.read_questions(ctx.cfg.qa, ctx.cfg.max_samples)
    records = knowmem.knowmem_records(model, tokenizer, questions, ctx.cfg.qa_tokens, ctx.cfg.precision,
                                      ctx.cfg.batch_size, f"{name} questions", progress=ctx.progress)
    return {"knowmem_rouge_l": _mean(records, "rouge_l")}, {"knowmem": records}


def part_robustness(model, tokenizer, ctx: Context, name: str) -> Part:
    """The target facts asked indirectly (paraphrased probe file), after a hint text, and few-shot."""
    cfg = ctx.cfg
    variants: dict[str, list[dict[str, str]]] = {}
    if cfg.paraphrased_probes is not None:
        variants["paraphrased"] = probes.read_probes(cfg.paraphrased_probes, cfg.max_samples)
    target = probes.read_probes(cfg.target_probes, cfg.max_samples) if cfg.target_probes is not None else []
    if target and cfg.hint is not None:
        variants["hinted"] = probes.with_hint(target, read_text(cfg.hint, "hint text"))
    if len(target) > 1 and cfg.fewshot > 0:
        variants["fewshot"] = probes.few_shot(target, cfg.fewshot)
    summary, samples = {}, {}
    for variant, rows in variants.items():
        samples[variant] = probes.score_probes(model, tokenizer, rows, cfg, f"{name} {variant} probes",
                                               progress=ctx.progress)
        summary.update(probes.summarize(variant, samples[variant]))
    return summary, samples


def part_verbatim(model, tokenizer, ctx: Context, name: str) -> Part:
    cfg = ctx.cfg
    records = verbatim.verbatim_records(model, tokenizer, ctx.member_text or "", cfg.verbatim_prompt_tokens,
                                        cfg.verbatim_continuation_tokens, cfg.verbatim_excerpts, cfg.precision,
                                        cfg.batch_size)
    return {"verbmem_rouge_l": _mean(records, "rouge_l")}, {"verbatim": records}


def part_membership(model, tokenizer, ctx: Context, name: str) -> Part:
    """Membership scores of target passages (members) and held-out passages of its domain (non-members)."""
    cfg = ctx.cfg
    heldout = read_text(cfg.heldout_target, "held-out target-domain text")
    args = (cfg.membership_passage_tokens, cfg.precision)
    members = membership.passage_scores(model, tokenizer, ctx.member_text or "", *args, cfg.membership_max_passages)
    others = membership.passage_scores(model, tokenizer, heldout, *args)
    records = [{"member": True, **r} for r in members] + [{"member": False, **r} for r in others]
    summary = {f"membership_auc_{score}": membership.auc([r[score] for r in records if r["member"]],
                                                         [r[score] for r in records if not r["member"]])
               for score in membership.SCORES}
    return summary, {"membership": records}


@torch.no_grad()
def block_losses(model, tokenizer, text: str, block_length: int, precision: str) -> list[dict]:
    """Summed next-token loss and token count of each consecutive block of the text."""
    device = next(model.parameters()).device
    records = []
    for ids in make_blocks(text, tokenizer, block_length).ids:
        batch = torch.tensor([ids], device=device)
        with models.autocast(precision, device):
            logits = model(input_ids=batch).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits[:-1], batch[0, 1:], reduction="sum")
        records.append({"nll": loss.item(), "tokens": len(ids) - 1})
    return records


def part_utility(model, tokenizer, ctx: Context, name: str) -> Part:
    text = read_text(ctx.cfg.general_text, "general text")
    records = block_losses(model, tokenizer, text, ctx.cfg.block_length, ctx.cfg.precision)
    return ({"general_perplexity": completions.pooled_perplexity([(r["nll"], r["tokens"]) for r in records])},
            {"general_text": records})


def part_benchmark(model, tokenizer, ctx: Context, task: str) -> Part:
    figures, spans = benchmarks.run_tasks(model, tokenizer, [task], ctx.cfg.lm_eval_limit, ctx.cfg.batch_size)
    return figures, {"benchmark_intervals": spans}


def part_relearning(model, tokenizer, ctx: Context, name: str) -> Part:
    rows = probes.read_probes(ctx.cfg.target_probes, ctx.cfg.max_samples)
    curve = relearn.relearn_curve(model, tokenizer, ctx.member_text or "", rows, ctx.cfg, seed=ctx.seed,
                                  work_dir=ctx.folder / "relearning" / name, desc=f"{name} relearning",
                                  progress=ctx.progress)
    return {"relearn_target_p_answer": sum(curve[-1]["p_answer"]) / len(rows)}, {"relearning": curve}


def wanted(cfg: EvalConfig, part: str, member_text: str | None) -> bool:
    """Whether a part is asked for and has its inputs."""
    if part not in cfg.parts:
        return False
    needs = {
        "probes": any(getattr(cfg, f"{s}_probes") is not None for s in PROBE_SETS),
        "completions": cfg.completions is not None,
        "sampling": cfg.completions is not None,
        "knowmem": cfg.qa is not None,
        "robustness": cfg.paraphrased_probes is not None or (cfg.target_probes is not None and (
            cfg.hint is not None or cfg.fewshot > 0)),
        "verbatim": cfg.verbatim_excerpts > 0 and member_text is not None,
        "membership": cfg.heldout_target is not None and member_text is not None,
        "utility": cfg.general_text is not None,
        "benchmarks": bool(cfg.lm_eval_tasks),
        "relearning": cfg.target_probes is not None and member_text is not None,
    }
    return needs[part]


def evaluate_model(model, tokenizer, ctx: Context, name: str, model_id: str, judge_model=None) -> dict[str, Any]:
    """Every asked-for part except benchmarks and relearning (see `finish_model`), for one model;
    `judge_model` (default: the model itself) scores the fluency of its completions."""
    cfg, result = ctx.cfg, {"summary": {}, "samples": {}}

    def add(part: str, compute: Callable[[], Part]) -> None:
        summary, samples = ctx.cached(name, model_id, part, compute)
        result["summary"].update(summary)
        result["samples"].update(samples)

    if wanted(cfg, "probes", ctx.member_text):
        add("probes", lambda: part_probes(model, tokenizer, ctx, name))
    if wanted(cfg, "completions", ctx.member_text):
        add("completions", lambda: part_completions(model, judge_model or model, tokenizer, ctx, name))
        if cfg.llm_judge_url:
            add("llm_judge", lambda: part_llm_judge(result["samples"]["completions"], ctx))
    for part, compute in (("sampling", part_sampling), ("knowmem", part_knowmem), ("robustness", part_robustness),
                          ("verbatim", part_verbatim), ("membership", part_membership), ("utility", part_utility)):
        if wanted(cfg, part, ctx.member_text):
            add(part, lambda compute=compute: compute(model, tokenizer, ctx, name))
    return result


def finish_model(model, tokenizer, ctx: Context, name: str, model_id: str, result: dict[str, Any]) -> None:
    """The benchmarks, then relearning, which fine-tunes the model in place (so it comes last). Neither
    applies to a two-model ensemble: it has no weights of its own to fine-tune or hand to lm-eval."""
    cfg = ctx.cfg
    if getattr(model, "models_per_token", 1) > 1:
        log.info("eval: %s is an ensemble; benchmarks and relearning skipped", name)
        return
    if wanted(cfg, "benchmarks", ctx.member_text):
        for task in cfg.lm_eval_tasks:
            summary, samples = ctx.cached(name, model_id, f"benchmark-{task}",
                                          lambda task=task: part_benchmark(model, tokenizer, ctx, task))
            result["summary"].update(summary)
            result.setdefault("benchmark_intervals", {}).update(samples["benchmark_intervals"])
    if wanted(cfg, "relearning", ctx.member_text):
        summary, samples = ctx.cached(name, model_id, "relearning",
                                      lambda: part_relearning(model, tokenizer, ctx, name))
        result["summary"].update(summary)
        result["samples"].update(samples)
