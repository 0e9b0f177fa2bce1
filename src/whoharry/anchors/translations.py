"""Generic translations for suggested anchor terms, offline, from the baseline model itself.

For each term, the baseline reads the text just before a few of its occurrences. Its next-word logits,
steered by the method's own formula when a reinforced model is at hand (`v_base - alpha *
relu(v_reinforced - v_base)`, Eldan & Russinovich 2023, section 2.1, which pushes down what
reinforcement on the target raised), give the
likeliest generic words; the first tokens of every suggested term are left out too. Those words
become the term's alternatives. A name must be replaced by a name: when the model offers too few capitalised
words, ordinary names (or places, or plain nouns) fill in by kind. A family of terms stays
consistent: `Potters` follows `Potter`, and `Professor Snape` takes whatever `Snape` became. No
translation opens with a function word (`anchors.dictionary.opens_with_function_word`): such a word is
dropped, and an alternative with nothing else is left out.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from whoharry.anchors.candidates import CONNECTORS, STOPWORDS, Candidate
from whoharry.anchors.dictionary import strip_function_words
from whoharry.anchors.names import (  # noqa: F401 - the lists are read from here too
    FIRST_NAMES,
    NOUNS,
    PLACE_NOUNS,
    PLACE_WORDS,
    PLACES,
    POOL_FIRST_NAMES,
    POOL_SURNAMES,
    RARE_WORD,
    SURNAMES,
    TITLES,
)
from whoharry.anchors.translate import token_after
from whoharry.config import NameSource
from whoharry.core import models
from whoharry.core.text import pad
from whoharry.method.whp import whp_logits

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CONTEXT_CHARS = 400
CONTEXT_TOKENS = 48  # tokens of each context the models read (about two sentences)
FINISH_TOKENS = 32  # context tokens before a first token when its word is finished


def kind_of(candidate: Candidate, text: str, chosen: set[str]) -> str:
    """`word` (not a name), `place`, `first` (a first name) or `surname`, from the term's surroundings:
    the word before each occurrence (a place preposition or verb: `place`; a title or a chosen capitalised
    term: `surname`) and the word after it (a chosen term: `first`); otherwise a one-word name is `first`,
    a longer one `surname`."""
    return _kind(candidate, text, chosen)[0]


def name_kind(candidate: Candidate, text: str, chosen: set[str]) -> tuple[str, bool]:
    """The term's kind and whether anything shows it, for `anchors.names: pool`. First the term's place in
    a chosen person's full name (`_persons_name`: `Holmes` closes `Sherlock Holmes`, `surname`; `Vernon`
    opens `Uncle Vernon Dursley`, `first`), then `kind_of`'s surroundings, where a following word counts
    only when it is a chosen name (capitalised, not a place noun). A name nothing shows is
    `(kind_of, False)`."""
    full = [words for term in chosen if (words := _persons_name(term))]
    if any(words[0] == candidate.term for words in full):
        return "first", True
    if any(words[-1] == candidate.term for words in full):
        return "surname", True
    kind, rule = _kind(candidate, text, chosen)
    if rule == "after":
        names = {term for term in chosen if term[:1].isupper() and term not in PLACE_NOUNS}
        if _share([word in names for word in _neighbours(candidate, text)[1]], candidate) < 0.2:
            return ("first" if " " not in candidate.term else "surname"), False
    return kind, bool(rule)


def _neighbours(candidate: Candidate, text: str) -> tuple[list[str], list[str]]:
    """The word before and the word after each occurrence of the term ("" where there is none)."""
    before, after = [], []
    for start, end in candidate.spans:
        left = re.findall(r"[^\W\d_]+", text[max(0, start - 30) : start])
        before.append(left[-1] if left else "")
        right = re.match(r"\s([^\W\d_]+)", text[end : end + 30])
        after.append(right.group(1) if right else "")
    return before, after


def _share(flags: list[bool], candidate: Candidate) -> float:
    """The share of the term's occurrences for which a flag holds."""
    return sum(flags) / max(len(candidate.spans), 1)


