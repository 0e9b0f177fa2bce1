"""One whole-word rule for every script, decided on the text, not on the block.

Scripts written without spaces (Han, kana, Thai...) have no word boundaries to find, so a key in them
matches wherever it stands, and ROUGE counts their characters; a Latin key keeps whole-word matching.
A block cut is not a word boundary: a key is found in a block only where `anchors check` finds it in
the whole text.
"""

from __future__ import annotations

import re

import pytest

from whoharry.anchors.check import check
from whoharry.anchors.dictionary import parse_anchors, term_pattern
from whoharry.anchors.translate import NO_LABEL, translate_block
from whoharry.core.text import make_blocks
from whoharry.evaluation.completions import mentions, named_references
from whoharry.evaluation.verbatim import rouge_l, words
from whoharry.stages.labels import block_rng, compute_labels

from .conftest import STORY, assert_copy_model_labels, make_copy_model

CHINESE = "哈利去了霍格沃茨。哈利的朋友罗恩也在霍格沃茨。"
CHINESE_ANCHORS = parse_anchors({"哈利": "小明", "霍格沃茨": "魔法学校", "罗恩": "小刚"})


def test_keys_in_a_script_without_spaces_are_found():
    report = check(CHINESE_ANCHORS, CHINESE)
    assert report.never_found == [] and report.occurrences == {"哈利": 2, "霍格沃茨": 2, "罗恩": 1}
    assert CHINESE_ANCHORS.translate_text(CHINESE) == "小明去了魔法学校。小明的朋友小刚也在魔法学校。"


@pytest.mark.parametrize(
    ("term", "text", "found"),
    [
        ("Ron", "Ronald and Ron", ["Ron"]),  # a Latin key is still a whole word
        ("Ron", "Ronald", []),
        ("Harry", "我和Harry去了", ["Harry"]),  # Han characters do not continue a Latin word
        ("Ron", "ที่Ron", ["Ron"]),  # nor does a Thai tone mark
        ("ハリー", "ハリーはホグワーツへ行った", ["ハリー"]),  # katakana inside Japanese text
        ("แฮร์รี่", "แฮร์รี่ไปโรงเรียน", ["แฮร์รี่"]),  # Thai, its tone mark included
        ("แฮร์รี", "แฮร์รี่ไป", []),  # a match never cuts a character off its mark
        ("हैर", "हैरी गया", []),  # a Devanagari vowel sign continues the word
        ("हैरी", "हैरी गया", ["हैरी"]),
        ("Rene", "Rene\u0301 left", []),  # nor does a decomposed accent end a Latin word
        ("C++", "C++ and C++x", ["C++"]),
    ],
)
def test_one_whole_word_rule_for_every_script(term, text, found):
    assert re.findall(term_pattern([term]), text) == found


def test_a_completion_names_a_term_by_the_same_rule():
    named = named_references("哈利的朋友是", "罗恩，他们在霍格沃茨上学", ["罗恩", "霍格沃茨", "哈利"])
    assert named == ["罗恩", "霍格沃茨"]
    assert mentions("ron", "我和Ron说") and not mentions("Ron", "Ronald")
    for term, text, found in [("हैर", "हैरी गया", False), ("ハリー", "ハリーは", True)]:
        assert mentions(term, text) is found


def test_a_script_without_spaces_is_translated_and_aligned(tokenizer):
    """The fixtures' byte-level tokenizer spells each Han character in three byte pieces."""
    blocks = make_blocks(CHINESE, tokenizer, len(tokenizer(CHINESE).input_ids))
    result = translate_block(CHINESE, blocks.ids[0], blocks.offsets[0], CHINESE_ANCHORS, CHINESE_ANCHORS.pattern(),
                             tokenizer, block_rng(0, 0))
    assert result.text == "小明去了魔法学校。小明的朋友小刚也在魔法学校。"
    assert [o.key for o in result.occurrences] == ["哈利", "霍格沃茨", "哈利", "罗恩", "霍格沃茨"]
    for occ in result.occurrences:
        assert tokenizer.decode(result.ids[: result.mapping[occ.last] + 1]).endswith(occ.value)


