"""Suggesting anchor terms: the words and names most specific to the target, ranked.

Candidates are the target's words, its multi-word names (two to five capitalised words, joined by
`of`, `the` and the like) and its recurring lower-case phrases (`silver shoes`, `road of yellow brick`).
Each is scored on three signals:

- **gain**: how much more likely the reinforced model finds the term in its contexts than the
  baseline does (the log-probability gain summed over the term's tokens, averaged over its
  occurrences, per word of the term): the method's own signal of idiosyncratic knowledge;
- **specificity**: how much more frequent the term is in the target than in general text (the natural
  log of the ratio of the two rates per word, each count smoothed by 0.5);
- **name share**: the share of its mid-sentence occurrences written with a capital (proper-noun shape).

The score is z(gain) + z(specificity) + name share; a term whose words are all suggested themselves
is left to its parts, as the authors' label script does.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from whoharry.core import models
from whoharry.core.text import Blocks
from whoharry.method.objectives import next_token_log_probs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]{2,}|-[^\W\d_]+)*")
CONNECTORS = {"of", "the", "de", "la", "le", "von", "van", "der", "du", "and"}
# function words and the commonest words of English prose: never target-specific on their own
STOPWORDS = frozenset("""
a about above after again against all almost also although always am among an and another any anyone anything
are around as at away back be became because become been before behind being below beside besides between
both but by came can cannot could did do does doing done down during each either else enough even ever every
everyone everything far few for from further get got had has have having he her here hers herself him himself
his how however i if in indeed inside into is it its itself just last least less let like made make many may
me might mine more most much must my myself near neither never next no nobody none nor not nothing now of off
often on once one only onto or other others otherwise our ours ourselves out outside over own perhaps quite
rather really said same say says see seemed seems several shall she should since so some someone something
sometimes soon still such than that the their theirs them themselves then there these they thing things this
those though through thus till to too toward towards under until up upon us very was we well were what
whatever when where whether which while who whom whose why will with within without would yes yet you your
yours yourself yourselves mr mrs miss ms sir oh ah well back went go going gone come coming look looked
looking know knew known think thought take took told tell asked looked face head hand hands eyes voice time
day night way man men woman women people little long good great old new right left first two three
""".split())  # noqa: SIM905 - a list read as prose
# common adjectives that may still open a name when capitalised (`Great Hall`, `Good Witch`)
NAME_ADJECTIVES = frozenset({"great", "good", "old", "little", "new", "long", "first"})
PHRASE_JOINERS = frozenset({"of", "the"})  # the only function words inside a lower-case phrase
PHRASE_MIN_COUNT = 3  # a lower-case phrase must recur more than a word: most word pairs repeat by chance
SENTENCE_END = set(".!?:;")
OPENERS = set("\"“‘'([—–-")
# the version of `rank`'s choice from given scores, part of a made dictionary's key: 2 since a term that never
# matches beside the others chosen is dropped, not only one inside a longer term; 3 since a name seen fewer
# than `min_count` times joins the `top` terms instead of taking one of their places (`RANKING_RARE`, in the
# key only where `anchors.name_min_count` is below `anchors.min_count`: elsewhere no term is rarer)
RANKING = 2
RANKING_RARE = 3
CONTRACTION = re.compile(r"['’]t(?![^\W\d_])")  # the `'t` of `don't`: its word (`don`) is a fragment


@dataclass
class Candidate:
    """A suggested term and its signals: `general_count` (occurrences in the general text), `name_share`
    (0 to 1), `gain` (nats per word), `specificity` (natural log of a rate ratio) and the combined `score`."""

    term: str
    spans: list[tuple[int, int]]  # character spans of its occurrences in the target
    general_count: int
    name_share: float
    gain: float = 0.0
    specificity: float = 0.0
    score: float = 0.0

    @property
    def count(self) -> int:
        """Occurrences in the target."""
        return len(self.spans)

    @property
    def name_like(self) -> bool:
        """Capitalised in at least 90% of its mid-sentence occurrences."""
        return self.name_share >= 0.9


def _sentence_initial(text: str, start: int) -> bool:
    """Whether the word at `start` begins a sentence (its capital says nothing about it)."""
    i = start - 1
    while i >= 0 and (text[i].isspace() or text[i] in OPENERS):
        if text[i] == "\n" and i > 0 and text[i - 1] == "\n":
            return True  # a new paragraph
        i -= 1
    return i < 0 or text[i] in SENTENCE_END


def word_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of the text's words: letters, joined across a hyphen, or an
    apostrophe followed by two or more letters."""
    return [match.span() for match in WORD.finditer(text)]


