"""Evaluation: familiarity (answer probability, greedy completions) and general ability.

Probe files are JSONL lines `{"prompt": ..., "answer": ...}`. For each probe: the probability of the
answer continuation given the prompt, and whether a greedy completion contains the answer. Completion
prompts (see `whoharry.completions`) add the share of completions that name a target term and their
fluency judged by the base model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from whoharry import artifacts, completions, intervals, membership, models, verbatim
from whoharry.anchors import Anchors, load_anchors
from whoharry.config import Config, EvalConfig, fingerprint, to_dict
from whoharry.errors import WhoharryError
from whoharry.text import make_blocks, read_jsonl, read_text

log = logging.getLogger(__name__)

PROBE_SETS = ("target", "general", "related")


def read_probes(path: Path) -> list[dict[str, str]]:
    """Read a probe file; every line needs a non-empty prompt and answer."""
    rows = read_jsonl(path, "probe file", lambda row: bool(row.get("prompt") and row.get("answer")),
                      '{"prompt": ..., "answer": ...}')
    return [{"prompt": str(row["prompt"]), "answer": str(row["answer"])} for row in rows]


def _answer_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Prompt ids and answer ids, split where the prompt's own tokenization ends."""
    prompt_ids = tokenizer(prompt).input_ids
    full = tokenizer(prompt + answer).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids) :]
    return prompt_ids, tokenizer(answer, add_special_tokens=False).input_ids


def score_probes(model, tokenizer, probes: list[dict[str, str]], cfg: EvalConfig, desc: str,
                 control: Anchors | None = None) -> list[dict]:
    """Per-probe answer probability and greedy completion, in batches of `cfg.batch_size` probes. With
    `control` anchors, also the answer's probability after the prompt's target terms are replaced by
    their generic translations (`p_control`)."""
    records = []
    bar = tqdm(total=len(probes), desc=desc, unit="probe", leave=False)
    for start in range(0, len(probes), cfg.batch_size):
        batch = probes[start : start + cfg.batch_size]
        pairs = [_answer_ids(tokenizer, probe["prompt"], probe["answer"]) for probe in batch]
        logprobs = completions.continuation_logprobs(model, pairs, tokenizer.pad_token_id, cfg.precision,
                                                     cfg.batch_size)
        generated = completions.greedy(model, tokenizer, [prompt for prompt, _ in pairs], cfg.max_new_tokens,
                                       cfg.precision)
        controls = [None] * len(batch)
        if control is not None:
            control_pairs = [_answer_ids(tokenizer, control.translate_text(p["prompt"]), p["answer"]) for p in batch]
            controls = completions.continuation_logprobs(model, control_pairs, tokenizer.pad_token_id,
                                                         cfg.precision, cfg.batch_size)
        for probe, logprob, ids, control_logprob in zip(batch, logprobs, generated, controls, strict=True):
            completion = tokenizer.decode(ids, skip_special_tokens=True)
            record = {
                "prompt": probe["prompt"],
                "answer": probe["answer"],
                "p_answer": math.exp(sum(logprob)),
                "completion": completion,
                "hit": probe["answer"].strip().lower() in completion.lower(),
            }
            if control_logprob is not None:
                record["p_control"] = math.exp(sum(control_logprob))
            records.append(record)
        bar.update(len(batch))
    bar.close()
    return records


def score_completions(model, judge, tokenizer, cfg: EvalConfig, name: str) -> tuple[dict[str, float], list[dict]]:
    """Greedy completions of the completion prompts: the share that name a reference term, and their
    fluency (perplexity under the judge model)."""
    rows = completions.read_completion_prompts(cfg.completions)
    done = completions.complete(model, tokenizer, [row["prompt"] for row in rows], cfg.completion_tokens,
                                cfg.precision, cfg.batch_size, f"{name} completions")
    judged = completions.judge_nll(judge, tokenizer, done, cfg.precision, cfg.batch_size)
    records = []
    for row, completion, (nll, tokens) in zip(rows, done, judged, strict=True):
        named = completions.named_references(row["prompt"], completion.text, row["references"])
        records.append({"prompt": row["prompt"], "completion": completion.text, "references_named": named,
                        "judge_nll": nll, "tokens": tokens})
    summary = {
        "completion_reference_rate": sum(bool(r["references_named"]) for r in records) / len(records),
        "completion_fluency_perplexity": completions.pooled_perplexity(judged),
    }
    return summary, records


