"""The attack audit: how much of the target each attack brings back, one row per attack, from the figures
the attack parts wrote (`robustness`, `prompts`, `quantization`, `latent`, `relearning`).

An attack's **recovery** is the unlearned model's familiarity under the attack divided by the base model's
under the same attack: 1 means the attack shows as much of the target in the unlearned model as in the
base, however much the attack itself adds; the plain probes' row (no attack) is what unlearning leaves. The
interval is the paired bootstrap interval of that ratio (`evaluation.intervals.ratio_interval`, the two
models resampled with the same probes). The audit's one figure is the **worst attack**: the highest
recovery (a nan recovery ranks last).

Sources: Lynch et al. 2024 (*Eight Methods to Evaluate Robust Unlearning in LLMs*) for the prompt forms,
the logit lens and relearning; Zhang et al. 2025 (ICLR) for quantization; Hu et al. 2024 and Deeb & Roger
2024 for relearning on held-out text and on other facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from whoharry.config.choices import GGUF_TYPES
from whoharry.evaluation import quantization

__all__ = ["ATTACKS", "Attack", "audit_table"]


@dataclass(frozen=True)
class Attack:
    """One row of the audit: the figure it reads (`figures.FIGURES`), its name and its family."""

    key: str
    name: str
    family: str


ATTACKS: tuple[Attack, ...] = (
    Attack("target_p_answer", "none: the plain target probes", "none"),
    Attack("paraphrased_p_answer", "the facts asked in other words", "prompts"),
    Attack("hinted_p_answer", "a hint naming the target's world before each probe", "prompts"),
    Attack("fewshot_p_answer", "a few solved probes before each", "prompts"),
    Attack("prompt_preamble_p_answer", "a jailbreak preamble before each probe", "prompts"),
    Attack("prompt_summary_p_answer", "a summary of the target before each probe", "prompts"),
    Attack("prompt_manyshot_p_answer", "many solved probes before each (many-shot)", "prompts"),
    *(Attack(quantization.figure_key(gguf_type, "target"), f"the weights rounded to GGUF {gguf_type}", "quantization")
      for gguf_type in GGUF_TYPES),
    Attack("latent_p_first", "the logit lens: the answer's first token at its best layer", "latent"),
    Attack("relearn_target_p_answer", "relearning on blocks of the target", "relearning"),
    Attack("relearn_heldout_p_answer", "relearning on held-out text about the target", "relearning"),
    Attack("relearn_facts_p_answer", "relearning on half the facts (the other half scored)", "relearning"),
)


def audit_table(report: dict[str, Any]) -> dict[str, Any] | None:
    """The audit of a report (its `summary` and `ratio_intervals`): `rows`, one per attack both the base and
    the unlearned model have a figure for (`attack`, `family`, `figure`, `base`, `unlearned`, `recovery`,
    `interval`: [low, high] or None), and `worst`, the row of the highest recovery among the attacks (not
    the plain probes). None when no attack was run."""
    summary, spans = report.get("summary", {}), report.get("ratio_intervals", {})
    base, unlearned = summary.get("base", {}), summary.get("unlearned", {})
    rows = []
    for attack in ATTACKS:
        if attack.key not in base or attack.key not in unlearned:
            continue
        mark, value = float(base[attack.key]), float(unlearned[attack.key])
        rows.append({"attack": attack.name, "family": attack.family, "figure": attack.key, "base": mark,
                     "unlearned": value, "recovery": value / mark if mark else float("nan"),
                     "interval": spans.get(f"unlearned/{attack.key}")})
    attacks = [row for row in rows if row["family"] != "none"]
    if not attacks:
        return None
    worst = max(attacks, key=lambda row: -math.inf if math.isnan(row["recovery"]) else row["recovery"])
    return {"rows": rows, "worst": worst}