def _kind(candidate: Candidate, text: str, chosen: set[str]) -> tuple[str, str]:
    """`kind_of`, and the rule that showed it: `word`, `place`, `title` (a title or a chosen capitalised term
    before it), `after` (a chosen term after it), or "" for the one-word/longer default."""
    if not candidate.name_like:
        return "word", "word"
    before, after = _neighbours(candidate, text)
    if _share([w.lower() in PLACE_WORDS for w in before], candidate) >= 0.4:
        return "place", "place"
    if _share([w in TITLES or (w in chosen and w[:1].isupper()) for w in before], candidate) >= 0.3:
        return "surname", "title"
    if _share([w in chosen for w in after], candidate) >= 0.2:
        return "first", "after"
    return ("first" if " " not in candidate.term else "surname"), ""


def _persons_name(term: str) -> list[str]:
    """The words of a term that looks like a person's full name, after any titles (`Mr. Sherlock Holmes`:
    `Sherlock`, `Holmes`): two or more capitalised words of letters, none a connector or a place noun
    (`PLACE_NOUNS`); an empty list for any other term."""
    words = term.split()
    while words and words[0].rstrip(".") in TITLES:
        words = words[1:]
    if len(words) >= 2 and all(word.isalpha() and word[0].isupper() and word not in PLACE_NOUNS
                               and word.lower() not in CONNECTORS for word in words):
        return words
    return []


def _pick(pool: tuple[str, ...], term: str, count: int, taken: set[str]) -> list[str]:
    """`count` entries of `pool` for `term`: spread by a hash of the term, stable across runs."""
    start = int(hashlib.sha256(term.encode()).hexdigest(), 16) % len(pool)
    ordered = pool[start:] + pool[:start]
    picked = [item for item in ordered if item not in taken][:count]
    return picked or list(ordered[:count])


def fallback(kind: str, term: str, count: int, taken: set[str]) -> list[str]:
    """Up to `count` stock replacements for a term of this kind (places, first names, surnames, or plain
    nouns for `word`), chosen by a hash of the term (stable across runs), avoiding `taken` when it can."""
    if kind == "place":
        return _pick(PLACES, term, count, taken)
    if kind == "first":
        return _pick(FIRST_NAMES, term, count, taken)
    if kind == "surname":
        return _pick(SURNAMES, term, count, taken)
    return _pick(NOUNS, term, count, taken)


def _banned_ids(tokenizer: PreTrainedTokenizerBase, terms: list[str]) -> set[int]:
    """The first token of every term, as it starts a word after a space and at a line start."""
    banned: set[int] = set()
    for term in terms:
        for variant in (f" {term}", term, f" {term.lower()}"):
            ids = tokenizer(variant, add_special_tokens=False).input_ids
            if ids:
                banned.add(ids[0])
    return banned


def _inside_name(text: str, start: int) -> bool:
    """Whether the word at `start` follows a capitalised word other than a title (`Witch` in `Wicked Witch`,
    not `Snape` in `Professor Snape`). The text before such an occurrence ends mid-name, and the model's
    next words there continue the name rather than stand for it."""
    before = re.search(r"([^\W\d_]+) $", text[max(0, start - 40) : start])
    if not before:
        return False
    word = before.group(1)
    return word[0].isupper() and word.lower() not in STOPWORDS and word not in TITLES


def _is_word_start(piece: str) -> bool:
    """A decoded token that is a space and then at least two letters."""
    return len(piece) > 2 and piece[0] == " " and piece[1:].isalpha()