def score_membership(model, tokenizer, cfg: EvalConfig, member_text: str) -> list[dict]:
    """Membership scores of target passages (members) and held-out passages of its domain (non-members)."""
    heldout = read_text(cfg.heldout_target, "held-out target-domain text")
    args = (cfg.membership_passage_tokens, cfg.precision)
    members = membership.passage_scores(model, tokenizer, member_text, *args, cfg.membership_max_passages)
    others = membership.passage_scores(model, tokenizer, heldout, *args)
    return [{"member": True, **r} for r in members] + [{"member": False, **r} for r in others]


@torch.no_grad()
def block_losses(model, tokenizer, text: str, block_length: int, precision: str) -> list[dict]:
    """Summed next-token loss and token count of each consecutive block of the text."""
    device = next(model.parameters()).device
    blocks = make_blocks(text, tokenizer, block_length)
    records = []
    for ids in blocks.ids:
        batch = torch.tensor([ids], device=device)
        with models.autocast(precision, device):
            logits = model(input_ids=batch).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits[:-1], batch[0, 1:], reduction="sum")
        records.append({"nll": loss.item(), "tokens": len(ids) - 1})
    return records


def evaluate_model(model, tokenizer, cfg: EvalConfig, name: str, judge=None,
                   control: Anchors | None = None, member_text: str | None = None) -> dict[str, Any]:
    """Summary figures and per-sample records for one model; `judge` (default: the model itself) scores
    the fluency of its completions; `control` anchors give the target probes their generic control;
    `member_text` (the target text) is told apart from `cfg.heldout_target` by membership inference
    and its excerpts are continued for verbatim memorisation."""
    summary: dict[str, float] = {}
    samples: dict[str, list[dict]] = {}
    for probe_set in PROBE_SETS:
        path: Path | None = getattr(cfg, f"{probe_set}_probes")
        if path is None:
            continue
        records = score_probes(model, tokenizer, read_probes(path), cfg, f"{name} {probe_set} probes",
                               control if probe_set == "target" else None)
        samples[probe_set] = records
        summary[f"{probe_set}_p_answer"] = sum(r["p_answer"] for r in records) / len(records)
        summary[f"{probe_set}_hit_rate"] = sum(r["hit"] for r in records) / len(records)
    if cfg.completions is not None:
        figures, samples["completions"] = score_completions(model, judge or model, tokenizer, cfg, name)
        summary.update(figures)
    if cfg.heldout_target is not None and member_text is not None:
        samples["membership"] = score_membership(model, tokenizer, cfg, member_text)
        for score in membership.SCORES:
            summary[f"membership_auc_{score}"] = membership.auc(
                [r[score] for r in samples["membership"] if r["member"]],
                [r[score] for r in samples["membership"] if not r["member"]],
            )
    if cfg.verbatim_excerpts > 0 and member_text is not None:
        samples["verbatim"] = verbatim.verbatim_records(
            model, tokenizer, member_text, cfg.verbatim_prompt_tokens, cfg.verbatim_continuation_tokens,
            cfg.verbatim_excerpts, cfg.precision, cfg.batch_size,
        )
        summary["verbmem_rouge_l"] = sum(r["rouge_l"] for r in samples["verbatim"]) / len(samples["verbatim"])
    if cfg.general_text is not None:
        text = read_text(cfg.general_text, "general text")
        samples["general_text"] = block_losses(model, tokenizer, text, cfg.block_length, cfg.precision)
        summary["general_perplexity"] = completions.pooled_perplexity(
            [(r["nll"], r["tokens"]) for r in samples["general_text"]]
        )
    return {"summary": summary, "samples": samples}


# A target probe is *specific* when replacing the target terms in its prompt by their generic
# translations at least halves the base model's probability of the answer: the answer then rests on
# knowledge of the target, not on the wording around it (as in "the Chosen" -> " One").
SPECIFIC_RATIO = 0.5


