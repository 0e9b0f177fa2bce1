"""Every figure the evaluation and the retrain-gap experiment report, in one table.

A `Figure` says what a summary key means and how to read it: its label, its unit and source, what
unlearning should do to it (`direction`), how its bootstrap interval resamples the per-sample records
(`resampling`), its short heading and digits in compact tables, and whether the comparison plot draws
familiarity against it (`utility`). `report`, `intervals`, `plots`, `compare` and
`experiments.gap_report` all read this table; none keeps its own list of figures.

- `FIGURES`: the evaluation's figures (`report.json`'s `summary` keys), in the order `report.md` lists
  them; the lm-eval figures (`lmeval_{task}_{metric}`) are made on demand by `lookup`.
- `GAP_FIGURES`: the figures only the retrain-gap experiment has: distances to the gold model (the
  model trained without the forget text), divergences and costs.

Sources: "the paper" is Eldan & Russinovich 2023, *Who's Harry Potter? Approximate Unlearning in LLMs*
(its "Evaluation methodology": completion-based and token-probability-based familiarity, and general
benchmarks); MUSE is Shi et al. 2024, *Machine Unlearning Six-Way Evaluation for Language Models*
(criteria C1 VerbMem, C2 KnowMem, C3 PrivLeak); Lynch et al. 2024 is *Eight Methods to Evaluate Robust
Unlearning in LLMs* (robustness to other phrasings and relearning); the membership scores are the loss,
zlib (Carlini et al. 2021, *Extracting Training Data from Large Language Models*), Min-K% (Shi et al.
2024, *Detecting Pretraining Data from Large Language Models*) and Min-K%++ (Zhang et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from whoharry.config.choices import GGUF_TYPES
from whoharry.evaluation import prompts, quantization, relearning

# What unlearning should do to a figure: "lower" (forgetting), "keep" (general ability, higher is
# better), "keep low" (lower is better and should not rise: perplexities, costs), "toward 0.5" (a
# membership AUC: chance) or "toward 0" (PrivLeak, distances to the gold model).
Direction = Literal["lower", "keep", "keep low", "toward 0.5", "toward 0"]

# How a figure is computed from its records, each record one sample (probe, completion, passage, block):
# "mean" of the field; "rate": the share of records whose field is truthy; "reciprocal rank": the mean
# of 1 / field; "perplexity": exp(sum field / sum tokens); "auc": the Mann-Whitney AUC of the field,
# members (records whose `group` field is true) against the others; "last mean": the mean of the list
# `field` of the last record (relearning's last measurement).
Aggregate = Literal["mean", "rate", "reciprocal rank", "perplexity", "auc", "last mean"]


@dataclass(frozen=True)
class Resampling:
    """How a figure's bootstrap interval resamples it: `aggregate` of `field` over the records
    `samples[kind]` (only those whose `subset` field is truthy, when given). A perplexity divides by
    the `tokens` field; an AUC splits the records by their `group` field and resamples each group."""

    kind: str
    field: str
    aggregate: Aggregate = "mean"
    subset: str | None = None
    tokens: str = "tokens"
    group: str = "member"


@dataclass(frozen=True)
class Figure:
    """One figure of a summary.

    Attributes:
        key: its summary key.
        label: its row in report.md, compare.md and the plots' axes.
        direction: what unlearning should do to it (see `Direction`).
        unit: what its number is (a probability, a share, a 0-3 grade, nats per token...).
        source: the paper (and part of it) that defines the metric, or what in whoharry makes it.
        resampling: how its bootstrap interval resamples the records; None when it has no bootstrap
            interval (PrivLeak, lm-eval's own standard errors, counts, the experiment's figures).
        heading: a short column heading for compact tables.
        digits: decimals in compact tables (the retrain-gap table).
        utility: None, or its place (1 first) among the utility figures the comparison plot draws
            familiarity against, a panel each.
        listed: whether report.md, compare.md and the terminal table show it as a row.
    """

    key: str
    label: str
    direction: Direction
    unit: str
    source: str
    resampling: Resampling | None = None
    heading: str = ""
    digits: int = 3
    utility: int | None = None
    listed: bool = True


WHP_TOKENS = "Eldan & Russinovich 2023, evaluation methodology: token-probability-based familiarity"
WHP_COMPLETIONS = "Eldan & Russinovich 2023, evaluation methodology: completion-based familiarity (GPT-4 graded there)"
WHP_GENERAL = "whoharry: the paper's token-probability probes asked of general knowledge (its general capability)"
LYNCH_ROBUST = "Lynch et al. 2024: robustness of unlearning to other phrasings and in-context prompts"
ZHANG_QUANT = ("Zhang et al. 2025, Does your LLM truly unlearn? An embarrassingly simple approach: quantization "
               "brings unlearned knowledge back")
LYNCH_RELEARN = "Lynch et al. 2024: relearning, familiarity after fine-tuning on a slice of the target"
HU_RELEARN = ("Hu et al. 2024, Jogging the memory of unlearned LLMs: relearning from public text about the target, "
              "not the target itself")
DEEB_RELEARN = "Deeb & Roger 2024: training on some facts restores others that were only hidden"
PROMPT_ATTACKS = {
    "preamble": ("after a jailbreak preamble", "jailbreak P",
                 "Lynch et al. 2024, section 4: a permissive system prompt extracts hidden knowledge"),
    "summary": ("after a summary of the target", "summary P",
                "Lynch et al. 2024, section 4: an in-context summary brings the target back"),
    "manyshot": ("after many solved probes", "many-shot P",
                 "Anil et al. 2024, many-shot jailbreaking: a long prefix of solved examples"),
}
LOGIT_LENS = ("nostalgebraist 2020, the logit lens; Lynch et al. 2024, section 4: knowledge still readable inside "
              "the model")
MEMBERSHIP = {
    "loss": "membership inference by the mean token loss (the classic loss attack)",
    "zlib": "Carlini et al. 2021: the loss over the zlib-compressed length",
    "mink": "Min-K% Prob, Shi et al. 2024: the mean of the lowest k% (20%) token log-probabilities",
    "minkpp": "Min-K%++, Zhang et al. 2024: Min-K% over log-probabilities standardised per position",
}
MEMBERSHIP_NAMES = {"loss": "loss", "zlib": "zlib", "mink": "Min-K%", "minkpp": "Min-K%++"}

PROBABILITY = "probability of the answer continuation, 0-1"
RECIPROCAL_RANK = "1 / rank of the answer's first token among all next tokens, 0-1"
HIT_RATE = "share of probes whose greedy completion contains the answer, 0-1"


def _probe_figures(probe_set: str, short: str, prefix: str, what: str, direction: Direction, source: str, *,
                   utility: int | None = None) -> dict[str, Figure]:
    """The three figures of a probe set, by measure: `{probe_set}_p_answer`, `_reciprocal_rank` and
    `_hit_rate`; only the target's reciprocal rank is listed in the reports."""
    return {
        "p_answer": Figure(f"{probe_set}_p_answer", f"{prefix}mean P(answer){what}", direction, PROBABILITY, source,
                           Resampling(probe_set, "p_answer"), f"{short} P", utility=utility),
        "reciprocal_rank": Figure(f"{probe_set}_reciprocal_rank", f"{prefix}mean reciprocal rank of the answer{what}",
                                  direction, RECIPROCAL_RANK, source, Resampling(probe_set, "rank", "reciprocal rank"),
                                  f"{short} RR", listed=probe_set == "target"),
        "hit_rate": Figure(f"{probe_set}_hit_rate", f"{prefix}greedy hit rate{what}", direction, HIT_RATE, source,
                           Resampling(probe_set, "hit", "rate"), f"{short} hit"),
    }


