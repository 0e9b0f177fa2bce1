"""Adversarial prompt forms around the target probes (Lynch et al. 2024, *Eight Methods to Evaluate Robust
Unlearning in LLMs*, section 4: a jailbreak system prompt and an in-context summary extract Harry Potter
knowledge from the paper's own unlearned model; Anil et al. 2024, *Many-shot Jailbreaking*: a long prefix of
solved examples overrides trained-in behaviour).

Each form keeps the probe's answer and prefixes its prompt:

- `preamble`: a permissive system prompt that lifts any instruction to forget (`eval.prompts.preamble`);
- `summary`: a short summary of the target (`eval.prompts.summary`), so that the answer can be inferred or
  recalled from context;
- `manyshot`: `eval.prompts.shots` other target probes written out with their answers.

The texts shipped in `data/attacks/` and `data/harry_potter/summary.txt` were written for this project.
"""

from __future__ import annotations

from whoharry.config import EvalConfig
from whoharry.core.text import read_text
from whoharry.evaluation.probes import few_shot, with_hint

__all__ = ["FORMS", "attack_forms", "figure_key"]

FORMS = ("preamble", "summary", "manyshot")  # in the order the part scores them


def figure_key(form: str) -> str:
    """The summary key of a form's mean P(answer); its per-probe records are kept under `prompt_{form}`."""
    return f"prompt_{form}_p_answer"


def attack_forms(target: list[dict[str, str]], cfg: EvalConfig) -> dict[str, list[dict[str, str]]]:
    """The target probes in each configured form (a form whose file is None, or many-shot with `shots` 0 or
    a single probe, is left out), each a list of probes as `evaluation.probes.read_probes` gives them.

    Raises:
        WhoharryError: a configured preamble or summary file that is missing or empty.
    """
    forms: dict[str, list[dict[str, str]]] = {}
    if cfg.prompts.preamble is not None:
        forms["preamble"] = with_hint(target, read_text(cfg.prompts.preamble, "jailbreak preamble"))
    if cfg.prompts.summary is not None:
        forms["summary"] = with_hint(target, read_text(cfg.prompts.summary, "summary of the target"))
    if cfg.prompts.shots > 0 and len(target) > 1:
        forms["manyshot"] = few_shot(target, cfg.prompts.shots)
    return forms
