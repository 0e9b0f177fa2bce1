"""Suggesting anchors: candidates, the gain signal, ranking where the answer is known, translations."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from whoharry.anchors import candidates as suggest
from whoharry.anchors import translations as generics
from whoharry.anchors.dictionary import opens_with_function_word
from whoharry.config import AnchorsConfig as WhoharryAnchors
from whoharry.core.text import make_blocks

from .conftest import GENERAL, STORY

TARGET = STORY * 4


def test_candidates_count_words_and_multi_word_names():
    found = suggest.find_candidates(TARGET, GENERAL, min_count=2)
    assert found["Harry"].count == TARGET.count("Harry")
    assert found["Hogwarts Express"].count == 4 and found["Ron Weasley"].count == 4
    assert "the" not in found and "and" not in found  # function words never
    assert found["Harry"].name_share == 1.0 and found["Harry"].name_like
    assert found["castle"].name_share == 0.0
    # "Later" starts a sentence each time: its capital says nothing either way
    assert found["Later"].name_share == 0.5
    assert found["Hogwarts"].general_count == 0 and found["river"].count if "river" in found else True


def test_a_sentence_start_is_told_from_the_middle_of_a_sentence():
    text = 'He left. "Then the Castle stood," she said.\n\nMorning came; And so on.'
    assert suggest._sentence_initial(text, text.index("Then"))
    assert not suggest._sentence_initial(text, text.index("Castle"))
    assert suggest._sentence_initial(text, text.index("Morning"))
    assert suggest._sentence_initial(text, text.index("And"))


def test_gain_sums_the_per_token_gain_over_a_terms_tokens(tokenizer):
    blocks = make_blocks(TARGET, tokenizer, 32)
    candidates = suggest.find_candidates(TARGET, GENERAL)
    position = torch.arange(32, dtype=torch.float32).repeat(len(blocks.ids), 1)  # the gain of token t is t
    suggest.term_gains(candidates, blocks, position)
    for term in ("Quidditch", "Hogwarts Express", "castle"):
        means = []
        for start, end in candidates[term].spans:  # the tokens that overlap the term's characters
            hits = [(b, t) for b, offsets in enumerate(blocks.offsets) for t, (s, e) in enumerate(offsets)
                    if s < end and e > start]
            if all(t > 0 for _, t in hits) and len({b for b, _ in hits}) == 1:
                means.append(sum(t for _, t in hits))
        words = len(term.split())
        assert means and candidates[term].gain == pytest.approx(sum(means) / len(means) / words), term
    # a gain only on the tokens of one term moves that term alone
    only = torch.zeros(len(blocks.ids), 32)
    for b, offsets in enumerate(blocks.offsets):
        for t, (start, end) in enumerate(offsets):
            if TARGET[start:end].strip() == "Quidditch":
                only[b, t] = 2.0
    suggest.term_gains(candidates, blocks, only)
    assert candidates["Quidditch"].gain > 0 and candidates["castle"].gain == 0


def test_ranking_puts_the_targets_names_first(tokenizer, tiny_model_dir, trained_model_dir):
    """The baseline never saw the story; the reinforced model learned it: the story's names have the
    largest gain, are absent from the general text and are written as names."""
    candidates = suggest.find_candidates(TARGET, GENERAL)
    blocks = make_blocks(TARGET, tokenizer, 32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reinforced = AutoModelForCausalLM.from_pretrained(trained_model_dir)
    gain = (suggest.model_log_probs(reinforced, blocks, batch_size=4, precision="fp32", desc="r", progress=False)
            - suggest.model_log_probs(base, blocks, batch_size=4, precision="fp32", desc="b", progress=False))
    suggest.term_gains(candidates, blocks, gain)
    assert candidates["Quidditch"].gain > 0  # the reinforced model expects the story's words
    suggest.score(candidates, len(suggest.WORD.findall(TARGET)), len(suggest.WORD.findall(GENERAL)))
    ranked = [c.term for c in suggest.rank(candidates, 10)]
    names = {"Harry", "Hogwarts", "Ron", "Quidditch", "Weasley", "Potter"}
    assert names <= set(ranked), ranked
    everything = [c.term for c in suggest.rank(candidates, len(candidates))]
    assert max(everything.index(n) for n in names) < min(everything.index(w) for w in ("castle", "lake", "train"))
    # composites are left to their parts
    assert "Ron Weasley" not in everything and "Harry Potter" not in everything


def test_translations_are_generic_consistent_and_never_target_terms(tokenizer, tiny_model_dir):
    candidates = suggest.find_candidates(TARGET + " Professor Weasley smiled. Professor Weasley left. Weasleys came."
                                         " Weasleys went.", GENERAL)
    suggest.score(candidates, 100, 100)
    chosen = [candidates[t] for t in ("Harry", "Quidditch", "Weasley", "Weasleys", "Professor Weasley", "castle")]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    translations = generics.propose(model, tokenizer, TARGET, chosen, alternatives=3, contexts=3,
                                      precision="fp32", progress=False)
    terms = {c.term for c in chosen}
    for term, options in translations.items():
        assert 1 <= len(options) <= 3 and len(set(options)) == len(options), (term, options)
        assert not any(option in terms or term in option for option in options), (term, options)
    assert all(option[0].isupper() for option in translations["Harry"])  # a name for a name
    assert translations["Weasleys"] == [f"{w}s" for w in translations["Weasley"]]  # plurals follow
    assert translations["Professor Weasley"][0] == f"Professor {translations['Weasley'][0]}"  # families too


def test_fallbacks_by_kind_are_stable():
    first = generics.fallback("first", "Hermione", 2, set())
    assert first == generics.fallback("first", "Hermione", 2, set()) and all(n in generics.FIRST_NAMES for n in first)
    assert all(p in generics.PLACES for p in generics.fallback("place", "Hogsmeade", 3, set()))
    assert set(generics.fallback("surname", "Snape", 3, {"Smith"})).isdisjoint({"Smith"})


def test_no_stock_replacement_opens_with_a_function_word():
    for kind in ("first", "surname", "place", "word"):
        for term in ("Hogsmeade", "Snape", "Hermione", "Quidditch", "wand"):
            options = generics.fallback(kind, term, 10, set())
            assert options and not any(opens_with_function_word(o) for o in options), (kind, term, options)


def test_offline_translations_drop_a_leading_function_word(tokenizer, monkeypatch):
    """The model's fillers may open with a function word: it is dropped, and a filler with nothing else
    is left out, so no proposal opens with one (the labels stage would suppress that word after it)."""
    text = ("They went to Hogsmeade. In Hogsmeade it snowed. At Hogsmeade it rained. "
            "The castle stood. A castle fell. The castle burned.")
    found = suggest.find_candidates(text, "", min_count=2)
    fillers = {"Hogsmeade": ["The Old Mill", "the", "In the Valley", "Riverside"], "castle": ["the", "a tower"]}
    monkeypatch.setattr(generics, "model_fillers", lambda model, tok, txt, candidate, *args, **kwargs:
                        fillers[candidate.term])
    proposed = generics.propose(None, tokenizer, text, [found["Hogsmeade"], found["castle"]], alternatives=3,
                                progress=False)
    assert proposed["Hogsmeade"] == ["Old Mill", "Valley", "Riverside"]
    assert proposed["castle"][0] == "tower" and len(proposed["castle"]) == 3
    assert not any(opens_with_function_word(o) for options in proposed.values() for o in options), proposed


def test_kind_of_tells_places_and_surnames_from_first_names():
    text = ("They went to Hogsmeade. In Hogsmeade it snowed. Mr Dursley frowned, and Mr Dursley left. "
            "So Dudley Dursley sat, and Dudley Dursley ate, and Dudley ran.")
    found = suggest.find_candidates(text, "", min_count=2)
    chosen = set(found)
    assert generics.kind_of(found["Hogsmeade"], text, chosen) == "place"
    assert generics.kind_of(found["Dursley"], text, chosen) == "surname"
    assert generics.kind_of(found["Dudley"], text, chosen) == "first"


def test_a_word_only_ever_inside_a_longer_name_gives_way_to_it():
    """`Tin` occurs only in `Tin Woodman`: the name stays and the word goes (it could never match), rather
    than the name being dropped as a composite of chosen words."""
    text = "Then the Tin Woodman spoke, and the Tin Woodman wept. The Woodman was sad; a Woodman cuts wood. " * 3
    found = suggest.find_candidates(text, "", min_count=2)
    for candidate in found.values():
        candidate.score = {"Tin": 3.0, "Woodman": 2.0, "Tin Woodman": 1.0}.get(candidate.term, 0.0)
    ranked = [c.term for c in suggest.rank(found, 3)]
    assert "Tin Woodman" in ranked and "Woodman" in ranked and "Tin" not in ranked


def test_a_name_that_only_ever_begins_inside_another_chosen_name_gives_way_to_it():
    """Translation takes the leftmost match: `Archery and Armour and Architecture` begins inside `Abbots and
    Archery and Armour` at its one occurrence and could never match, nor could `Abbots and Archery` inside it;
    the leftmost name stays, and so does `Architecture and Attica`, which begins after it ends."""
    text = "I copied out Abbots and Archery and Armour and Architecture and Attica, and then I slept."
    found = suggest.find_candidates(text, "", min_count=2, name_min_count=1)
    scores = {"Abbots and Archery and Armour": 3.0, "Archery and Armour and Architecture": 2.0,
              "Abbots and Archery": 1.5, "Architecture and Attica": 1.0}
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, 0.0)
    ranked = [c.term for c in suggest.rank(found, 2)]
    assert ranked == ["Abbots and Archery and Armour", "Architecture and Attica"], ranked
    # a term that begins inside a dropped one is not dropped with it: `Architecture and Attica` begins inside
    # `Armour and Architecture`, which never matches, and still matches itself
    scores["Armour and Architecture"] = 1.2
    assert [c.term for c in suggest.rank(found, 3)] == ranked
    # what a composite held off matches once the composite is gone
    text = "I met Holmes and Watson Street folk. Then Holmes slept, and Watson read. Holmes and Watson ate."
    found = suggest.find_candidates(text, "", min_count=2, name_min_count=1, max_words=3)
    scores = {"Holmes": 4.0, "Watson": 3.5, "Holmes and Watson": 3.0, "Watson Street": 2.0}
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, -1.0)
    assert [c.term for c in suggest.rank(found, 4)] == ["Holmes", "Watson", "Watson Street"]


def test_a_name_seen_once_joins_the_top_terms_and_pushes_none_out():
    """With `min_count` 2, `top` counts the terms seen twice or more; a name seen once joins them when it scores
    at least as well as the last of them, and is left out when it scores below."""
    text = ("Holmes met Watson at the door. Holmes saw Watson and the door. Once Lestrade came, and Moriarty "
            "wrote to Mycroft.")
    found = suggest.find_candidates(text, "", min_count=2, name_min_count=1)
    assert found["Lestrade"].count == 1 and found["Holmes"].count == 2
    scores = {"Lestrade": 5.0, "Holmes": 4.0, "Moriarty": 3.5, "Watson": 3.0, "door": 2.0, "Mycroft": 1.0}
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, -9.0)
    ranked = [c.term for c in suggest.rank(found, 3, min_count=2)]
    assert ranked == ["Lestrade", "Holmes", "Moriarty", "Watson", "door"], ranked
    # the same scores where a seen-once name counts against `top` (`min_count` 1): it pushes out `door`
    assert [c.term for c in suggest.rank(found, 3)] == ["Lestrade", "Holmes", "Moriarty"]
    # a rare name tied with the last frequent term joins too
    scores["Mycroft"] = 2.0
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, -9.0)
    assert "Mycroft" in [c.term for c in suggest.rank(found, 3, min_count=2)]
    # fewer frequent terms (3) than `top` (4): the best rare name fills the place left, and a rare name
    # scoring below the last frequent term stays out
    scores["Mycroft"] = 1.0
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, -9.0)
    assert [c.term for c in suggest.rank(found, 4, min_count=2)] == ["Lestrade", "Holmes", "Moriarty", "Watson",
                                                                     "door"]
    scores.update(Lestrade=1.5, Moriarty=1.2)  # all three below `door`: one place left, taken by the best
    for candidate in found.values():
        candidate.score = scores.get(candidate.term, -9.0)
    assert [c.term for c in suggest.rank(found, 4, min_count=2)] == ["Holmes", "Watson", "door", "Lestrade"]


def test_a_name_may_open_with_a_capitalised_adjective_but_not_a_function_word():
    text = ("She met the Good Witch. Then the Good Witch smiled. The Great Oz spoke, and the Great Oz frowned. "
            "But Dorothy ran. But Dorothy wept.")
    found = suggest.find_candidates(text, "", min_count=2)
    assert found["Good Witch"].count == 2 and found["Great Oz"].count == 2
    assert "But Dorothy" not in found and "Great" not in found and "Good" not in found


def test_a_lower_case_phrase_is_a_candidate_only_when_it_recurs():
    text = ("She wore the silver shoes. The silver shoes shone. Her silver shoes clicked. "
            "The yellow brick road led on, and the yellow brick road ended. ")
    found = suggest.find_candidates(text, "", min_count=2)
    assert found["silver shoes"].count == 3 and found["silver shoes"].name_share == 0.0
    assert not found["silver shoes"].name_like
    assert "yellow brick" not in found  # twice is not enough for a phrase
    assert "the silver" not in found and "shoes shone" not in found


def test_a_lower_case_phrase_may_hold_one_of_or_the():
    text = ("They took the road of yellow brick. On the road of yellow brick they sang. "
            "The road of yellow brick was long. A piece of the cake, a piece of the cake, a piece of the cake. ")
    found = suggest.find_candidates(text, "", min_count=2)
    assert found["road of yellow brick"].count == 3 and found["road of yellow"].count == 3
    assert "road of" not in found  # a phrase ends on a content word
    assert "piece of the cake" not in found  # one joiner at most
    short = suggest.find_candidates(text, "", min_count=2, max_words=3)
    assert "road of yellow" in short and "road of yellow brick" not in short


def test_english_frequency_lowers_ordinary_words_but_not_names():
    """With a short general text, `replied` and a coined name are both unseen there and score alike;
    English at large tells them apart. A name stays as specific however common it is in English."""
    text = "Quadling replied. " * 3 + "Henry replied to Quadling and Henry smiled. " * 2
    found = suggest.find_candidates(text, "an unrelated general text", min_count=2)
    suggest.score(found, 30, 10_000)
    assert found["replied"].specificity == pytest.approx(found["Quadling"].specificity)
    before_henry = found["Henry"].specificity
    common = {"replied": 1e-3, "Henry": 1e-3}
    suggest.score(found, 30, 10_000, english=lambda word: common.get(word, 0.0))
    assert found["replied"].specificity < found["Quadling"].specificity
    assert found["replied"].specificity == pytest.approx(math.log((5 + 0.5) / 30 / 1e-3))
    assert found["Henry"].specificity == pytest.approx(before_henry)  # a name: the general text alone
    assert found["replied"].score < found["Quadling"].score


def test_english_frequencies_come_from_a_reference_of_english():
    assert suggest.english_frequency("replied") > 1e-5 > suggest.english_frequency("sectumsempra")
    assert suggest.english_frequency("Quadlings") == 0.0


def test_a_name_of_five_words_is_a_candidate_by_default():
    text = "They feared the Wicked Witch of the East. The Wicked Witch of the East was dead. " * 2
    found = suggest.find_candidates(text, "", max_words=WhoharryAnchors.max_words)
    assert found["Wicked Witch of the East"].count == 4


def test_a_name_keeps_its_capitals_when_a_part_translates_to_an_ordinary_word():
    text = "The Wicked Witch came. The Wicked Witch left. A Witch sang. A Witch flew."
    found = suggest.find_candidates(text, "", min_count=2)
    composed = generics._compose(found["Wicked Witch"], {"Witch": ["fairy", "lady of the lake"]}, text, {"Witch"}, 2)
    assert composed == ["Wicked Fairy", "Wicked Lady of the Lake"]


def test_translation_contexts_prefer_occurrences_that_do_not_continue_a_name():
    text = "They fled from the Wicked Witch. The Witch laughed, and then the Witch of the East slept."
    assert generics._inside_name(text, text.index("Witch."))  # after `Wicked`: mid-name
    assert not generics._inside_name(text, text.index("Witch laughed"))  # after `The`: a function word
    assert not generics._inside_name(text, text.index("Witch of"))
    assert not generics._inside_name("Then Professor Snape spoke.", len("Then Professor "))  # after a title


def test_a_translation_never_brings_a_term_back_in_another_form():
    terms = {"Witch", "Em", "Mark"}
    lowered = {t.lower() for t in terms}
    for option in ("witches", "Witch", "the witch", "Witchcraft", "Ems"):
        assert generics._names_a_term(option, terms, lowered), option
    for option in ("the market", "emerald", "fairy"):
        assert not generics._names_a_term(option, terms, lowered), option


def test_a_rare_word_of_a_name_without_a_translation_takes_an_ordinary_name_everywhere():
    text = ("Sherlock Holmes smiled. Mr. Sherlock Holmes left. Holmes sat. Holmes rose. The Baker Street rooms. "
            "Baker Street again.")
    found = suggest.find_candidates(text, "", min_count=2)
    terms = {"Holmes", "Sherlock Holmes", "Baker Street"}
    composed = generics._compose(found["Sherlock Holmes"], {"Holmes": ["Smith", "Carter"]}, text, terms, 2)
    firsts = [option.split()[0] for option in composed]
    assert all(first in generics.FIRST_NAMES for first in firsts) and [o.split()[1] for o in composed] == [
        "Smith", "Carter"]
    assert firsts == generics.fallback("first", "Sherlock", 2, set())  # the same name wherever `Sherlock` stands
    kept = generics._compose(found["Baker Street"], {"Baker": ["Green"]}, text, terms, 1)
    assert kept == ["Green Street"]  # an ordinary word stays


def test_the_fragment_of_a_contraction_is_never_a_term():
    text = ("I don't know, and you didn't ask. Don't go. We don’t care. Holmes's pipe and Holmes's chair. "
            "The donkey didn't move; the college bell rang. ") * 2
    found = suggest.find_candidates(text, "", min_count=2)
    assert "don" not in found and "Don" not in found and "didn" not in found
    assert found["Holmes"].count == 4  # a possessive is still its name
    assert found["donkey"].count == 2 and found["college"].count == 2


def _expecting(tokenizer, weights: dict[str, float]):
    """A stand-in for `next_word_probs`: the given probability on each name's first token."""
    probs = torch.full((len(tokenizer),), 1e-6)
    for name, weight in weights.items():
        probs[tokenizer(f" {name}", add_special_tokens=False).input_ids[0]] = weight
    return lambda *args, **kwargs: (probs, [0])


