"""`whoharry anchors suggest`: an anchor dictionary mined from the target with the models at hand, or
asked of an LLM passage by passage as in the paper, written as a commented YAML file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from whoharry.anchors import candidates, check, translations
from whoharry.anchors.dictionary import parse_anchors, strip_function_words, write_dictionary
from whoharry.anchors.paper_import import composite_keys, merge, parse_answer
from whoharry.config import AnchorsConfig, Config, Precision
from whoharry.core.corpus import is_hub
from whoharry.core.http import ChatClient, fill_template, read_template
from whoharry.core.text import make_blocks, read_target
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    """A suggested dictionary: the chosen candidates, best first, and their generic translations."""

    chosen: list[candidates.Candidate]
    translations: dict[str, list[str]]
    candidates: int  # terms considered
    used_gain: bool  # whether a reinforced model scored the terms


def suggest_anchors(text: str, general: str, tokenizer: PreTrainedTokenizerBase, baseline: PreTrainedModel,
                    reinforced: PreTrainedModel | None, cfg: AnchorsConfig, *, block_length: int,
                    precision: Precision, alpha: float = 5.0, progress: bool = True) -> Suggestion:
    """Rank the target's terms (`anchors.candidates`; ordinary words more common in English than
    `cfg.max_word_frequency` left out) and give the best `cfg.top` of them generic translations from the
    baseline model (`anchors.translations`).

    Raises:
        WhoharryError: no term occurs `cfg.min_count` times, or every one is a common word.
    """
    found = candidates.find_candidates(text, general, min_count=cfg.min_count, max_words=cfg.max_words,
                                       name_min_count=cfg.name_min_count)
    if not found:
        raise WhoharryError(f"no term occurs {cfg.min_count} times or more in the text; lower anchors.min_count")
    found = candidates.without_common_words(found, cfg.max_word_frequency)
    if not found:
        raise WhoharryError(f"every term of the text is an ordinary word more common in English than "
                            f"anchors.max_word_frequency={cfg.max_word_frequency}; raise it")
    if reinforced is not None:
        blocks = make_blocks(text, tokenizer, block_length)
        base = candidates.model_log_probs(baseline, blocks, batch_size=cfg.batch_size, precision=precision,
                                          desc="baseline", progress=progress)
        reinforced_lp = candidates.model_log_probs(reinforced, blocks, batch_size=cfg.batch_size,
                                                   precision=precision, desc="reinforced", progress=progress)
        candidates.term_gains(found, blocks, reinforced_lp - base)
    candidates.score(found, len(candidates.WORD.findall(text)), len(candidates.WORD.findall(general)),
                     english=candidates.english_frequency if cfg.english_frequencies else None)
    chosen = candidates.rank(found, cfg.top, min_count=cfg.min_count)
    proposed = translations.propose(baseline, tokenizer, text, chosen, reinforced=reinforced, alpha=alpha,
                                    alternatives=cfg.alternatives, contexts=cfg.contexts, precision=precision,
                                    names=cfg.names, progress=progress)
    return Suggestion(chosen, proposed, len(found), reinforced is not None)


def suggest_file(cfg: Config, reinforced: Path | None, out: Path, *, general: list[Path] | None = None,
                 progress: bool = True) -> Suggestion:
    """`suggest_anchors` on `cfg.data.target` with the config's model and the reinforced model folder (None:
    ranked without the gain), written to `out`. The general text is `general`, else the retain texts and
    `eval.utility.general_text`."""
    from whoharry.core import models

    paths = general or [*cfg.data.retain, *([cfg.eval.utility.general_text] if cfg.eval.utility.general_text else [])]
    general_text = "\n\n".join(read_target(cfg.data, path, "general text") for path in paths
                             if path.exists() or is_hub(path))
    target = read_target(cfg.data)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    reinforced_model = models.load_folder(reinforced, cfg=cfg.model) if reinforced is not None else None
    base_model = models.load_model(source, cfg.model, inference=True)
    for model in (base_model, reinforced_model):
        if model is not None:
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
            max_retries: int = 3, progress: bool = False) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The paper's route: each passage sent to an OpenAI-compatible chat endpoint with the prompt
    template; the answers' `translations = {...}` dictionaries read safely and merged. A value that opens
    with a function word loses it (`the castle` -> `castle`), one with nothing else is dropped, and so is
    a key left without values: the labels stage would suppress that word after the translation. A progress
    bar counts the passages with `progress`."""
    if not cfg.llm_url:
        raise WhoharryError("anchors.llm_url is empty: set it to an OpenAI-compatible API root to ask an LLM")
    template = read_template(cfg.llm_prompt, ("passage",))
    client = ChatClient(cfg.llm_url, cfg.llm_model, cfg.llm_key_env, timeout, max_retries)
    answers, counts = [], {"passages": 0, "parsed": 0, "salvaged": 0, "unreadable": 0}
    chunks = passages(text, cfg.llm_passage_chars)
    for index, passage in enumerate(tqdm(chunks, desc="anchors: LLM dictionary", unit="passage", leave=False,
                                         disable=not progress)):
        values = {"target": target_name, "passage": passage}
        content = fill_template(template, values)
        entries, how = parse_answer(client.ask(content, f"passage {index}"))
        counts["passages"] += 1
        counts[how] += 1
        answers.append(entries)
    merged = merge(answers)
    for key in composite_keys(merged):
        del merged[key]
    return _without_function_words(merged), counts


def _without_function_words(entries: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each key's values with the function words they open with stripped (`strip_function_words`), those left
    empty dropped, and keys left without values dropped; how many changed is logged."""
    kept: dict[str, list[str]] = {}
    for key, values in entries.items():
        stripped = list(dict.fromkeys(value for value in map(strip_function_words, values) if value))
        if stripped:
            kept[key] = stripped
    changed = sum(value != strip_function_words(value) for values in entries.values() for value in values)
    if changed:
        log.info("%d values opened with a function word: it was dropped (%d keys left without a value)", changed,
                 len(entries) - len(kept))
    return kept


def suggest_with_llm(cfg: Config, out: Path, progress: bool = False) -> int:
    """The LLM route of `whoharry anchors suggest`: `ask_llm` on `cfg.data.target`, the terms ordered by
    their occurrences in the text, written to `out` with the answers' counts in the header. Returns the
    number of terms written.

    Raises:
        WhoharryError: no endpoint configured, a bad prompt template, the endpoint failing, or answers
            that hold no entries.
    """
    target = read_target(cfg.data)
    entries, counts = ask_llm(target, cfg.anchors, cfg.eval.target_name, progress=progress)
    if not entries:
        raise WhoharryError("the LLM's answers held no dictionary entries")
    found = check.check(parse_anchors(entries), target).occurrences
    ordered = dict(sorted(entries.items(), key=lambda kv: (-found.get(kv[0], 0), kv[0])))
    write_dictionary(out, ordered, [
        f"Anchor dictionary from {cfg.anchors.llm_model} at {cfg.anchors.llm_url}, passage by passage "
        f"({counts['passages']} passages: {counts['parsed']} parsed, {counts['salvaged']} salvaged, "
        f"{counts['unreadable']} unreadable), of {cfg.data.target}; comment: occurrences in the text"],
        {term: str(found.get(term, 0)) for term in ordered})
    return len(ordered)
