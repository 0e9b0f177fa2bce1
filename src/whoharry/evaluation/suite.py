"""The parts of the evaluation suite, each a function of one model returning (summary figures, per-sample
records), cached by `whoharry.evaluation.context` so that a rerun, or a run in another folder for the base
model, skips the finished ones. Parts, in order:

    probes       target, general and related token-probability probes (whoharry.evaluation.probes)
    completions  greedy completions scored by the offline judge (and the LLM judge when configured),
                 and their fluency under the base model: after the target prompts, like with like after the
                 translated prompts, and on general prompts (whoharry.evaluation.completions, judge)
    sampling     sampled completions scored by the offline judge
    knowmem      answers to questions about the target (whoharry.evaluation.knowmem)
    robustness   the target facts paraphrased, after a hint, and few-shot (whoharry.evaluation.probes)
    prompts      the target probes after a jailbreak preamble, a summary, many solved probes
                 (whoharry.evaluation.prompts)
    verbatim     continuations of target excerpts (whoharry.evaluation.verbatim)
    membership   target text against held-out text of its domain (whoharry.evaluation.membership)
    utility      perplexity on general text
    latent       the logit lens: the answers' ranks read from every layer (whoharry.evaluation.latent)
    quantization the target and general probes after rounding the weights to GGUF types
                 (whoharry.evaluation.quantization)
    benchmarks   lm-eval tasks (whoharry.evaluation.benchmarks)
    relearning   familiarity after fine-tuning on target blocks, held-out text or half the facts
                 (whoharry.evaluation.relearning); runs last, as it changes the model
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from whoharry.config import EvalConfig
from whoharry.core import models
from whoharry.core.text import make_blocks, read_text
from whoharry.evaluation import (
    benchmarks,
    completions,
    judges,
    knowmem,
    latent,
    membership,
    probes,
    prompts,
    quantization,
    relearning,
    verbatim,
)
from whoharry.evaluation.context import (  # noqa: F401 - the cache's names, used here and re-exported
    COMMON_FIELDS,
    PART_INPUTS,
    Context,
    Part,
    part_fingerprint,
    part_inputs,
    shared_parts_dir,
    value_key,
)
from whoharry.evaluation.probes import PROBE_SETS
from whoharry.method.objectives import causal_lm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from whoharry.method.inference import CausalLM

log = logging.getLogger(__name__)


def _mean(records: list[dict], field: str) -> float:
    return sum(float(r[field]) for r in records) / len(records)


def _naming_share(records: list[dict]) -> float:
    """The share of completions that name at least one of their prompt's reference terms."""
    return sum(bool(r["references_named"]) for r in records) / len(records)