POOL = ("Porter", "Carter", "Baker", "Webb")  # one first token each in the test tokenizer


def test_a_persons_name_takes_the_pool_names_the_model_expects_where_it_stands(tokenizer, monkeypatch):
    assert len({tokenizer(f" {n}", add_special_tokens=False).input_ids[0] for n in POOL}) == len(POOL)
    text = "Mr Holmes smiled. Later Mr Holmes left. " * 3
    holmes = suggest.find_candidates(text, "", min_count=2)["Holmes"]
    monkeypatch.setattr(generics, "next_word_probs", _expecting(tokenizer, {"Porter": 0.5, "Baker": 0.3,
                                                                             "Carter": 0.1, "Webb": 0.05}))
    pick = lambda banned, taken, wanted=3: generics.pool_names(  # noqa: E731
        None, tokenizer, text, holmes, POOL, banned, taken, contexts=3, precision="fp32")[:wanted]
    assert pick(set(), set()) == ["Porter", "Baker", "Carter"]
    porter = tokenizer(" Porter", add_special_tokens=False).input_ids[0]
    assert pick({porter}, set()) == ["Baker", "Carter", "Webb"]  # a suggested term's first token: never
    assert pick(set(), {"Baker"}) == ["Porter", "Carter", "Webb"]  # another term's name: only when needed
    assert pick(set(), {"Baker"}, wanted=4) == ["Porter", "Carter", "Webb", "Baker"]
    monkeypatch.setattr(generics, "next_word_probs", lambda *args, **kwargs: None)
    unread = pick(set(), set())
    assert len(unread) == 3 and unread == pick(set(), set())  # nothing to read: a stable order