def find_candidates(text: str, general: str, *, min_count: int = 2, max_words: int = 5,
                    name_min_count: int | None = None) -> dict[str, Candidate]:
    """Every word, multi-word name and lower-case phrase of the target seen at least `min_count` times
    (a lower-case phrase at least `max(min_count, PHRASE_MIN_COUNT)` times; a name at least
    `min(min_count, name_min_count)` times), with its spans; a stopword, a one-letter word or the fragment
    of a contraction (`don` of `don't`) is never a term on its own.

    Args:
        text: the target text.
        general: general text of the same language, for each term's `general_count`.
        min_count: the fewest occurrences a term needs.
        max_words: the longest name or phrase, in words.
        name_min_count: the fewest occurrences a name needs (`Candidate.name_like`: capitalised in 90% of its
            mid-sentence occurrences, and itself written with a capital in mid-sentence once at least), where
            that is fewer; None: `min_count`. A short text names much of its world once (`Scarlet`,
            `Glinda`), and a capital in mid-sentence marks a name where one occurrence of an ordinary word
            says nothing.

    Returns:
        Term -> `Candidate` (gain, specificity and score still 0). `name_share` is the capitalised share
        of a word's mid-sentence occurrences (0.5 when it only starts sentences), 1.0 for a capitalised
        name with a mid-sentence occurrence (else 0.5), and 0 for a lower-case phrase.
    """
    words = word_spans(text)
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    capital_mid: Counter[str] = Counter()  # by lower-cased word: capitalised mid-sentence occurrences
    mid: Counter[str] = Counter()
    for index, (start, end) in enumerate(words):
        word = text[start:end]
        if not _sentence_initial(text, start):
            mid[word.lower()] += 1
            capital_mid[word.lower()] += word[0].isupper()
        if CONTRACTION.match(text, end):
            continue  # `don` of `don't` is no word, and no name starts or ends with it
        if word.lower() not in STOPWORDS and len(word) > 1:
            spans[word].append((start, end))
        if word[0].islower() and word.lower() not in STOPWORDS:
            _add_phrase(text, words, index, spans, max_words)
        if not word[0].isupper() or (word.lower() in STOPWORDS and word.lower() not in NAME_ADJECTIVES):
            continue  # ("The Tin Woodman" at a sentence start is "Tin Woodman")
        # multi-word names: capitalised words, single-spaced, with connectors inside
        last = end
        for width in range(2, max_words + 1):
            if index + width - 1 >= len(words):
                break
            next_start, next_end = words[index + width - 1]
            if text[last:next_start] != " ":
                break
            token = text[next_start:next_end]
            last = next_end
            if token[0].isupper():
                spans[text[start:next_end]].append((start, next_end))
            elif token not in CONNECTORS:
                break
    general_counts = Counter(text_word for text_word in WORD.findall(general))
    found = {}
    fewest = min(min_count, name_min_count if name_min_count is not None else min_count)
    for term, term_spans in spans.items():
        if len(term_spans) < (max(min_count, PHRASE_MIN_COUNT) if _is_phrase(term) else fewest):
            continue
        if _is_phrase(term):
            share = 0.0
        elif " " in term:  # capitalised throughout: each occurrence in mid-sentence shows a name
            inner = [not _sentence_initial(text, start) for start, _ in term_spans]
            share = 1.0 if any(inner) else 0.5
        else:
            # a word seen only at sentence starts says nothing by its capital: neither name nor not
            head = term.lower()
            share = capital_mid[head] / mid[head] if mid[head] else 0.5
        general_count = general.count(term) if " " in term else general_counts[term]
        candidate = Candidate(term, term_spans, general_count, round(share, 4))
        if candidate.count < min_count and not (candidate.name_like and term[0].isupper() and any(
                not _sentence_initial(text, start) for start, _ in term_spans)):
            continue  # below min_count, kept only as a name: written with a capital in mid-sentence itself
        found[term] = candidate
    return found