@torch.no_grad()
def next_word_probs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, candidate: Candidate, *,
                    contexts: int, precision: str, reinforced: PreTrainedModel | None = None,
                    alpha: float = 5.0) -> tuple[torch.Tensor, list[int]] | None:
    """What the model expects where the term stands: its next-token probabilities before up to `contexts`
    occurrences (those past character 40, occurrences not inside a longer name first; the last
    `CONTEXT_TOKENS` tokens of up to 400 characters each), the softmax of the last position's logits,
    WHP-steered with `reinforced` and `alpha` (Eldan & Russinovich 2023, section 2.1), averaged over the
    contexts.

    Returns:
        (probabilities, float32 of shape (vocabulary,) on the CPU; the token ids of the first context), or
        None when no occurrence qualifies.
    """
    device = next(model.parameters()).device
    spans = sorted((span for span in candidate.spans if span[0] > 40), key=lambda span: _inside_name(text, span[0]))
    spans = spans[:contexts]
    if not spans:
        return None
    prompts = []
    for start, _ in spans:
        left = text[max(0, start - CONTEXT_CHARS) : start].rstrip()
        prompts.append(tokenizer(left, add_special_tokens=False).input_ids[-CONTEXT_TOKENS:])
    ids, mask = pad(prompts, tokenizer.pad_token_id, left=True)
    with models.autocast(precision, device):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1].float()
        if reinforced is not None:
            boosted = reinforced(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1].float()
            logits = whp_logits(logits, boosted, alpha)
    return torch.softmax(logits, dim=-1).mean(dim=0).cpu(), prompts[0]


@torch.no_grad()
def model_fillers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, candidate: Candidate,
                  banned: set[int], *, contexts: int, wanted: int, capitalised: bool, precision: str,
                  reinforced: PreTrainedModel | None = None, alpha: float = 5.0) -> list[str]:
    """The likeliest generic next words before the term's occurrences, whole words, best first.

    Of the 400 likeliest tokens by `next_word_probs`, up to `2 * wanted` that start a word, are not
    `banned`, a stopword or (when `capitalised`) a title, and are capitalised as asked, are each finished
    by up to 3 greedy tokens of `model` alone after the last `FINISH_TOKENS` tokens of the first context,
    cut where the word ends.

    Returns:
        Distinct words, best first (up to `2 * wanted`; empty when no occurrence or no token qualifies).
    """
    device = next(model.parameters()).device
    expected = next_word_probs(model, tokenizer, text, candidate, contexts=contexts, precision=precision,
                               reinforced=reinforced, alpha=alpha)
    if expected is None:
        return []
    probs, first_prompt = expected
    firsts: list[int] = []
    for token in torch.argsort(probs, descending=True)[:400].tolist():
        if token in banned:
            continue
        piece = tokenizer.decode([token])
        if not _is_word_start(piece) or piece[1:].lower() in STOPWORDS or piece[1].isupper() != capitalised:
            continue
        if capitalised and piece[1:] in TITLES:  # a title is not a name
            continue
        firsts.append(token)
        if len(firsts) == wanted * 2:
            break
    if not firsts:
        return []
    # finish every word at once: greedy continuation after the end of the first context (the last
    # FINISH_TOKENS tokens: the rest of a word depends on its sentence, not on the paragraphs before it)
    tail = first_prompt[-FINISH_TOKENS:]
    width = len(tail)
    starts = torch.tensor([[*tail, token] for token in firsts], device=device)
    with models.autocast(precision, device):
        grown = model.generate(input_ids=starts, attention_mask=torch.ones_like(starts), max_new_tokens=3,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id)
    words = []
    for row in grown.tolist():
        pieces = [row[width]]
        for following in row[width + 1 :]:
            piece = tokenizer.decode([following])
            if not piece or not piece[0].isalpha():
                break
            pieces.append(following)
        words.append(tokenizer.decode(pieces).strip())
    return list(dict.fromkeys(words))


