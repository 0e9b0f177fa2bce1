"""Translating one block through the anchor dictionary and aligning it with the original tokens.

Bookkeeping is in characters: every anchor occurrence is widened to the original tokens it touches,
that span of text is replaced (one random translation per key per block), and the translated text is
tokenized afresh. An original position t is aligned with the translated token that ends at the same
logical character, so the base model's prediction there continues the same (translated) prefix.

Anchors are found in the whole text, not in the block alone (`_text_matches`): whether a key stands as a
whole word depends on the characters on either side, and a block cut is not a word boundary (`Ron|ald`
holds no `Ron`); a match that a block cut splits is not translated in either block. Before the first
anchor the translated block keeps the original tokens (`_original_lead`): text tokenized on its own
can start differently from the same text inside the whole (a SentencePiece dummy prefix, a byte-level
`add_prefix_space`, a word or a character cut by the block start), and the base model must read there
what the reinforced model read.

Masking rules (the paper's, as in its published label script):
- predictions from inside an anchor get no label (or, with `labels.inside_anchors: translate`, the
  labels of the translation's tokens aligned with them); the anchor's last token maps to its
  translation's last token;
- on the 2nd+ occurrence of a key in a block, the position before it gets no label;
- once a translation has appeared, its first token is suppressed at every later translated position.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from whoharry.anchors.dictionary import Anchors
from whoharry.config import InsideAnchors

if TYPE_CHECKING:
    import re

NO_LABEL = -1


@dataclass
class Occurrence:
    """One anchor found in a block."""

    key: str
    value: str
    first: int  # index of the anchor's first token in the block
    last: int  # index of its last token
    repeat: bool  # the key already occurred earlier in this block
    value_first: int = -1  # index of the translation's first token in the translated block


@dataclass
class BlockTranslation:
    """A translated block and how its positions line up with the original block: its text, its token ids
    (a BOS first when the original has one), `mapping` (one entry per original position), the anchor
    occurrences and the suppression list for `method.whp.suppress_seen_translations`."""

    text: str
    ids: list[int]
    # For each original position t: the translated position whose next-token prediction stands in
    # for the prediction at t, or NO_LABEL.
    mapping: list[int]
    occurrences: list[Occurrence] = field(default_factory=list)
    # (translated position of a translation's first token, token ids to suppress after it)
    suppress: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)


@dataclass
class _Region:
    """One anchor match widened to whole tokens, and the text that replaces that span."""

    occurrence: Occurrence
    start: int  # character span in the original text covered by the anchor's tokens
    end: int
    replacement: str
    value_offset: int  # where the translation starts inside `replacement`


def translate_block(
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    anchors: Anchors,
    pattern: re.Pattern[str],
    tokenizer: PreTrainedTokenizerBase,
    rng: random.Random,
    bos_token_id: int | None = None,
    inside_anchors: InsideAnchors = "mask",
) -> BlockTranslation:
    """Translate one block (token ids with their character spans in `text`) and align it with the
    original, by the masking rules above (Eldan & Russinovich 2023, section 2.2, as the authors' label
    script does it).

    Args:
        text: the whole text the offsets point into; anchors are matched in it whole, so a key stands as a
            whole word in the block only where it does in the text.
        ids: the block's token ids; offsets: their (start, end) character spans (a BOS's is empty). The
            block needs at least one token with a non-empty span (`IndexError` otherwise).
        anchors: the dictionary; pattern: its `Anchors.pattern()`, compiled once by the caller.
        tokenizer: the fast tokenizer that made the block.
        rng: picks one translation per key per block.
        bos_token_id: put before the translated tokens (the block starts with it).
        inside_anchors: `mask` (the paper's rule) leaves the predictions from inside an anchor without a
            label; `translate` aligns them with the translation's, token by token from its first: the
            i-th token of a key of m tokens with the i-th of its translation of n tokens, for i < min(m, n)
            - 1, so `Order of the` is labelled with what follows the translation's third token. Where the
            key has more tokens than its translation, its further inner positions stay unlabelled (no
            position of the translation stands for them); where it has fewer, the translation's extra
            tokens are read but stand for no original position. The key's last token maps to the
            translation's last either way.

    Returns:
        The `BlockTranslation`: the translated text runs from the block's first to its last content
        character; `mapping[t]` is a translated position or `NO_LABEL` (-1).
    """
    content = [i for i, (s, e) in enumerate(offsets) if e > s]
    begin, finish = offsets[content[0]][0], offsets[content[-1]][1]
    ends = [offsets[i][1] for i in content]

    regions = _find_regions(text, begin, finish, offsets, content, ends, pattern)
    keys = sorted({r.occurrence.key for r in regions})
    choice = {key: rng.choice(anchors.entries[key]) for key in keys}
    for region in regions:
        occ = region.occurrence
        occ.value = choice[occ.key]
        prefix = text[region.start : region.start + region.value_offset]
        suffix_start = region.start + region.value_offset + len(occ.key)
        region.replacement = prefix + occ.value + text[suffix_start : region.end]

    # Build the translated text and a map from original character positions to translated ones.
    pieces: list[str] = []
    cursor = begin
    shift_at: list[tuple[int, int]] = []  # (original char, cumulative shift from here on)
    shift = 0
    translated_end: list[int] = []
    value_start: list[int] = []
    for region in regions:
        pieces.append(text[cursor : region.start])
        translated_start = region.start - begin + shift
        value_start.append(translated_start + region.value_offset)
        pieces.append(region.replacement)
        shift += len(region.replacement) - (region.end - region.start)
        shift_at.append((region.end, shift))
        translated_end.append(region.end - begin + shift)
        cursor = region.end
    pieces.append(text[cursor:finish])
    translated = "".join(pieces)
    shift_points = [point for point, _ in shift_at]

    def to_translated(char: int) -> int:
        k = bisect.bisect_right(shift_points, char)
        return char - begin + (shift_at[k - 1][1] if k else 0)

    lead_end = regions[0].start if regions else finish
    if lead_end == begin and begin > 0:
        t_ids, t_offsets = _tokenize_in_context(tokenizer, text[max(0, begin - _CONTEXT) : begin], translated)
    else:
        t_ids, t_offsets = _tokenize_in_context(tokenizer, "", translated)
        t_ids, t_offsets = _original_lead(ids, offsets, content, begin, lead_end, t_ids, t_offsets)
    lead = 0
    if bos_token_id is not None:
        t_ids = [bos_token_id, *t_ids]
        t_offsets = [(0, 0), *t_offsets]
        lead = 1
    end_to_index: dict[int, int] = {}
    for j, (s, e) in enumerate(t_offsets):
        if e > s:
            end_to_index[e] = j  # the last token ending at a character
    t_ends = [e for _, e in t_offsets]

    mapping = [NO_LABEL] * len(ids)
    if lead:
        mapping[0] = 0
    inside: set[int] = set()
    for region in regions:
        inside.update(range(region.occurrence.first, region.occurrence.last))
    last_of = {r.occurrence.last: i for i, r in enumerate(regions)}
    for t, (s, e) in enumerate(offsets):
        if e <= s or t in inside:
            continue
        if t + 1 < len(offsets) and offsets[t + 1][1] == e:
            continue  # a partial character (byte piece): align only the token that completes it
        if t in last_of:
            mapping[t] = end_to_index.get(translated_end[last_of[t]], NO_LABEL)
        else:
            mapping[t] = end_to_index.get(to_translated(e), NO_LABEL)

    occurrences: list[Occurrence] = []
    suppress: list[tuple[int, tuple[int, ...]]] = []
    for region, start in zip(regions, value_start, strict=True):
        occ = region.occurrence
        if occ.repeat and occ.first > 0:
            mapping[occ.first - 1] = NO_LABEL
        occ.value_first = min(bisect.bisect_right(t_ends, start), len(t_ids) - 1)
        if occ.value_first < lead:
            occ.value_first = lead
        suppress.append((occ.value_first, _first_tokens(tokenizer, occ.value, t_ids[occ.value_first])))
        value_last = mapping[occ.last]
        if inside_anchors == "translate" and value_last != NO_LABEL:
            for i in range(min(occ.last - occ.first, value_last - occ.value_first)):
                mapping[occ.first + i] = occ.value_first + i
        occurrences.append(occ)
    return BlockTranslation(translated, t_ids, mapping, occurrences, suppress)


_CONTEXT = 32  # characters of the text before a block that an anchor opens, read to tokenize it in place


def _tokenize_in_context(tokenizer: PreTrainedTokenizerBase, context: str,
                         translated: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The tokens of `translated` (ids, character spans in it) as they come after `context` in one text.

    A block that an anchor opens has no original tokens to keep before it (`_original_lead`), and its
    text alone would be tokenized as a text start: a tokenizer with a dummy prefix (Llama 2, T5) turns
    " Dale went" into `▁ ▁Dale ▁went`, one bare `▁` more than the same words inside the text
    (`▁Dale ▁went`). Read after the text that precedes the block, the dummy prefix goes to that
    context and is cut off with it. Where no token boundary falls exactly where the context ends (a
    merge across it), the text is tokenized alone."""
    both = context + translated
    encoded = tokenizer(both, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids: list[int] = list(encoded["input_ids"])
    spans: list[tuple[int, int]] = [tuple(span) for span in encoded["offset_mapping"]]
    cut = len(context)
    if cut:
        first = next((j for j, (_, end) in enumerate(spans) if end > cut), len(spans))
        if all(end <= cut for _, end in spans[:first]) and (first == len(spans) or spans[first][0] >= cut):
            return ids[first:], [(s - cut, e - cut) for s, e in spans[first:]]
        return _tokenize_in_context(tokenizer, "", translated)
    return ids, spans


def _original_lead(ids: list[int], offsets: list[tuple[int, int]], content: list[int], begin: int, lead_end: int,
                   t_ids: list[int], t_offsets: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The translated block's tokens with the unchanged text before its first anchor given back its
    original tokens, up to the last token boundary the two tokenizations share there.

    Whatever the tokenizer, a block that starts mid-word must not gain a word start: SentencePiece's dummy
    prefix makes "pt." alone "▁pt" where inside "slept." it is "pt", a byte-level BPE with
    `add_prefix_space` makes "atch" alone "Ġatch" (" atch") where inside "match" it is "atch", and any BPE
    may merge a cut word or character differently. Where the two tokenizations agree, nothing changes."""
    cut = lead_end - begin  # no anchor before it, so the same position in the translated text
    original_ends = {offsets[i][1] - begin for i in content if offsets[i][1] <= lead_end}
    split, k = 0, 0  # the translated tokens [0, k) cover exactly [0, split)
    for j in range(1, len(t_offsets) + 1):
        end = t_offsets[j - 1][1]
        if end > cut:
            break
        if end in original_ends and (j == len(t_offsets) or t_offsets[j][0] >= end):
            split, k = end, j
    if k == 0:
        return t_ids, t_offsets
    kept = [i for i in content if offsets[i][1] - begin <= split]
    return ([ids[i] for i in kept] + t_ids[k:],
            [(offsets[i][0] - begin, offsets[i][1] - begin) for i in kept] + t_offsets[k:])


@lru_cache(maxsize=2)
def _text_matches(pattern: re.Pattern[str], text: str) -> tuple[list[int], list[tuple[int, int, str]]]:
    """Every match of the pattern in the whole text, as `anchors check` finds them: (start, end, key) in
    order, and their starts for bisecting. Kept for the last texts, so labelling a text's blocks one by one
    searches it once."""
    matches = [(match.start(), match.end(), match.group(0)) for match in pattern.finditer(text)]
    return [start for start, _, _ in matches], matches


def _find_regions(text: str, begin: int, finish: int, offsets: list[tuple[int, int]], content: list[int],
                  ends: list[int], pattern: re.Pattern[str]) -> list[_Region]:
    """The whole text's anchor matches that lie inside [begin, finish), each widened to whole tokens; a
    match the block's start or end cuts, and one overlapping an earlier region's tokens, is skipped."""
    regions: list[_Region] = []
    seen: set[str] = set()
    last_token = -1
    starts, matches = _text_matches(pattern, text)
    for index in range(bisect.bisect_left(starts, begin), bisect.bisect_left(starts, finish)):
        ms, me, key = matches[index]
        if me > finish:
            continue  # the block's end cuts the match
        # first content token ending after the match start, last one starting before its end
        k = bisect.bisect_right(ends, ms)
        if k >= len(content):
            continue
        first = content[k]
        last = first
        for i in content[k:]:
            if offsets[i][0] >= me:
                break
            last = i
        if first <= last_token or offsets[first][0] > ms or offsets[last][1] < me:
            continue
        start, end = offsets[first][0], offsets[last][1]
        occ = Occurrence(key=key, value="", first=first, last=last, repeat=key in seen)
        seen.add(key)
        last_token = last
        regions.append(_Region(occ, start, end, "", ms - start))
    return regions


def _first_tokens(tokenizer: PreTrainedTokenizerBase, value: str, seen_first: int) -> tuple[int, ...]:
    """The translation's first piece in the forms it takes: as seen in the translated block, after a word
    and a space, and at a line start (`token_after`)."""
    found = {seen_first}
    for context in (". ", "\n"):
        first = token_after(tokenizer, context, value)
        if first is not None:
            found.add(first)
    return tuple(sorted(found))


def token_after(tokenizer: PreTrainedTokenizerBase, context: str, value: str) -> int | None:
    """The token that holds `value`'s first character where it follows `context` in one text, so a bare `▁`
    or space piece a tokenizer puts before it (Llama 2 before a digit, or for a leading space with its
    dummy prefix) is never taken for it; None when no token reaches past the context (an empty value)."""
    encoded = tokenizer(context + value, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    spans = encoded["offset_mapping"]
    first = next((j for j, (_, end) in enumerate(spans) if end > len(context)), None)
    return None if first is None else encoded["input_ids"][first]