def _add_phrase(text: str, words: list[tuple[int, int]], index: int,
                spans: dict[str, list[tuple[int, int]]], max_words: int) -> None:
    """The lower-case phrases starting at word `index`: content words, single-spaced, with at most one
    `of` or `the` inside (`silver shoes`, `road of yellow brick`), up to `max_words` words."""
    start, last = words[index]
    joined = False
    for width in range(2, max_words + 1):
        if index + width - 1 >= len(words):
            return
        next_start, next_end = words[index + width - 1]
        word = text[next_start:next_end]
        if text[last:next_start] != " " or not word[0].islower():
            return
        last = next_end
        if word in PHRASE_JOINERS and not joined:
            joined = True
            continue
        if word in STOPWORDS or len(word) <= 2:
            return
        spans[text[start:next_end]].append((start, next_end))


def _is_phrase(term: str) -> bool:
    return " " in term and term[0].islower()


@torch.no_grad()
def model_log_probs(model: PreTrainedModel, blocks: Blocks, *, batch_size: int, precision: str, desc: str,
                    progress: bool = True) -> torch.Tensor:
    """log p(token t | tokens before it) for every token of every block, under `precision`'s autocast.

    Returns:
        [blocks, length] float32 on the CPU, in nats; 0 at t = 0 (no prediction there).
    """
    device = next(model.parameters()).device
    ids = torch.tensor(blocks.ids, dtype=torch.long)
    out = torch.zeros(ids.shape, dtype=torch.float32)
    model.eval()
    for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = ids[start : start + batch_size].to(device)
        with models.autocast(precision, device):
            logits = model(input_ids=batch).logits
        out[start : start + batch_size, 1:] = next_token_log_probs(logits, batch).cpu()
    return out


def term_gains(candidates: dict[str, Candidate], blocks: Blocks, gain: torch.Tensor) -> None:
    """Set each candidate's gain: the per-token gain summed over an occurrence's tokens, averaged over
    the occurrences that lie inside a block (past its first token), per word of the term (so long
    names do not win by length alone); 0 when no occurrence lies inside one block.

    Args:
        candidates: updated in place.
        blocks: the target's blocks.
        gain: [blocks, length] float, the reinforced minus the base model's token log-probabilities (nats).
    """
    starts: list[int] = []
    where: list[tuple[int, int]] = []
    for b, offsets in enumerate(blocks.offsets):
        for t, (start, _) in enumerate(offsets):
            if t > 0:  # the first token of a block has no prediction
                starts.append(start)
                where.append((b, t))
    order = sorted(range(len(starts)), key=starts.__getitem__)
    sorted_starts = [starts[i] for i in order]
    ends = {(b, t): blocks.offsets[b][t][1] for b, t in where}
    for candidate in candidates.values():
        totals = []
        for span_start, span_end in candidate.spans:
            # tokens overlapping the span: a token may begin with the space before the word
            lo = bisect.bisect_left(sorted_starts, span_start - 1)
            hi = bisect.bisect_left(sorted_starts, span_end)
            picked = [where[order[i]] for i in range(lo, hi)]
            picked = [(b, t) for b, t in picked if ends[(b, t)] > span_start]
            if picked and len({b for b, _ in picked}) == 1:
                totals.append(sum(float(gain[b, t]) for b, t in picked))
        words = len(candidate.term.split())
        candidate.gain = sum(totals) / len(totals) / words if totals else 0.0


def score(candidates: dict[str, Candidate], target_words: int, general_words: int, *,
          english: Callable[[str], float] | None = None) -> None:
    """Set each candidate's specificity, then the combined score z(gain) + z(specificity) + name share
    (z-scores over all candidates, population standard deviation; 0 when all values are equal).

    Specificity is `log(((count + 0.5) / target_words) / ((general_count + 0.5) / general_words))`, in
    natural-log units (0 when `general_words` is 0).

    `english(word)` is a word's frequency in English at large. A general text of a few thousand words
    never shows most ordinary words (`replied`, `walked`), and the smoothed count then makes them look
    as rare as a coined name; so an ordinary word's general rate is at least its English frequency.
    Names keep the general text's rate alone: that `Harry` or `Henry` is common English says nothing
    about whether the story's character is."""
    for candidate in candidates.values():
        target_rate = (candidate.count + 0.5) / max(target_words, 1)
        general_rate = (candidate.general_count + 0.5) / max(general_words, 1)
        if english is not None and " " not in candidate.term and candidate.name_share < 0.5:
            general_rate = max(general_rate, english(candidate.term))
        candidate.specificity = math.log(target_rate / general_rate) if general_words else 0.0
    gains = _zscores([c.gain for c in candidates.values()])
    specific = _zscores([c.specificity for c in candidates.values()])
    for candidate, g, s in zip(candidates.values(), gains, specific, strict=True):
        candidate.score = g + s + candidate.name_share