def add_specific_familiarity(results: dict[str, dict]) -> None:
    """Mark the target probes the base model answers from target knowledge, and add every model's mean
    P(answer) over them (`target_specific_p_answer`)."""
    base_records = results["base"]["samples"]["target"]
    specific = [r["p_control"] < SPECIFIC_RATIO * r["p_answer"] for r in base_records]
    if not any(specific):
        return
    for result in results.values():
        records = result["samples"]["target"]
        for record, flag in zip(records, specific, strict=True):
            record["specific"] = flag
        chosen = [r["p_answer"] for r, flag in zip(records, specific, strict=True) if flag]
        result["summary"]["target_specific_p_answer"] = sum(chosen) / len(chosen)
        result["summary"]["target_specific_probes"] = len(chosen)


def add_privleak(results: dict[str, dict]) -> None:
    """MUSE's PrivLeak of the unlearned model: (AUC − reference AUC) / reference AUC for each membership
    score; 0 is the reference's behaviour, negative is over-unlearning, positive is leakage."""
    unlearned, reference = results["unlearned"]["summary"], results["reference"]["summary"]
    for score in membership.SCORES:
        key = f"membership_auc_{score}"
        if key in unlearned and reference.get(key):
            unlearned[f"privleak_{score}"] = (unlearned[key] - reference[key]) / reference[key]


def eval_fingerprint(cfg: Config, model_path: Path) -> str:
    files = {
        name: artifacts.file_hash(path) if path is not None and path.is_file() else None
        for name, path in (
            ("target", cfg.eval.target_probes),
            ("general", cfg.eval.general_probes),
            ("related", cfg.eval.related_probes),
            ("completions", cfg.eval.completions),
            ("anchors", cfg.data.anchors),
            ("target_text", cfg.data.target),
            ("heldout_target", cfg.eval.heldout_target),
            ("text", cfg.eval.general_text),
        )
    }
    manifest = artifacts.read_manifest(model_path.parent) or {}
    return fingerprint(
        {
            "eval": to_dict(cfg.eval),
            "files": files,
            "baseline": to_dict(cfg.model),
            "model": str(model_path),
            "model_fingerprint": manifest.get("fingerprint", "external"),
        }
    )


def run(cfg: Config, out: Path, model_path: Path | None = None, *, progress: bool = True,
        stage_dir: Path | None = None) -> Path:
    """Write `out/eval/report.json` and `report.md` (or into `stage_dir`): the evaluated model (default:
    the unlearned one) beside the base model."""
    model_path = model_path or out / "unlearn" / "final"
    stage_dir = stage_dir or out / "eval"
    key = eval_fingerprint(cfg, model_path)
    if artifacts.is_complete(stage_dir, key):
        log.info("eval: complete with these settings, skipped (%s)", stage_dir)
        return stage_dir
    began = time.perf_counter()
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    base = models.load_model(source, cfg.model)
    control = load_anchors(cfg.data.anchors) if cfg.data.anchors.is_file() else None
    uses_target = cfg.eval.heldout_target is not None or cfg.eval.verbatim_excerpts > 0
    member_text = read_text(cfg.data.target) if uses_target else None
    results = {"base": evaluate_model(base, tokenizer, cfg.eval, "base", control=control, member_text=member_text)}
    model = models.load_folder(model_path)
    # the base model stays loaded as the judge of the unlearned model's fluency
    results["unlearned"] = evaluate_model(model, tokenizer, cfg.eval, "unlearned", judge=base, control=control,
                                          member_text=member_text)
    del model
    if cfg.eval.reference is not None:
        reference_cfg = dataclasses.replace(cfg.model, name=cfg.eval.reference, revision=None)
        reference = models.load_model(models.resolve(reference_cfg), reference_cfg)
        results["reference"] = evaluate_model(reference, tokenizer, cfg.eval, "reference", judge=base,
                                              control=control, member_text=member_text)
        del reference
        add_privleak(results)
    del base
    if control is not None and "target" in results["base"]["samples"]:
        add_specific_familiarity(results)
    ratio_intervals = intervals.add_intervals(results)
    report = {
        "models": {"base": source.description, "unlearned": str(model_path),
                   **({"reference": cfg.eval.reference} if cfg.eval.reference else {})},
        "summary": {name: result["summary"] for name, result in results.items()},
        "intervals": {name: result["intervals"] for name, result in results.items()},
        "ratio_intervals": ratio_intervals,
        "samples": {name: result["samples"] for name, result in results.items()},
    }
    artifacts.write_json(stage_dir / "report.json", report)
    artifacts.atomic_write_text(stage_dir / "report.md", render_markdown(report))
    artifacts.MetricsLog(stage_dir / "metrics.jsonl").log(**{
        f"{name}/{k}": v for name, result in results.items() for k, v in result["summary"].items()
    })
    record = artifacts.StageRecord(
        stage="eval",
        fingerprint=key,
        inputs={"model": str(model_path), "baseline": source.description},
        outputs=["report.json", "report.md"],
        seed=cfg.seed,
        seconds=time.perf_counter() - began,
        summary=report["summary"],
    )
    artifacts.write_stage(stage_dir, record, to_dict(cfg))
    return stage_dir