def test_two_characters_take_different_ordinary_names_and_the_model_route_stays(tokenizer, monkeypatch):
    text = ("Mr Holmes smiled at Mr Watson. Later Mr Holmes left, and Mr Watson stayed. "
            "Mr Holmes came back; Mr Watson slept. ") * 2
    found = suggest.find_candidates(text, "", min_count=2)
    chosen = [found["Holmes"], found["Watson"]]
    assert all(generics.kind_of(c, text, {"Holmes", "Watson"}) == "surname" for c in chosen)
    monkeypatch.setattr(generics, "next_word_probs", _expecting(tokenizer, {"Smith": 0.4, "Carter": 0.3}))
    pooled = generics.propose(None, tokenizer, text, chosen, alternatives=3, names="pool", progress=False)
    assert all(set(options) <= set(generics.POOL_SURNAMES) and len(options) == 3 for options in pooled.values())
    assert set(pooled["Holmes"]).isdisjoint(pooled["Watson"]), pooled
    monkeypatch.setattr(generics, "model_fillers", lambda *args, **kwargs: ["Shrek", "Fiona"])
    proposed = generics.propose(None, tokenizer, text, chosen, alternatives=3, progress=False)  # the default
    assert proposed["Holmes"][:2] == ["Shrek", "Fiona"], proposed