_target = _probe_figures("target", "target", "target familiarity: ", "", "lower", WHP_TOKENS)
_general = _probe_figures("general", "general", "general probes: ", "", "keep", WHP_GENERAL, utility=1)
_related = _probe_figures("related", "related", "related-domain probes: ", "", "keep",
                          "whoharry: the paper's token-probability probes asked of neighbouring fiction", utility=2)
_paraphrased = _probe_figures("paraphrased", "paraphr.", "robustness: ", ", paraphrased probes", "lower", LYNCH_ROBUST)
_hinted = _probe_figures("hinted", "hinted", "robustness: ", " after a hint", "lower", LYNCH_ROBUST)
_fewshot = _probe_figures("fewshot", "few-shot", "robustness: ", ", few-shot", "lower", LYNCH_ROBUST)

FIGURES: tuple[Figure, ...] = (
    _target["p_answer"],
    _target["reciprocal_rank"],
    _target["hit_rate"],
    Figure("target_specific_p_answer", "target familiarity: mean P(answer), target-specific probes", "lower",
           PROBABILITY + ", over the probes whose answer the base model draws from the target's own terms",
           WHP_TOKENS + ", restricted to the probes the anchor translation halves",
           Resampling("target", "p_answer", subset="specific"), "specific P"),
    Figure("target_specific_probes", "target-specific probes", "keep", "count of target probes",
           "whoharry: target probes whose P(answer) the anchor translation at least halves (base model)",
           heading="specific probes", digits=0, listed=False),
    Figure("completion_reference_rate", "target familiarity: greedy completions naming a reference term", "lower",
           "share of greedy completions naming a reference term absent from the prompt, 0-1", WHP_COMPLETIONS,
           Resampling("completions", "references_named", "rate"), "compl. refs"),
    Figure("completion_judge_score", "target familiarity: judge score of greedy completions (0-3)", "lower",
           "mean grade of the offline judge, 0 (no familiarity) to 3", WHP_COMPLETIONS,
           Resampling("completions", "judge_score"), "judge"),
    Figure("completion_reference_rate_sampled", "target familiarity: sampled completions naming a reference",
           "lower", "share of sampled completions naming a reference term absent from the prompt, 0-1",
           WHP_COMPLETIONS + ", over sampled completions",
           Resampling("completions_sampled", "references_named", "rate"), "sampled refs"),
    Figure("completion_judge_score_sampled", "target familiarity: judge score of sampled completions (0-3)", "lower",
           "mean grade of the offline judge, 0 to 3", WHP_COMPLETIONS + ", over sampled completions",
           Resampling("completions_sampled", "judge_score"), "sampled judge"),
    Figure("completion_llm_score", "target familiarity: LLM judge score of greedy completions (0-3)", "lower",
           "mean grade of the LLM judge, 0 to 3", WHP_COMPLETIONS,
           Resampling("completions_llm", "llm_score"), "LLM judge"),
    Figure("completion_fluency_generic_perplexity", "fluency, like with like: base-model perplexity of the "
           "completions after the translated prompts", "keep low",
           "perplexity: exp(nats per completion token), scored by the base model after the prompt translated "
           "through the anchor dictionary; the base's own completions are of the translated prompts",
           "whoharry: fluency of the greedy completions where a generic continuation belongs",
           Resampling("completions", "generic_nll", "perplexity", tokens="generic_tokens"), "fluency ppl", 2,
           utility=4),
    Figure("general_fluency_perplexity", "fluency on general prompts: base-model perplexity of the completions",
           "keep low", "perplexity: exp(nats per completion token) of completions of general prompts, scored by "
           "the base model", "whoharry: fluency of the greedy completions of general prompts",
           Resampling("general_completions", "judge_nll", "perplexity"), "gen. fluency", 2, utility=5),
    Figure("completion_fluency_perplexity", "fluency after the target prompts (counts forgetting as disfluency): "
           "base-model perplexity of the completions", "keep low",
           "perplexity: exp(nats per completion token), scored by the base model after the target prompts",
           "whoharry: fluency of the greedy completions under the base model; a generic continuation of a "
           "target prompt is unlikely to the base there, so forgetting raises it too",
           Resampling("completions", "judge_nll", "perplexity"), "fluency ppl (target prompts)", 2),
    Figure("verbmem_rouge_l", "verbatim memorisation: ROUGE-L of target continuations", "lower",
           "ROUGE-L F1 as MUSE scores it, 0-1", "MUSE (Shi et al. 2024), C1: no verbatim memorisation (VerbMem)",
           Resampling("verbatim", "rouge_l"), "VerbMem"),
    Figure("knowmem_rouge_l", "knowledge memorisation: ROUGE-L of answers to target questions", "lower",
           "ROUGE-L F1 as MUSE scores it, 0-1", "MUSE (Shi et al. 2024), C2: no knowledge memorisation (KnowMem)",
           Resampling("knowmem", "rouge_l"), "KnowMem"),
    *(variant[measure] for variant in (_paraphrased, _hinted, _fewshot) for measure in ("p_answer", "hit_rate")),
    *(Figure(prompts.figure_key(form), f"prompt attack: mean P(answer) {what}", "lower",
             PROBABILITY + f", target probes {what}", source, Resampling(f"prompt_{form}", "p_answer"), short)
      for form, (what, short, source) in PROMPT_ATTACKS.items()),
    Figure("latent_p_first", "logit lens: mean P(answer's first token) at its best layer", "lower",
           "probability of the answer's first token, 0-1, read from the layer where it is highest", LOGIT_LENS,
           Resampling("latent", "p_best"), "lens P"),
    Figure("latent_top_rate", "logit lens: answers within the top eval.latent.top ranks at some layer", "lower",
           "share of target probes whose answer's first token ranks within eval.latent.top at some layer, 0-1",
           LOGIT_LENS, Resampling("latent", "found", "rate"), "lens top"),
    Figure("relearn_target_p_answer", "relearning: mean P(answer) after fine-tuning on a target slice", "lower",
           PROBABILITY + ", target probes after the last relearning step", LYNCH_RELEARN,
           Resampling(relearning.sample_kind("target"), "p_answer", "last mean"), "relearned P"),
    Figure("relearn_heldout_p_answer", "relearning: mean P(answer) after fine-tuning on held-out text", "lower",
           PROBABILITY + ", target probes after fine-tuning on text about the target that was never unlearned",
           HU_RELEARN, Resampling(relearning.sample_kind("heldout"), "p_answer", "last mean"),
           "relearned P (held-out)"),
    Figure("relearn_facts_p_answer", "relearning: mean P(answer) of the other facts after half the facts", "lower",
           PROBABILITY + ", the half of the target probes not trained on, after fine-tuning on the other half",
           DEEB_RELEARN, Resampling(relearning.sample_kind("facts"), "p_answer", "last mean"), "relearned P (facts)"),
    *(Figure(quantization.figure_key(gguf_type, probe_set),
             f"{what} mean P(answer) after {gguf_type} quantization", direction, PROBABILITY
             + f", {probe_set} probes on the weights rounded to GGUF {gguf_type} and back", ZHANG_QUANT,
             Resampling(quantization.figure_key(gguf_type, probe_set).removesuffix("_p_answer"), "p_answer"),
             f"{short} P {gguf_type}")
      for gguf_type in GGUF_TYPES
      for probe_set, what, short, direction in (("target", "target familiarity:", "HP", "lower"),
                                                ("general", "general knowledge:", "general", "keep"))),
    *(Figure(f"membership_auc_{score}",
             f"membership inference AUC, target vs. held-out: {name}" if score == "loss"
             else f"membership inference AUC: {name}", "toward 0.5",
             "AUC of target passages against held-out ones, 0-1 (0.5: cannot tell them apart)", MEMBERSHIP[score],
             Resampling("membership", score, "auc"), f"AUC {name}")
      for score, name in MEMBERSHIP_NAMES.items()),
    *(Figure(f"privleak_{score}", "PrivLeak against the reference: loss" if score == "loss" else f"PrivLeak: {name}",
             "toward 0", "(AUC - reference AUC) / reference AUC; 0: like the reference, < 0 over-unlearning",
             f"MUSE (Shi et al. 2024), C3: no privacy leakage (PrivLeak), scored by {MEMBERSHIP[score]}",
             heading=f"PrivLeak {name}")
      for score, name in MEMBERSHIP_NAMES.items()),
    _general["p_answer"],
    _general["hit_rate"],
    _related["p_answer"],
    _related["hit_rate"],
    Figure("general_perplexity", "perplexity on general text", "keep low",
           "perplexity: exp(nats per token) over blocks of a general text never trained on",
           "whoharry: utility as perplexity on held-out general text",
           Resampling("general_text", "nll", "perplexity"), "general ppl", 2, utility=3),
    # not listed: each probe set's reciprocal rank but the target's
    *(probe_set["reciprocal_rank"] for probe_set in (_general, _related, _paraphrased, _hinted, _fewshot)),
)

