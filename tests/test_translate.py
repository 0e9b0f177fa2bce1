"""Translation through the anchor dictionary and alignment of positions by character offsets."""

from __future__ import annotations

import random

import pytest

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.translate import NO_LABEL, translate_block
from whoharry.core.text import make_blocks

ANCHORS = parse_anchors(
    {
        "Harry": ["Jon"],
        "Potter": "Carter",
        "Hogwarts": "Mystic Academy",
        "Hogwarts Express": "school train",
        "Ron": "Tom",
        "Quidditch": ["Skyball", "broom racing"],
    }
)


def translate(text: str, tokenizer, anchors=ANCHORS, seed: int = 0, order="longest"):
    blocks = make_blocks(text, tokenizer, len(tokenizer(text).input_ids))
    result = translate_block(
        text, blocks.ids[0], blocks.offsets[0], anchors, anchors.pattern(order), tokenizer, random.Random(seed)
    )
    return blocks, result


def tokens(tokenizer, ids):
    return [tokenizer.decode([i]) for i in ids]


def test_translates_whole_words_longest_first(tokenizer):
    _, result = translate("They rode the Hogwarts Express to Hogwarts, Ron and Harry.", tokenizer)
    assert result.text == "They rode the school train to Mystic Academy, Tom and Jon."
    assert [o.key for o in result.occurrences] == ["Hogwarts Express", "Hogwarts", "Ron", "Harry"]


def test_possessive_and_punctuation_keep_their_suffix(tokenizer):
    _, result = translate("Harry's broom; (Potter) won.", tokenizer)
    assert result.text == "Jon's broom; (Carter) won."


def test_never_matches_inside_a_word(tokenizer):
    _, result = translate("Harrystown and Ronald went to Pottery class.", tokenizer)
    assert result.text == "Harrystown and Ronald went to Pottery class."
    assert result.occurrences == []


def test_ordinary_positions_align_to_the_same_token(tokenizer):
    blocks, result = translate("The match at Hogwarts began, and the crowd cheered loudly.", tokenizer)
    original = tokens(tokenizer, blocks.ids[0])
    translated = tokens(tokenizer, result.ids)
    anchor = result.occurrences[0]
    for t, u in enumerate(result.mapping):
        if t < anchor.first or t > anchor.last:
            assert u != NO_LABEL
            assert original[t] == translated[u], (t, original[t], translated[u])


def test_multi_token_anchor_masks_its_inside_and_maps_its_last_token(tokenizer):
    blocks, result = translate("We took the Hogwarts Express home.", tokenizer)
    occ = result.occurrences[0]
    assert occ.last > occ.first, "the key should span several tokens"
    assert all(result.mapping[t] == NO_LABEL for t in range(occ.first, occ.last))
    last = result.mapping[occ.last]
    assert tokenizer.decode(result.ids[: last + 1]).endswith("school train")
    # the position before the first occurrence keeps its label
    assert result.mapping[occ.first - 1] != NO_LABEL


def test_second_occurrence_unlabels_the_position_before_it(tokenizer):
    blocks, result = translate("Harry ran. Then Harry sat. Ron left.", tokenizer)
    first, second, ron = result.occurrences
    assert (first.repeat, second.repeat, ron.repeat) == (False, True, False)
    assert result.mapping[second.first - 1] == NO_LABEL
    assert result.mapping[ron.first - 1] != NO_LABEL


def test_one_translation_per_key_per_block(tokenizer):
    text = "Quidditch is fun. We love Quidditch. Quidditch again."
    seen = set()
    for seed in range(12):
        _, result = translate(text, tokenizer, seed=seed)
        values = {o.value for o in result.occurrences}
        assert len(values) == 1
        seen |= values
    assert seen == {"Skyball", "broom racing"}


def test_translation_first_token_is_suppressed_after_it_appears(tokenizer):
    blocks, result = translate("Ron met Harry and then Harry met Ron.", tokenizer)
    occ = result.occurrences[0]
    position, token_ids = result.suppress[0]
    assert position == occ.value_first
    assert result.ids[position] in token_ids
    assert tokenizer(" Tom", add_special_tokens=False).input_ids[0] in token_ids


def test_overlapping_matches_take_the_longest(tokenizer):
    anchors = parse_anchors({"Harry": "Jon", "Harry Potter": "Jon Carter", "Potter": "Smith"})
    _, result = translate("Harry Potter smiled at Potter.", tokenizer, anchors)
    assert result.text == "Jon Carter smiled at Smith."


def test_in_dictionary_order_the_first_listed_key_wins_an_overlap(tokenizer):
    """The authors' order: `Order` listed before `Order of the Phoenix` hides it, so the words after
    `Order` are read, and labelled, as they stand; listed after it, the longer key still wins."""
    text = "They joined the Order of the Phoenix at Hogwarts."
    shorter_first = parse_anchors({"Order": "Guild", "Order of the Phoenix": "Circle of Light", "Hogwarts": "Hill"})
    _, longest = translate(text, tokenizer, shorter_first)
    assert longest.text == "They joined the Circle of Light at Hill."
    blocks, authors = translate(text, tokenizer, shorter_first, order="dictionary")
    assert authors.text == "They joined the Guild of the Phoenix at Hill."
    order = authors.occurrences[0]
    assert order.key == "Order" and authors.mapping[order.last + 1] != NO_LABEL  # " of" after "Guild" is labelled
    longer_first = parse_anchors({"Order of the Phoenix": "Circle of Light", "Order": "Guild"})
    assert translate(text, tokenizer, longer_first, order="dictionary")[1].text == longest.text.replace("Hill",
                                                                                                      "Hogwarts")


@pytest.mark.parametrize("text", ["Harry", "Harry Harry Harry", "...Harry!", "\n\nHarry\n"])
def test_edge_texts_keep_mapping_length(tokenizer, text):
    blocks, result = translate(text, tokenizer)
    assert len(result.mapping) == len(blocks.ids[0])
    assert all(u == NO_LABEL or 0 <= u < len(result.ids) for u in result.mapping)