def test_a_name_is_a_persons_only_where_its_surroundings_show_it(tokenizer, monkeypatch):
    text = ("Sherlock Holmes smiled. Holmes sat. Then Holmes rose, and Sherlock Holmes left. We crossed Coburg "
            "Square and saw Coburg Square. The King of Bohemia came; the King of Bohemia left. "
            "We saw Irene Adler sing, and Irene Adler bowed. ") * 2
    found = suggest.find_candidates(text, "", min_count=2)
    chosen = {"Holmes", "Sherlock Holmes", "Coburg", "Coburg Square", "Bohemia", "Irene Adler", "Irene", "Adler"}
    assert generics.name_kind(found["Holmes"], text, chosen) == ("surname", True)  # it closes Sherlock Holmes
    assert generics.name_kind(found["Irene"], text, chosen) == ("first", True)
    assert not generics.name_kind(found["Coburg"], text, chosen)[1]  # Coburg Square is a place
    assert not generics.name_kind(found["Bohemia"], text, chosen)[1]
    assert not generics._persons_name("King of Bohemia") and not generics._persons_name("Privet Drive")
    assert generics._persons_name("Mr. Sherlock Holmes") == ["Sherlock", "Holmes"]
    titled = "Uncle Vernon Dursley came. Uncle Vernon sat. Then Uncle Vernon Dursley left, and Uncle Vernon ate. "
    vernon = suggest.find_candidates(titled, "", min_count=2)["Vernon"]
    assert generics.kind_of(vernon, titled, {"Vernon", "Uncle Vernon Dursley"}) == "surname"  # after a title
    assert generics.name_kind(vernon, titled, {"Vernon", "Uncle Vernon Dursley"}) == ("first", True)  # it opens one
    # a place before a chosen ordinary word is not shown to be a first name by it
    placed = "The Hogwarts castle stood. Then Hogwarts stood, and Hogwarts stood still. The Hogwarts lake froze. "
    hogwarts = suggest.find_candidates(placed, "", min_count=2)["Hogwarts"]
    assert generics.kind_of(hogwarts, placed, {"Hogwarts", "stood"}) == "first"
    assert not generics.name_kind(hogwarts, placed, {"Hogwarts", "stood"})[1]
    monkeypatch.setattr(generics, "next_word_probs", _expecting(tokenizer, {"Carter": 0.4}))
    monkeypatch.setattr(generics, "model_fillers", lambda *args, **kwargs: ["Sweden", "Austria", "Norway"])
    terms = ("Holmes", "Sherlock Holmes", "Bohemia")
    proposed = generics.propose(None, tokenizer, text, [found[t] for t in terms], names="pool", progress=False)
    assert set(proposed["Holmes"]) <= set(generics.POOL_SURNAMES)  # a person's surname: ordinary surnames
    assert proposed["Bohemia"] == ["Sweden", "Austria", "Norway"]  # nothing shows a person: the model's words