def name_token(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    """The token a name starts with after a word and a space (`anchors.translate.token_after`), so a bare
    `▁` a SentencePiece tokenizer (Llama 2) puts before it is never taken for it."""
    token = token_after(tokenizer, "x ", name)
    return token if token is not None else tokenizer(f"x {name}", add_special_tokens=False).input_ids[-1]


def pool_names(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, candidate: Candidate,
               pool: tuple[str, ...], banned: set[int], taken: set[str], *, contexts: int, precision: str,
               reinforced: PreTrainedModel | None = None, alpha: float = 5.0) -> list[str]:
    """The ordinary names of `pool` for a person's name, the ones the model expects most where the term
    stands first: each name is scored by the `next_word_probs` of its first token after a space.

    A name whose first token is `banned` (a suggested term's) is never given; one in `taken` (given to
    another term already) only when too few others are left, so that two characters of the target do not
    become one. With no occurrence to read, the order is a hash of the term's (`fallback`'s, stable across runs).

    Returns:
        The allowed names of `pool`, best first, those in `taken` last.
    """
    expected = next_word_probs(model, tokenizer, text, candidate, contexts=contexts, precision=precision,
                               reinforced=reinforced, alpha=alpha)
    first = {name: name_token(tokenizer, name) for name in pool}
    allowed = [name for name in pool if first[name] not in banned]
    if expected is None:
        ranked = [name for name in _pick(pool, candidate.term, len(pool), set()) if name in allowed]
    else:
        probs = expected[0]
        ranked = sorted(allowed, key=lambda name: (-float(probs[first[name]]), name))
    free = [name for name in ranked if name not in taken]
    return free + [name for name in ranked if name in taken]


def propose(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, chosen: list[Candidate], *,
            reinforced: PreTrainedModel | None = None, alpha: float = 5.0, alternatives: int = 3, contexts: int = 6,
            precision: str = "auto", names: NameSource = "model", progress: bool = True) -> dict[str, list[str]]:
    """Up to `alternatives` generic translations for each chosen term, in the chosen order.

    Single words and lower-case phrases take `model_fillers` (a filler naming a suggested term dropped;
    a first name or surname only one-word fillers), topped up by `fallback`; with `names="pool"` a name
    that its surroundings show to be a person's first name or surname (`name_kind`) takes ordinary names
    instead (`pool_names`: the ones the model expects there, each given to one term while the pool lasts,
    terms taken best first); a plural follows its
    singular (`+s`), and a multi-word name is composed from its translated words (or, when none is
    translated, from `fallback`). No translation opens with a function word (`strip_function_words`;
    one left empty is dropped).

    Args:
        model: the baseline model; reinforced: the reinforced one, to steer with `alpha` (optional).
        tokenizer: their tokenizer (with a pad token).
        text: the target text; chosen: the terms to translate.
        alternatives: translations per term; contexts: occurrences read per term.
        precision: the autocast setting; progress: show a progress bar.
        names: `pool` (ordinary names for a person's name) or `model` (the model's capitalised words).
    """
    terms = {c.term for c in chosen}
    taken: set[str] = set()
    banned = _banned_ids(tokenizer, sorted(terms))
    lowered = {term.lower() for term in terms}
    result: dict[str, list[str]] = {}
    # words, and lower-case phrases (`silver shoes`), take the model's own fillers
    singles = [c for c in chosen if (" " not in c.term or c.term[0].islower()) and not _plural_of(c.term, terms)]
    for candidate in tqdm(singles, desc="translations", unit="term", disable=not progress):
        kind = kind_of(candidate, text, terms)
        person, shown = name_kind(candidate, text, terms) if names == "pool" else (kind, False)
        if shown and person in ("first", "surname"):
            kind = person
            pool = POOL_FIRST_NAMES if kind == "first" else POOL_SURNAMES
            words = pool_names(model, tokenizer, text, candidate, pool, banned, taken, contexts=contexts,
                               precision=precision, reinforced=reinforced, alpha=alpha)
            words = [w for w in words if not _names_a_term(w, terms, lowered)][:alternatives]
            result[candidate.term] = words or fallback(kind, candidate.term, alternatives, taken)
            taken.update(result[candidate.term])
            continue
        words = model_fillers(model, tokenizer, text, candidate, banned, contexts=contexts, wanted=alternatives,
                              capitalised=kind != "word", precision=precision, reinforced=reinforced, alpha=alpha)
        words = [w for w in map(strip_function_words, words) if w and not _names_a_term(w, terms, lowered)]
        words = list(dict.fromkeys(words))
        if kind in ("first", "surname"):
            words = [w for w in words if " " not in w]
        if len(words) < alternatives:
            words += fallback(kind, candidate.term, alternatives - len(words), set(words))
        result[candidate.term] = words[:alternatives]
        if names == "pool":  # a name given here is not given again to a person
            taken.update(result[candidate.term])
    for candidate in chosen:  # plurals and multi-word terms follow their parts
        if candidate.term in result:
            continue
        base = _plural_of(candidate.term, terms)
        if base is not None and base in result:
            result[candidate.term] = [f"{w}s" for w in result[base]]
            continue
        result[candidate.term] = _compose(candidate, result, text, terms, alternatives)
    for candidate in chosen:  # a composed name keeps its term's own words, whatever they are
        kept = [option for option in map(strip_function_words, result[candidate.term]) if option]
        result[candidate.term] = list(dict.fromkeys(kept)) or fallback(kind_of(candidate, text, terms),
                                                                       candidate.term, alternatives, set())
    return {c.term: result[c.term] for c in chosen}


def _names_a_term(option: str, terms: set[str], lowered: set[str]) -> bool:
    """Whether a proposed translation brings a suggested term back: the term itself in any case, a term
    inside it, or one of its words a term's plural (`witches` for `Witch`)."""
    if option.lower() in lowered or any(term in option for term in terms):
        return True
    return any(word in lowered or word.rstrip("s") in lowered or word.removesuffix("es") in lowered
               for word in option.lower().split())


def _plural_of(term: str, terms: set[str]) -> str | None:
    """The singular of `term` when it is `X` + `s` and `X` is a term, else None."""
    if term.endswith("s") and term[:-1] in terms:
        return term[:-1]
    return None


def _compose(candidate: Candidate, result: dict[str, list[str]], text: str, terms: set[str],
             alternatives: int) -> list[str]:
    """A multi-word term: its translated words replaced; an untranslated word of its own (capitalised, not a
    title, rarer than `RARE_WORD` in English: `Sherlock` in `Sherlock Holmes`) takes an ordinary name of the
    term's kind (a first name before another word of the name, else a surname or a place), the same for
    the word wherever it stands; the others (titles, connectors, ordinary words) are kept."""
    from whoharry.anchors.candidates import english_frequency

    words = candidate.term.split()
    place = kind_of(candidate, text, terms) == "place"
    if not any(word in result for word in words):
        return fallback("place" if place else "surname", candidate.term, alternatives, set())
    # the ordinary names an untranslated rare word of the name takes, found once for every alternative
    named = {index: fallback("place" if place else "first" if index + 1 < len(words) else "surname", word,
                             alternatives, set())
             for index, word in enumerate(words)
             if word not in result and word[:1].isupper() and word.isalpha() and word not in TITLES
             and word not in CONNECTORS and english_frequency(word) < RARE_WORD}
    options = []
    for choice in range(alternatives):
        parts = []
        for index, word in enumerate(words):
            # translated words change, capitalised as the name writes them; titles, connectors and other
            # words stay
            if word in result:
                option = result[word][choice % len(result[word])]
                if word[:1].isupper():
                    option = " ".join(piece if piece in CONNECTORS else piece[:1].upper() + piece[1:]
                                      for piece in option.split())
                parts.append(option)
            elif index in named:
                parts.append(named[index][choice % alternatives])
            else:
                parts.append(word)
        options.append(" ".join(parts))
    return list(dict.fromkeys(options))