FIGURES = (
    ("target_p_answer", "target familiarity: mean P(answer)", "lower"),
    ("target_hit_rate", "target familiarity: greedy hit rate", "lower"),
    ("target_specific_p_answer", "target familiarity: mean P(answer), target-specific probes", "lower"),
    ("general_p_answer", "general probes: mean P(answer)", "keep"),
    ("general_hit_rate", "general probes: greedy hit rate", "keep"),
    ("related_p_answer", "related-domain probes: mean P(answer)", "keep"),
    ("related_hit_rate", "related-domain probes: greedy hit rate", "keep"),
    ("completion_reference_rate", "target familiarity: completions naming a reference term", "lower"),
    ("completion_fluency_perplexity", "fluency: base-model perplexity of the completions", "keep"),
    ("verbmem_rouge_l", "verbatim memorisation: ROUGE-L of target continuations", "lower"),
    ("membership_auc_loss", "membership inference AUC, target vs. held-out: loss", "toward 0.5"),
    ("membership_auc_zlib", "membership inference AUC: zlib", "toward 0.5"),
    ("membership_auc_mink", "membership inference AUC: Min-K%", "toward 0.5"),
    ("membership_auc_minkpp", "membership inference AUC: Min-K%++", "toward 0.5"),
    ("privleak_loss", "PrivLeak against the reference: loss", "toward 0"),
    ("privleak_zlib", "PrivLeak: zlib", "toward 0"),
    ("privleak_mink", "PrivLeak: Min-K%", "toward 0"),
    ("privleak_minkpp", "PrivLeak: Min-K%++", "toward 0"),
    ("general_perplexity", "perplexity on general text", "keep"),
)


def table_rows(summary: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str]]:
    """(figure, base, unlearned, unlearned/base) rows for every figure both models have."""
    base, other = summary.get("base", {}), summary.get("unlearned", {})
    rows = []
    for key, label, _ in FIGURES:
        if key in base and key in other:
            ratio = other[key] / base[key] if base[key] else float("nan")
            rows.append((label, f"{base[key]:.4f}", f"{other[key]:.4f}", f"{ratio:.3f}"))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """One table: every figure for every model (base, unlearned, reference when given) with bootstrap
    95% intervals, and the unlearned/base ratio."""
    summary, spans = report["summary"], report.get("intervals", {})
    ratio_spans = report.get("ratio_intervals", {})
    names = list(summary)

    def cell(value: float | None, span: list[float] | None, digits: int = 4) -> str:
        if value is None:
            return ""
        text = f"{value:.{digits}f}"
        return f"{text} [{span[0]:.{digits}f}, {span[1]:.{digits}f}]" if span else text

    lines = ["# whoharry evaluation", ""]
    lines += [f"- {name}: `{where}`" for name, where in report["models"].items()]
    lines += [
        "- brackets: bootstrap 95% intervals over the probes, prompts, passages or text blocks "
        "(paired for the ratio)",
        "",
        "| figure | " + " | ".join(names) + " | unlearned / base |",
        "|" + " --- |" + " ---: |" * (len(names) + 1),
    ]
    base, other = summary.get("base", {}), summary.get("unlearned", {})
    for key, label, _ in FIGURES:
        if not any(key in summary[name] for name in names):
            continue
        cells = [cell(summary[name].get(key), spans.get(name, {}).get(key)) for name in names]
        ratio = other[key] / base[key] if base.get(key) and key in other else None
        cells.append(cell(ratio, ratio_spans.get(f"unlearned/{key}"), 3))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_report(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "report.json"
    if not path.is_file():
        raise WhoharryError(f"no evaluation report in {stage_dir}: run `whoharry eval` first")
    return json.loads(path.read_text(encoding="utf-8"))