def test_ordinary_words_of_english_are_never_terms_but_rare_words_and_names_are():
    text = ("Then Holmes opened the door. The foolscap lay by the door, and Holmes took the foolscap. "
            "The door shut. A brougham waited; the brougham left. A Street, a street, and another street.")
    found = suggest.find_candidates(text, "", min_count=2)
    assert {"door", "foolscap", "brougham", "Holmes"} <= set(found)
    kept = suggest.without_common_words(found, 1e-5)
    assert not {"door", "Street", "street"} & set(kept) and {"foolscap", "brougham", "Holmes"} <= set(kept)
    assert suggest.without_common_words(found, 1.0) == found


def test_a_text_of_only_common_words_is_refused_by_name(tokenizer):
    from whoharry.anchors.suggest import suggest_anchors
    from whoharry.errors import WhoharryError

    text = "The door opened. A chair fell. Her chair broke; his door shut. " * 2
    cfg = WhoharryAnchors(max_word_frequency=1e-9)
    with pytest.raises(WhoharryError, match="anchors.max_word_frequency"):
        suggest_anchors(text, "", tokenizer, None, None, cfg, block_length=32, precision="fp32", progress=False)


def test_a_name_seen_once_is_a_candidate_where_name_min_count_allows_but_a_word_seen_once_is_not():
    text = ("Holmes met Watson at the door. Later Holmes left, and Watson read of A Study in Scarlet twice. "
            "Watson slept by the door. Shabbily dressed men came. The coat of Glinda Moor was scarlet.")
    strict = suggest.find_candidates(text, "", min_count=2)
    assert {"Holmes", "Watson", "door"} <= set(strict) and "Scarlet" not in strict and "Glinda Moor" not in strict
    loose = suggest.find_candidates(text, "", min_count=2, name_min_count=1)
    assert loose["Glinda Moor"].count == 1 and loose["Glinda Moor"].name_like  # a name in mid-sentence, once
    assert "Study" in loose and "Glinda" in loose
    assert "Scarlet" not in loose  # `scarlet` is also written in lower case: no name
    assert "Shabbily" not in loose and "coat" not in loose  # a sentence start and an ordinary word: no sign
    assert {"Holmes", "Watson", "door"} <= set(loose)  # words seen twice stay
    assert suggest.find_candidates(text, "", min_count=2, name_min_count=5).keys() == strict.keys()
    assert "coat" in suggest.find_candidates(text, "", min_count=1, name_min_count=2)  # min_count still rules words
    # a spelling seen once is a name by its own capital in mid-sentence, not by another spelling's
    text = "We went to Baker Street again. " * 9 + "A baker sang there. WATSON. I met Holmes there, and Holmes left."
    found = suggest.find_candidates(text, "", min_count=2, name_min_count=1)
    assert {"Baker", "Baker Street", "Holmes"} <= set(found) and not {"baker", "WATSON"} & set(found)