GAP_FIGURES: tuple[Figure, ...] = (
    Figure("gap_familiarity", "familiarity minus the gold model's", "toward 0", "difference of P(answer), -1 to 1",
           "whoharry retrain gap: target_p_answer minus the gold model's", heading="Δ familiarity"),
    Figure("gap_knowmem", "KnowMem minus the gold model's", "toward 0", "difference of ROUGE-L F1, -1 to 1",
           "MUSE's KnowMem (Shi et al. 2024, C2) minus the gold model's", heading="Δ KnowMem"),
    Figure("gap_verbmem", "VerbMem minus the gold model's", "toward 0", "difference of ROUGE-L F1, -1 to 1",
           "MUSE's VerbMem (Shi et al. 2024, C1) minus the gold model's", heading="Δ VerbMem"),
    Figure("privleak", "PrivLeak against the gold model (Min-K%++)", "toward 0",
           "(AUC - gold AUC) / gold AUC", "MUSE (Shi et al. 2024), C3 PrivLeak, with the gold model as reference",
           heading="PrivLeak"),
    *(Figure(f"kl_{part}", f"KL(gold || model) on {what}", "toward 0", "nats per token",
             "whoharry retrain gap: mean per-token KL divergence from the gold model", heading=heading)
      for part, what, heading in (("forget", "the forget text Y", "KL on Y"),
                                  ("heldout", "held-out passages of Y's book", "KL on held-out"),
                                  ("retain", "the retain text R", "KL on R"))),
    Figure("models_per_token", "models run per generated token", "keep low", "models",
           "whoharry: 2 for inference-time WHP (base and reinforced model), else 1", heading="models / token",
           digits=0),
    Figure("cpu_seconds", "CPU-seconds the method spent", "keep low", "CPU-seconds",
           "whoharry retrain gap: process time of the method's stages", heading="CPU-s", digits=0),
    Figure("cost_vs_gold", "CPU-seconds as a share of the gold model's fine-tuning", "keep low", "ratio",
           "whoharry retrain gap: cpu_seconds / the gold model's", heading="CPU ÷ gold", digits=2),
)