def part_probes(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """Token-probability familiarity (`evaluation.probes`) on the target, general and related probe files."""
    summary, samples = {}, {}
    for probe_set in PROBE_SETS:
        path: Path | None = getattr(ctx.eval.probes, probe_set)
        if path is None:
            continue
        rows = probes.read_probes(path, ctx.eval.max_samples)
        control = ctx.control if probe_set == "target" else None
        samples[probe_set] = probes.score_probes(model, tokenizer, rows, ctx.eval, f"{name} {probe_set} probes",
                                                 control, progress=ctx.progress)
        summary.update(probes.summarize(probe_set, samples[probe_set]))
    return summary, samples


def _judged(ctx: Context, done: list[completions.Completion], rows: list[dict]) -> list[dict]:
    """Completion records with the offline judge's 0–3 score and the target terms named."""
    terms = [*(ctx.control.entries if ctx.control else []), *ctx.eval.completions.judge_terms]
    out = []
    for row, completion in zip(rows, done, strict=True):
        score, named = judges.score(row["prompt"], completion.text, row["references"], terms)
        out.append({"prompt": row["prompt"], "completion": completion.text,
                    "references_named": completions.named_references(row["prompt"], completion.text,
                                                                     row["references"]),
                    "judge_score": score, "terms_named": named})
    return out


def part_completions(model: CausalLM, judge_model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context,
                     name: str, reference: bool = False) -> Part:
    """Greedy completions scored by the offline judge, and three fluency figures under the judge model (the
    base), each the pooled perplexity of the completion tokens (`completions.pooled_perplexity`):

    - `completion_fluency_perplexity`: the completions of the target prompts read after those prompts. A
      model that forgot writes a generic continuation that the base finds unlikely there: forgetting counts
      as disfluency.
    - `completion_fluency_generic_perplexity` (like with like): the same completions read after the prompt
      translated through the anchor dictionary (`Anchors.translate_text`), where a generic continuation
      belongs; the `reference` model (the base) is scored on its own completion of the translated prompt.
    - `general_fluency_perplexity`: completions of prompts of general text (`eval.completions.general_prompts`).
    """
    cfg = ctx.eval
    rows = completions.read_completion_prompts(cfg.completions.prompts)[: cfg.max_samples]
    prompts = [row["prompt"] for row in rows]
    done, judged = _complete_and_judge(model, judge_model, tokenizer, ctx, prompts, f"{name} completions")
    records = _judged(ctx, done, rows)
    for record, (nll, tokens) in zip(records, judged, strict=True):
        record.update(judge_nll=nll, tokens=tokens)
    summary = {
        "completion_reference_rate": _naming_share(records),
        "completion_judge_score": _mean(records, "judge_score"),
        "completion_fluency_perplexity": completions.pooled_perplexity(judged),
    }
    samples: dict[str, Any] = {"completions": records}
    if ctx.control is not None:
        generic = [ctx.control.translate_text(prompt) for prompt in prompts]
        if reference:  # its own completions of the translated prompts, read after them
            read_after, scored = _complete_and_judge(model, judge_model, tokenizer, ctx, generic,
                                                     f"{name} translated completions")
        else:
            read_after = [completions.Completion(prompt, completions.prompt_ids(tokenizer, prompt), c.ids, c.text)
                          for prompt, c in zip(generic, done, strict=True)]
            scored = completions.judge_nll(judge_model, tokenizer, read_after, cfg.precision, cfg.batch_size)
        for record, c, (nll, tokens) in zip(records, read_after, scored, strict=True):
            record.update(translated_prompt=c.prompt, generic_completion=c.text, generic_nll=nll,
                          generic_tokens=tokens)
        summary["completion_fluency_generic_perplexity"] = completions.pooled_perplexity(scored)
    if cfg.completions.general_prompts is not None:
        general_rows = completions.read_completion_prompts(cfg.completions.general_prompts)[: cfg.max_samples]
        general, scored = _complete_and_judge(model, judge_model, tokenizer, ctx,
                                              [row["prompt"] for row in general_rows], f"{name} general completions")
        samples["general_completions"] = [{"prompt": c.prompt, "completion": c.text, "judge_nll": nll,
                                           "tokens": tokens} for c, (nll, tokens) in zip(general, scored, strict=True)]
        summary["general_fluency_perplexity"] = completions.pooled_perplexity(scored)
    return summary, samples


def _complete_and_judge(model: CausalLM, judge_model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context,
                        prompts: list[str], desc: str) -> tuple[list[completions.Completion], list[tuple[float, int]]]:
    """Greedy completions of `prompts` and, per completion, the judge model's (nll in nats, token count)."""
    cfg = ctx.eval
    done = completions.complete(model, tokenizer, prompts, cfg.completions.tokens, cfg.precision, cfg.batch_size,
                                desc, progress=ctx.progress)
    return done, completions.judge_nll(judge_model, tokenizer, done, cfg.precision, cfg.batch_size)


def part_sampling(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """`eval.sampling.samples` sampled completions of each prompt, scored by the offline judge."""
    cfg = ctx.eval
    rows = completions.read_completion_prompts(cfg.completions.prompts)[: cfg.max_samples]
    rows = [row for row in rows for _ in range(cfg.sampling.samples)]
    done = completions.complete(model, tokenizer, [row["prompt"] for row in rows], cfg.completions.tokens,
                                cfg.precision, cfg.batch_size, f"{name} sampled completions",
                                cfg.sampling.temperature, ctx.seed, progress=ctx.progress)
    records = _judged(ctx, done, rows)
    summary = {"completion_reference_rate_sampled": _naming_share(records),
               "completion_judge_score_sampled": _mean(records, "judge_score")}
    return summary, {"completions_sampled": records}


def part_llm_judge(records: list[dict], ctx: Context) -> Part:
    """The LLM judge's 0–3 scores of the greedy completions."""
    cfg, judge = ctx.eval, ctx.eval.llm_judge
    judge_cfg = judges.LLMJudgeConfig(base_url=judge.url or "", model=judge.model, rubric=judge.rubric,
                                      api_key_env=judge.key_env)
    prompts = {row["prompt"]: row["references"]
               for row in completions.read_completion_prompts(cfg.completions.prompts)}
    items = [{"prompt": r["prompt"], "completion": r["completion"], "references": prompts.get(r["prompt"], [])}
             for r in records]
    scored = judges.judge_completions(judge_cfg, cfg.target_name, items, progress=ctx.progress)
    merged = [{"prompt": r["prompt"], "completion": r["completion"], **s} for r, s in zip(records, scored, strict=True)]
    return {"completion_llm_score": _mean(merged, "llm_score")}, {"completions_llm": merged}


def part_knowmem(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """KnowMem (MUSE, Shi et al. 2024): ROUGE-L F1 of the model's answers to questions about the target."""
    shown, questions = knowmem.read_with_shots(ctx.eval.knowmem.qa, ctx.eval.knowmem.shots, ctx.eval.max_samples)
    records = knowmem.knowmem_records(model, tokenizer, questions, ctx.eval.knowmem.tokens, ctx.eval.precision,
                                      ctx.eval.batch_size, f"{name} questions", progress=ctx.progress, examples=shown)
    return {"knowmem_rouge_l": _mean(records, "rouge_l")}, {"knowmem": records}


def part_robustness(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """The target facts asked indirectly (paraphrased probe file), after a hint text, and few-shot."""
    cfg, robust = ctx.eval, ctx.eval.robustness
    variants: dict[str, list[dict[str, str]]] = {}
    if robust.paraphrased is not None:
        variants["paraphrased"] = probes.read_probes(robust.paraphrased, cfg.max_samples)
    target = probes.read_probes(cfg.probes.target, cfg.max_samples) if cfg.probes.target is not None else []
    if target and robust.hint is not None:
        variants["hinted"] = probes.with_hint(target, read_text(robust.hint, "hint text"))
    if len(target) > 1 and robust.fewshot > 0:
        variants["fewshot"] = probes.few_shot(target, robust.fewshot)
    summary, samples = {}, {}
    for variant, rows in variants.items():
        samples[variant] = probes.score_probes(model, tokenizer, rows, cfg, f"{name} {variant} probes",
                                               progress=ctx.progress)
        summary.update(probes.summarize(variant, samples[variant]))
    return summary, samples


def part_prompts(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """The target probes in adversarial prompt forms (`evaluation.prompts`): `prompt_{form}_p_answer`."""
    target = probes.read_probes(ctx.eval.probes.target, ctx.eval.max_samples)
    summary, samples = {}, {}
    for form, rows in prompts.attack_forms(target, ctx.eval).items():
        records = probes.score_probes(model, tokenizer, rows, ctx.eval, f"{name} {form} prompts", greedy=False,
                                      progress=ctx.progress)
        samples[f"prompt_{form}"] = records
        summary[prompts.figure_key(form)] = _mean(records, "p_answer")
    return summary, samples


def part_latent(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """The logit lens on the target probes (`evaluation.latent`): `latent_p_first`, `latent_top_rate`."""
    rows = probes.read_probes(ctx.eval.probes.target, ctx.eval.max_samples)
    records = latent.lens_records(model, tokenizer, rows, top=ctx.eval.latent.top, precision=ctx.eval.precision,
                                  batch_size=ctx.eval.batch_size, desc=f"{name} logit lens", progress=ctx.progress)
    return latent.summarize(records), {"latent": records}


def part_verbatim(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """VerbMem (MUSE, Shi et al. 2024): ROUGE-L F1 of greedy continuations of target excerpts."""
    cfg = ctx.eval
    records = verbatim.verbatim_records(model, tokenizer, ctx.member_text or "", cfg.verbatim.prompt_tokens,
                                        cfg.verbatim.continuation_tokens, cfg.verbatim.excerpts, cfg.precision,
                                        cfg.batch_size, desc=f"{name} verbatim", progress=ctx.progress)
    return {"verbmem_rouge_l": _mean(records, "rouge_l")}, {"verbatim": records}


def part_membership(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """Membership scores of target passages (members) and held-out passages of its domain (non-members)."""
    cfg = ctx.eval
    heldout = read_text(cfg.membership.heldout, "held-out target-domain text")
    args, k = (cfg.membership.passage_tokens, cfg.precision), cfg.membership.k_fraction
    members = membership.passage_scores(model, tokenizer, ctx.member_text or "", *args, cfg.membership.max_passages,
                                        desc=f"{name} target passages", progress=ctx.progress, k_fraction=k)
    others = membership.passage_scores(model, tokenizer, heldout, *args, desc=f"{name} held-out passages",
                                       progress=ctx.progress, k_fraction=k)
    records = [{"member": True, **r} for r in members] + [{"member": False, **r} for r in others]
    summary = {f"membership_auc_{score}": membership.auc([r[score] for r in records if r["member"]],
                                                         [r[score] for r in records if not r["member"]])
               for score in membership.SCORES}
    return summary, {"membership": records}


@torch.no_grad()
def block_losses(model: CausalLM, tokenizer: PreTrainedTokenizerBase, text: str, block_length: int,
                 precision: str, *, desc: str = "blocks", progress: bool = False) -> list[dict]:
    """Each consecutive block of the text (`core.text.make_blocks`, the tail dropped): its summed next-token
    cross-entropy `nll` (nats) and the tokens it predicts (`tokens`, block length - 1)."""
    device = next(model.parameters()).device
    records = []
    for ids in tqdm(make_blocks(text, tokenizer, block_length).ids, desc=desc, unit="block", leave=False,
                    disable=not progress):
        batch = torch.tensor([ids], device=device)
        with models.autocast(precision, device):
            logits = model(input_ids=batch).logits
        loss = causal_lm_loss(logits, batch, reduction="sum")
        records.append({"nll": loss.item(), "tokens": len(ids) - 1})
    return records


def part_utility(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """Utility: the pooled perplexity of the general text (exp of total nll over total tokens)."""
    text = read_text(ctx.eval.utility.general_text, "general text")
    records = block_losses(model, tokenizer, text, ctx.eval.block_length, ctx.eval.precision,
                           desc=f"{name} general text", progress=ctx.progress)
    return ({"general_perplexity": completions.pooled_perplexity([(r["nll"], r["tokens"]) for r in records])},
            {"general_text": records})


def part_quantization(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str) -> Part:
    """The quantization attack (`evaluation.quantization`): for each type, the target and general probes
    scored on a copy of the model rounded through it (`quant_{type}_{set}_p_answer`)."""
    summary, samples = {}, {}
    for gguf_type in ctx.eval.quantization.types:
        rounded = quantization.round_trip(model, gguf_type)
        for probe_set in quantization.PROBE_SETS:
            path: Path | None = getattr(ctx.eval.probes, probe_set)
            if path is None:
                continue
            rows = probes.read_probes(path, ctx.eval.max_samples)
            records = probes.score_probes(rounded, tokenizer, rows, ctx.eval, f"{name} {gguf_type} {probe_set} probes",
                                          greedy=False, progress=ctx.progress)
            key = quantization.figure_key(gguf_type, probe_set)
            samples[key.removesuffix("_p_answer")] = records
            summary[key] = _mean(records, "p_answer")
        del rounded
    return summary, samples


def part_benchmark(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, task: str) -> Part:
    """One lm-eval task's main figure and its ± 1.96 standard-error interval (`evaluation.benchmarks`)."""
    figures, spans = benchmarks.run_tasks(model, tokenizer, [task], ctx.eval.benchmarks.limit, ctx.eval.batch_size)
    return figures, {"benchmark_intervals": spans}


def part_relearning(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str,
                    source: str) -> Part:
    """Relearning (`evaluation.relearning`) from one source: target P(answer) while the model is fine-tuned
    on it; the figure `relearn_{source}_p_answer` is the mean after the last step (over the scored half of
    the probes for `facts`)."""
    cfg = ctx.eval
    rows = probes.read_probes(cfg.probes.target, cfg.max_samples)
    count = cfg.relearning.blocks
    if source == "facts":
        trained, rows = relearning.halves(rows)
        ids = relearning.fact_blocks(trained, tokenizer, cfg.block_length, count, ctx.seed)
    else:
        text = (ctx.member_text or "") if source == "target" else read_text(cfg.membership.heldout, "held-out text")
        ids = relearning.relearn_blocks(text, tokenizer, cfg.block_length, count)
    curve = relearning.relearn_curve(model, tokenizer, ids, rows, cfg, seed=ctx.seed,
                                     work_dir=ctx.folder / "relearning" / name / source, desc=f"{name} relearning "
                                     f"({source})", progress=ctx.progress)
    return {relearning.figure_key(source): sum(curve[-1]["p_answer"]) / len(rows)}, {relearning.sample_kind(source):
                                                                                      curve}


def wanted(cfg: EvalConfig, part: str, member_text: str | None) -> bool:
    """Whether a part is asked for and has its inputs."""
    if part not in cfg.parts:
        return False
    if part == "relearning":  # reads the probe file (the facts need two): only when asked about this part
        return cfg.probes.target is not None and bool(relearning.sources(cfg, member_text))
    needs = {
        "probes": any(getattr(cfg.probes, s) is not None for s in PROBE_SETS),
        "completions": cfg.completions.prompts is not None,
        "sampling": cfg.completions.prompts is not None,
        "knowmem": cfg.knowmem.qa is not None,
        "robustness": cfg.robustness.paraphrased is not None or (cfg.probes.target is not None and (
            cfg.robustness.hint is not None or cfg.robustness.fewshot > 0)),
        "prompts": cfg.probes.target is not None and (cfg.prompts.preamble is not None
                                                      or cfg.prompts.summary is not None or cfg.prompts.shots > 0),
        "latent": cfg.probes.target is not None,
        "verbatim": cfg.verbatim.excerpts > 0 and member_text is not None,
        "membership": cfg.membership.heldout is not None and member_text is not None,
        "utility": cfg.utility.general_text is not None,
        "quantization": cfg.probes.target is not None or cfg.probes.general is not None,
        "benchmarks": bool(cfg.benchmarks.tasks),
    }
    return needs[part]


def evaluate_model(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str, model_id: str,
                   judge_model: CausalLM | None = None, *, reference: bool = False) -> dict[str, Any]:
    """Every asked-for part except latent, quantization, benchmarks and relearning (see `finish_model`), for one model;
    `judge_model` (default: the model itself) scores the fluency of its completions; the `reference` model
    (the base) is judged like with like on its completions of the translated prompts (`part_completions`)."""
    cfg, result = ctx.eval, {"summary": {}, "samples": {}}

    def add(part: str, compute: Callable[[], Part]) -> None:
        summary, samples = ctx.cached(name, model_id, part, compute, reference=reference and part == "completions")
        result["summary"].update(summary)
        result["samples"].update(samples)

    if wanted(cfg, "probes", ctx.member_text):
        add("probes", lambda: part_probes(model, tokenizer, ctx, name))
    if wanted(cfg, "completions", ctx.member_text):
        add("completions", lambda: part_completions(model, judge_model or model, tokenizer, ctx, name, reference))
        if cfg.llm_judge.url:
            add("llm_judge", lambda: part_llm_judge(result["samples"]["completions"], ctx))
    for part, compute in (("sampling", part_sampling), ("knowmem", part_knowmem), ("robustness", part_robustness),
                          ("prompts", part_prompts), ("verbatim", part_verbatim), ("membership", part_membership),
                          ("utility", part_utility)):
        if wanted(cfg, part, ctx.member_text):
            add(part, lambda compute=compute: compute(model, tokenizer, ctx, name))
    return result


def finish_model(model: CausalLM, tokenizer: PreTrainedTokenizerBase, ctx: Context, name: str, model_id: str,
                 result: dict[str, Any]) -> None:
    """The logit lens, quantization, the benchmarks, then relearning from each source, which fine-tunes the model
    (a copy for every source but the last; the last fine-tunes the model in place, so it comes last). None
    applies to a two-model ensemble: it has no layers of its own to read, nor weights to round, fine-tune or
    hand to lm-eval."""
    cfg = ctx.eval
    if getattr(model, "models_per_token", 1) > 1:
        log.info("eval: %s is an ensemble; latent, quantization, benchmarks and relearning skipped", name)
        return
    for part, compute in (("latent", part_latent), ("quantization", part_quantization)):
        if wanted(cfg, part, ctx.member_text):
            summary, samples = ctx.cached(name, model_id, part,
                                          lambda compute=compute: compute(model, tokenizer, ctx, name))
            result["summary"].update(summary)
            result["samples"].update(samples)
    if wanted(cfg, "benchmarks", ctx.member_text):
        for task in cfg.benchmarks.tasks:
            summary, samples = ctx.cached(name, model_id, f"benchmark-{task}",
                                          lambda task=task: part_benchmark(model, tokenizer, ctx, task))
            result["summary"].update(summary)
            result.setdefault("benchmark_intervals", {}).update(samples["benchmark_intervals"])
    if wanted(cfg, "relearning", ctx.member_text):
        sources = relearning.sources(cfg, ctx.member_text)
        for i, source in enumerate(sources):
            last = i == len(sources) - 1

            def compute(source: str = source, last: bool = last) -> Part:
                return part_relearning(model if last else copy.deepcopy(model), tokenizer, ctx, name, source)

            summary, samples = ctx.cached(name, model_id, relearning.part_name(source), compute)
            result["summary"].update(summary)
            result["samples"].update(samples)