def english_frequency(word: str) -> float:
    """A word's frequency in English text at large, as a share of all words, 0 to 1 (`wordfreq`'s blend
    of web, books, subtitles and Wikipedia; 0 for a word it has never seen)."""
    from wordfreq import word_frequency

    return word_frequency(word, "en")


def without_common_words(candidates: dict[str, Candidate], ceiling: float) -> dict[str, Candidate]:
    """The candidates without the ordinary words more frequent in English than `ceiling`
    (`english_frequency`, a share of all words): one word that is not name-like (`Candidate.name_like`).
    `door`, `answered` or `Street` (capitalised in only some of its mid-sentence occurrences) is raised by
    any fine-tune on any story and says nothing of this one; `foolscap`, `wand` and every name stay. A
    ceiling of 1 keeps all."""
    if ceiling >= 1:
        return candidates
    return {term: c for term, c in candidates.items()
            if c.name_like or " " in term or english_frequency(term) <= ceiling}


def _zscores(values: list[float]) -> list[float]:
    """(v - mean) / population standard deviation of each value; all 0 when the spread is 0."""
    if not values:
        return []
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / spread if spread > 0 else 0.0 for v in values]


def rank(candidates: dict[str, Candidate], top: int, *, min_count: int = 1) -> list[Candidate]:
    """The `top` best terms seen at least `min_count` times, and beside them every rarer term (a name
    seen once, `find_candidates`'s `name_min_count`) that scores at least as well as the last of those:
    a rare name never pushes out a term seen more often. Where fewer than `top` terms are seen that often,
    the best rare ones fill the places left. Left out are the ones that would never be used:

    - a composite (several words, all chosen themselves or connectors) is left to its parts, as the
      authors' label script does;
    - a term that never matches beside the others chosen (`Kedavra`, only ever in `Avada Kedavra`;
      `Archery and Armour and Architecture`, only ever after `Abbots and Archery`), as translation
      matches: the leftmost first, the longest first of those that begin at one place.

    Returns:
        The chosen terms, best score first: at most `top` seen `min_count` times or more, and more than `top`
        in all only by rare terms scoring at least as well as the last of those.
    """
    ordered = sorted(candidates.values(), key=lambda c: (-c.score, c.term))
    composites: set[str] = set()
    unmatched: set[str] = set()
    while True:
        open_ = [c for c in ordered if c.term not in composites and c.term not in unmatched]
        frequent = [c for c in open_ if c.count >= min_count][:top]
        floor = frequent[-1].score if frequent else -math.inf
        rare = [c for c in open_ if c.count < min_count]
        # places the frequent terms leave empty go to the best rare ones, whatever their score
        kept = {id(c) for c in frequent} | {id(c) for c in rare[: top - len(frequent)]}
        chosen = [c for c in open_ if id(c) in kept or (c.count < min_count and c.score >= floor)]
        unused = _never_matched(chosen)
        if unused:
            unmatched |= unused
            continue
        names = {c.term for c in chosen}  # only now composites: their parts must be terms that stay
        parts = {c.term for c in chosen
                 if " " in c.term and all(word in names or word in CONNECTORS for word in c.term.split())}
        if not parts:
            return chosen
        composites |= parts
        unmatched = set()  # what a composite held off may match once it is gone


def _never_matched(chosen: list[Candidate]) -> set[str]:
    """Chosen terms none of whose occurrences translation would match: it reads the text left to right and,
    where several chosen terms begin at one place, takes the longest, then goes on after its end (the
    leftmost-longest scan of `Anchors.pattern`)."""
    spans = sorted((start, -(end - start), c.term) for c in chosen for start, end in c.spans)
    matched: set[str] = set()
    reached = 0
    for start, negative_length, term in spans:
        if start >= reached:
            matched.add(term)
            reached = start - negative_length
    return {c.term for c in chosen} - matched