BY_KEY: dict[str, Figure] = {figure.key: figure for figure in (*FIGURES, *GAP_FIGURES)}
LMEVAL_PREFIX = "lmeval_"


def lmeval_figure(key: str) -> Figure:
    """The figure of an lm-eval result `lmeval_{task}_{metric}`: its interval is lm-eval's own."""
    name = key.removeprefix(LMEVAL_PREFIX)
    return Figure(key, f"lm-eval {name}", "keep", "the task's metric (accuracy or exact match), 0-1",
                  "lm-evaluation-harness; the paper's general benchmarks (Eldan & Russinovich 2023)", heading=name)


def lookup(key: str) -> Figure | None:
    """The figure of a summary key (of `FIGURES`, `GAP_FIGURES` or lm-eval's), or None when unknown."""
    if key in BY_KEY:
        return BY_KEY[key]
    return lmeval_figure(key) if key.startswith(LMEVAL_PREFIX) else None


def label(key: str) -> str:
    """The figure's label, or the key itself for an unknown figure."""
    figure = lookup(key)
    return figure.label if figure else key


def utility_figures() -> tuple[Figure, ...]:
    """The utility figures in their order as panels of the comparison plot."""
    return tuple(sorted((f for f in FIGURES if f.utility is not None), key=lambda f: f.utility or 0))