def test_labels_in_a_script_without_spaces_differ_exactly_at_anchors(tokenizer):
    model = make_copy_model(len(tokenizer)).eval()
    text = CHINESE * 6
    blocks = make_blocks(text, tokenizer, 40)  # 40 byte pieces: cuts fall inside characters and keys
    label_set = compute_labels(model, model, tokenizer, blocks, CHINESE_ANCHORS, alpha=5.0, seed=0, progress=False)
    assert assert_copy_model_labels(text, blocks, CHINESE_ANCHORS, label_set.labels, tokenizer, seed=0) > 0
    assert label_set.stats["anchor_occurrences"] >= 10


def test_rouge_counts_the_characters_of_a_script_without_spaces():
    assert words("哈利去了Hogwarts, 和Ron说") == ["哈", "利", "去", "了", "hogwarts", "和", "ron", "说"]
    # 8 of 10 characters shared, in order: LCS 8, precision = recall = 0.8
    assert rouge_l("哈利去了霍格沃茨的家", "哈利去了霍格沃茨学校") == pytest.approx(0.8)
    assert words("The cat's résumé.") == ["the", "cat", "s", "résumé"]


ANCHORS = parse_anchors({"Ron": "Tom", "Harry": "Jon", "Hogwarts": "Mystic Academy", "Express": "Line",
                         "Hogwarts Express": "school train"})
CUT = "Ronald rode the Hogwarts Express with Harry and Ron. "


def _block(tokenizer, text: str, first: int, last: int):
    """Tokens [first, last) of the whole text's tokenization, as one block."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded.input_ids[first:last], [tuple(span) for span in encoded.offset_mapping[first:last]]
    return translate_block(text, ids, offsets, ANCHORS, ANCHORS.pattern(), tokenizer, block_rng(0, 0))


def _token_ending_at(tokenizer, text: str, end: int) -> int:
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return next(i for i, (_, e) in enumerate(spans) if e == end)


def test_a_block_end_inside_a_word_is_no_word_boundary(tokenizer):
    """`Ron|ald`: the block holds `Ron`, the text does not."""
    cut = _token_ending_at(tokenizer, CUT, len("Ron")) + 1
    assert _block(tokenizer, CUT, 0, cut).occurrences == []
    after = _block(tokenizer, CUT, cut, cut + 12)
    assert "Ron" not in [o.key for o in after.occurrences]


@pytest.mark.parametrize("cut_after", ["Ronald rode the Hogwarts", "Ronald rode the Hogwarts Ex"])
def test_a_match_cut_by_the_block_boundary_is_taken_in_neither_block(tokenizer, cut_after):
    cut = _token_ending_at(tokenizer, CUT, len(cut_after)) + 1
    before, after = _block(tokenizer, CUT, 0, cut), _block(tokenizer, CUT, cut, cut + 30)
    assert [o.key for o in before.occurrences] == []
    assert [o.key for o in after.occurrences] == ["Harry", "Ron"]
    assert after.text.startswith(CUT[len(cut_after):].split(" with")[0])


@pytest.mark.parametrize("length", range(5, 17))
def test_blocks_find_exactly_the_whole_texts_matches_inside_them(tokenizer, length):
    """Whatever the block length, a block's occurrences are the matches `anchors check` finds in the
    whole text that lie inside the block."""
    text = (CUT + STORY) * 2
    blocks = make_blocks(text, tokenizer, length)
    whole = [(m.start(), m.end(), m.group(0)) for m in ANCHORS.pattern().finditer(text)]
    for b, ids in enumerate(blocks.ids):
        offsets = blocks.offsets[b]
        result = translate_block(text, ids, offsets, ANCHORS, ANCHORS.pattern(), tokenizer, block_rng(0, b))
        begin, finish = offsets[0][0], offsets[-1][1]
        expected = [(key, next(i for i, (s, e) in enumerate(offsets) if s <= start < e))
                    for start, end, key in whole if begin <= start and end <= finish]
        assert [(o.key, o.first) for o in result.occurrences] == expected, b
        assert all(u == NO_LABEL or 0 <= u < len(result.ids) for u in result.mapping)
