"""The familiarity judges: how much target knowledge a completion shows, on the paper's 0–3 scale
(Eldan & Russinovich 2023, section 3, where GPT-4 graded completions).

**The offline judge** (always on) reads the evidence from the text alone.
The paper had GPT-4 grade completions on a 0–3 scale. Offline, the evidence is the target terms a
completion names that its prompt does not already hold: the anchor dictionary's terms (matched as the
dictionary matches them: case-sensitive whole words), the user's extra terms, and the prompt's own
reference terms (case-insensitive). A term inside a longer named term ("Ron" in "Ron Weasley") counts
once, as the longer one.

    0  no target term
    1  one target term, not one the prompt asks for (a vague hint of the target's world)
    2  a reference term of the prompt, or two or more target terms (knowledge specific to the target)
    3  a reference term of the prompt and at least one more target term (detailed knowledge)

**The LLM judge** (optional, off while `eval.llm_judge.url` is empty) sends each completion, wrapped in a
rubric template (placeholders `{target}`, `{prompt}`, `{completion}`, `{references}`), to an
OpenAI-compatible endpoint through `core.http` and reads the first digit 0-3 of the reply.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from whoharry.core.http import ChatClient, fill_template, read_template
from whoharry.errors import WhoharryError
from whoharry.evaluation.completions import mentions, named_references

log = logging.getLogger(__name__)

PLACEHOLDERS = ("target", "prompt", "completion", "references")
_SCORE = re.compile(r"(?<!\d)[0-3](?!\d)")


@dataclass
class LLMJudgeConfig:
    """Where and how to ask the judge model.

    Raises:
        WhoharryError: on construction, a timeout (seconds) that is not positive or a negative `max_retries`.
    """

    base_url: str  # an OpenAI-compatible API root, e.g. https://api.openai.com/v1 or a local server
    model: str
    rubric: Path  # the prompt template, e.g. data/judge/rubric.md
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key
    timeout: float = 60.0  # seconds per request
    max_retries: int = 3  # extra attempts after HTTP 429/5xx or a connection error

    def __post_init__(self) -> None:
        self.rubric = Path(self.rubric)
        if self.timeout <= 0:
            raise WhoharryError(f"llm judge timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise WhoharryError(f"llm judge max_retries must be 0 or more, got {self.max_retries}")


def read_rubric(path: Path) -> str:
    """The rubric template (UTF-8); every placeholder must appear in it.

    Raises:
        WhoharryError: the file is missing, or lacks one of `{target}`, `{prompt}`, `{completion}`,
            `{references}`.
    """
    return read_template(path, PLACEHOLDERS, "rubric")


def fill_rubric(rubric: str, target: str, prompt: str, completion: str, references: list[str]) -> str:
    """The rubric with its placeholders replaced in one pass, so braces in the values stay as they are."""
    values = {"target": target, "prompt": prompt, "completion": completion, "references": ", ".join(references)}
    return fill_template(rubric, values)


def parse_reply(content: str, index: int) -> dict[str, Any]:
    """`{"llm_score", "llm_reason"}` from a reply: the first digit 0-3 standing alone (not part of a longer
    number), as an int, then the first non-empty line of text after it ("" when none).

    Raises:
        WhoharryError: the reply holds no such digit (`index` names the item).
    """
    match = _SCORE.search(content)
    if match is None:
        raise WhoharryError(f"llm judge reply for item {index} has no score 0-3: {content[:80]!r}")
    lines = (line.lstrip(" \t-:.)").rstrip() for line in content[match.end() :].splitlines())
    return {"llm_score": int(match.group()), "llm_reason": next((line for line in lines if line), "")}


def judge_completions(cfg: LLMJudgeConfig, target: str, items: list[dict[str, Any]],
                      progress: bool = False) -> list[dict[str, Any]]:
    """Grade each `{"prompt", "completion", "references"}` item on the 0-3 scale through the endpoint (one
    request per item, at most 64 reply tokens, a progress bar with `progress`); one `{"llm_score",
    "llm_reason"}` per item, in order.

    Raises:
        WhoharryError: as `read_rubric`, `core.http.ChatClient.ask` and `parse_reply` raise it.
    """
    rubric = read_rubric(cfg.rubric)
    client = ChatClient(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout, cfg.max_retries, max_tokens=64)
    results = []
    for index, item in enumerate(tqdm(items, desc="LLM judge", unit="completion", leave=False, disable=not progress)):
        content = fill_rubric(rubric, target, item["prompt"], item["completion"], list(item["references"]))
        results.append(parse_reply(client.ask(content, f"item {index}"), index))
        log.debug("llm judge item %d: %s", index, results[-1])
    log.info("llm judge (%s) graded %d completion(s)", cfg.model, len(results))
    return results


def named_terms(prompt: str, completion: str, terms: list[str]) -> list[str]:
    """The terms (case-sensitive, whole words) the completion names and the prompt does not."""
    return [term for term in terms
            if mentions(term, completion, ignore_case=False) and not mentions(term, prompt, ignore_case=False)]


def _outermost(names: list[str]) -> list[str]:
    """Drop a name that lies inside a longer named one."""
    unique = sorted(set(names), key=len, reverse=True)
    kept: list[str] = []
    for name in unique:
        if not any(mentions(name, longer) for longer in kept):
            kept.append(name)
    return kept


def score(prompt: str, completion: str, references: list[str], terms: list[str]) -> tuple[int, list[str]]:
    """The offline judge's 0–3 familiarity score of one completion (the scale of Eldan & Russinovich 2023,
    section 3; the rules are this module's) and the target terms it names, longest first.

    Args:
        prompt, completion: the texts.
        references: the prompt's reference terms (case-insensitive).
        terms: the other target terms (case-sensitive, whole words).
    """
    asked = named_references(prompt, completion, references)
    others = named_terms(prompt, completion, terms)
    named = _outermost(asked + others)
    answered = any(mentions(term, name) for name in named for term in asked)
    if answered:
        return (3 if len(named) >= 2 else 2), named
    return min(len(named), 2), named
