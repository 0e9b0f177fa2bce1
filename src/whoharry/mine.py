"""`whoharry anchors suggest`: an anchor dictionary mined from the target with the models at hand, or
asked of an LLM passage by passage as in the paper, written as a commented YAML file."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from whoharry import artifacts, generics, suggest
from whoharry.anchor_import import composite_keys, merge, parse_answer
from whoharry.config import AnchorsConfig, Config
from whoharry.errors import WhoharryError
from whoharry.llm_judge import auth_headers, post_json
from whoharry.text import make_blocks, read_text

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    chosen: list[suggest.Candidate]
    translations: dict[str, list[str]]
    candidates: int  # terms considered
    used_gain: bool  # whether a reinforced model scored the terms


def suggest_anchors(text: str, general: str, tokenizer, baseline, reinforced, cfg: AnchorsConfig, *,
                    block_length: int, precision: str, alpha: float = 5.0, progress: bool = True) -> Suggestion:
    """Rank the target's terms and translate the best `cfg.top` of them with the baseline model."""
    candidates = suggest.find_candidates(text, general, min_count=cfg.min_count, max_words=cfg.max_words)
    if not candidates:
        raise WhoharryError(f"no term occurs {cfg.min_count} times or more in the text; lower anchors.min_count")
    if reinforced is not None:
        blocks = make_blocks(text, tokenizer, block_length)
        base = suggest.token_log_probs(baseline, blocks, batch_size=cfg.batch_size, precision=precision,
                                       desc="baseline", progress=progress)
        reinforced_lp = suggest.token_log_probs(reinforced, blocks, batch_size=cfg.batch_size,
                                                precision=precision, desc="reinforced", progress=progress)
        suggest.term_gains(candidates, blocks, reinforced_lp - base)
    suggest.score(candidates, len(suggest.WORD.findall(text)), len(suggest.WORD.findall(general)),
                  english=suggest.english_frequency if cfg.english_frequencies else None)
    chosen = suggest.rank(candidates, cfg.top)
    translations = generics.translate(baseline, tokenizer, text, chosen, reinforced=reinforced, alpha=alpha,
                                      alternatives=cfg.alternatives, contexts=cfg.contexts, precision=precision,
                                      progress=progress)
    return Suggestion(chosen, translations, len(candidates), reinforced is not None)


def suggest_file(cfg: Config, reinforced: Path, out: Path, *, general: list[Path] | None = None,
                 progress: bool = True) -> Suggestion:
    """`suggest_anchors` on `cfg.data.target` with the config's model and the reinforced model folder,
    written to `out`. The general text is `general`, else the retain texts and `eval.general_text`."""
    from whoharry import models

    paths = general or [*cfg.data.retain, *([cfg.eval.general_text] if cfg.eval.general_text else [])]
    general_text = "\n\n".join(read_text(path, "general text") for path in paths if path.is_file())
    target = read_text(cfg.data.target)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    reinforced_model = models.load_folder(reinforced, cfg=cfg.model)
    base_model = models.load_model(source, cfg.model, inference=True)
    for model in (base_model, reinforced_model):
        model.requires_grad_(False)
    suggestion = suggest_anchors(target, general_text, tokenizer, base_model, reinforced_model, cfg.anchors,
                                 block_length=cfg.data.block_length, precision=cfg.labels.precision,
                                 alpha=cfg.labels.alpha, progress=progress)
    write_suggestions(out, suggestion, str(cfg.data.target))
    return suggestion


def write_suggestions(path: Path, suggestion: Suggestion, source: str) -> None:
    """The dictionary as YAML, best term first, each with its score and counts in a comment."""
    signals = "gain, specificity and name share" if suggestion.used_gain else "specificity and name share"
    header = [
        f"Anchor dictionary suggested by `whoharry anchors suggest` from {source}:",
        f"the {len(suggestion.chosen)} best of {suggestion.candidates} candidate terms, ranked by {signals}",
        "(docs/ANCHORS.md). Translations come from the baseline model; review and edit before use.",
        "comment: score | occurrences in the target | occurrences in the general text | gain | specificity"
        " | name share",
    ]
    notes = {c.term: f"{c.score:.2f} | {c.count} | {c.general_count} | {c.gain:.2f} | {c.specificity:.2f} | "
                     f"{c.name_share:.2f}" for c in suggestion.chosen}
    write_dictionary(path, {c.term: suggestion.translations[c.term] for c in suggestion.chosen}, header, notes)


def write_dictionary(path: Path, entries: dict[str, list[str]], header: list[str],
                     notes: dict[str, str] | None = None) -> None:
    """Any dictionary as YAML (`term: [alternatives]`), with header comments and a note per entry."""
    lines = [f"# {line}" for line in header]
    for term, values in entries.items():
        entry = yaml.safe_dump({term: values}, default_flow_style=None, allow_unicode=True, width=10_000).rstrip()
        note = (notes or {}).get(term)
        lines.append(f"{entry}  # {note}" if note else entry)
    artifacts.atomic_write_text(path, "\n".join(lines) + "\n")


_PLACEHOLDER = re.compile(r"\{(target|passage)\}")


def passages(text: str, size: int) -> list[str]:
    """The text in pieces of about `size` characters, cut at paragraph (else line) ends."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start + size // 2, end)
            cut = cut if cut > 0 else text.rfind("\n", start + size // 2, end)
            end = cut if cut > 0 else end
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces


def ask_llm(text: str, cfg: AnchorsConfig, target_name: str, *, timeout: float = 120.0,
            max_retries: int = 3) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The paper's route: each passage sent to an OpenAI-compatible chat endpoint with the prompt
    template; the answers' `translations = {...}` dictionaries read safely and merged."""
    if not cfg.llm_url:
        raise WhoharryError("anchors.llm_url is empty: set it to an OpenAI-compatible API root to ask an LLM")
    if not cfg.llm_prompt.is_file():
        raise WhoharryError(f"prompt template not found: {cfg.llm_prompt}")
    template = cfg.llm_prompt.read_text(encoding="utf-8")
    if "{passage}" not in template:
        raise WhoharryError(f"{cfg.llm_prompt}: the prompt template lacks the placeholder {{passage}}")
    url = cfg.llm_url.rstrip("/") + "/chat/completions"
    headers = auth_headers(cfg.llm_key_env, url)
    answers, counts = [], {"passages": 0, "parsed": 0, "salvaged": 0, "unreadable": 0}
    for index, passage in enumerate(passages(text, cfg.llm_passage_chars)):
        values = {"target": target_name, "passage": passage}
        content = _PLACEHOLDER.sub(lambda match, values=values: values[match.group(1)], template)
        body = {"model": cfg.llm_model, "messages": [{"role": "user", "content": content}], "temperature": 0}
        answer = post_json(url, body, headers, timeout=timeout, max_retries=max_retries, key_env=cfg.llm_key_env)
        try:
            reply = str(answer["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise WhoharryError(f"{url} answer for passage {index} has no choices[0].message.content") from None
        entries, how = parse_answer(reply)
        counts["passages"] += 1
        counts[how] += 1
        answers.append(entries)
    merged = merge(answers)
    for key in composite_keys(merged):
        del merged[key]
    return merged, counts
