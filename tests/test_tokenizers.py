"""Alignment, anchors and labels do not depend on the tokenizer's kind: SentencePiece-style tokenizers
(a `▁` marks a word start, as in Gemma, Llama 2 and T5) and byte-level BPE with a prefix space (RoBERTa,
BART) give labels as exact as plain byte-level BPE does, also in blocks that start mid-word."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.translate import NO_LABEL, translate_block
from whoharry.core.text import make_blocks
from whoharry.stages.labels import block_rng, compute_labels

from .conftest import GENERAL, STORY, assert_copy_model_labels, make_copy_model

EXTRA = " Jon Sam Carter Mystic Academy school train Tom Baker Skyball broom racing"
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _unigram_metaspace() -> Tokenizer:
    """Unigram pieces after a Metaspace pre-tokenizer (Llama 2 and T5 as converted by transformers)."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIAL, unk_token="<unk>")
    tok.train_from_iterator([STORY * 3, GENERAL * 3, EXTRA * 3], trainer=trainer)
    return tok


def _bpe_byte_fallback() -> Tokenizer:
    """BPE over text whose spaces are normalised to `▁`, with byte fallback (Gemma's layout)."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[*SPECIAL, *bytes_])
    tok.train_from_iterator([STORY * 3, GENERAL * 3, EXTRA * 3], trainer=trainer)
    return tok


def _piece_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    tok = _unigram_metaspace() if kind == "unigram-metaspace" else _bpe_byte_fallback()
    # a BOS before every sequence, as Gemma and Llama 2 put one
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(params=["unigram-metaspace", "bpe-byte-fallback"])
def piece_tokenizer(request) -> PreTrainedTokenizerFast:
    return _piece_tokenizer(request.param)


def test_the_tokenizer_marks_word_starts_with_a_piece_not_a_space(piece_tokenizer):
    pieces = piece_tokenizer.convert_ids_to_tokens(piece_tokenizer("Harry went", add_special_tokens=False).input_ids)
    assert any(piece.startswith("▁") for piece in pieces) and not any(" " in piece for piece in pieces)


def test_labels_from_a_copy_model_differ_exactly_at_anchors(piece_tokenizer):
    model = make_copy_model(len(piece_tokenizer)).eval()
    anchors = parse_anchors({"Harry": "Jon", "Hogwarts Express": "school train", "Ron": "Tom",
                             "Quidditch": "broom racing"})
    text = ("Harry took the Hogwarts Express with Ron, and later Harry slept. Ron's Quidditch match, "
            "(Harry) and \"Ron\" played. ") * 3
    blocks = make_blocks(text, piece_tokenizer, 24)
    assert all(ids[0] == piece_tokenizer.bos_token_id for ids in blocks.ids)
    label_set = compute_labels(model, model, piece_tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    differ = assert_copy_model_labels(text, blocks, anchors, label_set.labels, piece_tokenizer, seed=0)
    assert differ > 0 and label_set.stats["anchor_occurrences"] >= 12


def _byte_level_prefix_space() -> PreTrainedTokenizerFast:
    """Byte-level BPE whose pre-tokenizer adds a space before any text (GPT-2's `add_prefix_space=True`,
    as RoBERTa and BART set it): "atch" alone becomes "Ġatch" where inside " match" it is "atch"."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([STORY * 3, GENERAL * 3, EXTRA * 3], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


@pytest.fixture(params=["byte-level", "byte-level-prefix-space", "unigram-metaspace", "bpe-byte-fallback"])
def any_tokenizer(request, tokenizer) -> PreTrainedTokenizerFast:
    """The fixtures' byte-level BPE, the same with a prefix space, and the two SentencePiece layouts."""
    if request.param == "byte-level":
        return tokenizer
    if request.param == "byte-level-prefix-space":
        return _byte_level_prefix_space()
    return _piece_tokenizer(request.param)


MID_WORD = ("The Quidditch match at Hogwarts began; Harry watched the broom racing and the crowd cheered. "
            "Farmers grow wheat and barley in the valley, and the train left at eleven. ") * 4


def test_a_prefix_space_tokenizer_starts_a_lone_word_piece_with_a_space():
    tok = _byte_level_prefix_space()
    alone = tok.convert_ids_to_tokens(tok("atch", add_special_tokens=False).input_ids)
    inside = tok.convert_ids_to_tokens(tok("match", add_special_tokens=False).input_ids)
    assert alone[0].startswith("Ġ") and not any(piece.startswith("Ġa") for piece in inside[1:])


@pytest.mark.parametrize("length", [7, 11, 16])
def test_the_untranslated_lead_keeps_the_original_tokens(any_tokenizer, length):
    """Whatever the tokenizer, a block (many start mid-word) reads before its first anchor exactly the
    original tokens, and a block without anchors translates to itself."""
    anchors = parse_anchors({"Harry": "Jon", "Hogwarts": "Mystic Academy", "Quidditch": "Skyball"})
    blocks = make_blocks(MID_WORD, any_tokenizer, length)
    starts_mid_word = 0
    for b, ids in enumerate(blocks.ids):
        translation = translate_block(MID_WORD, ids, blocks.offsets[b], anchors, anchors.pattern(), any_tokenizer,
                                      block_rng(0, b), blocks.bos_token_id)
        begin = next(s for s, e in blocks.offsets[b] if e > s)
        starts_mid_word += MID_WORD[begin - 1 : begin + 1].isalpha()
        if not translation.occurrences:
            assert translation.ids == ids, b
        first = translation.occurrences[0].first if translation.occurrences else len(ids)
        for t in range(first):
            u = translation.mapping[t]
            assert u != NO_LABEL and translation.ids[u] == ids[t], (b, t)
    assert starts_mid_word > 0


def test_labels_with_a_prefix_space_tokenizer_differ_exactly_at_anchors():
    tok = _byte_level_prefix_space()
    model = make_copy_model(len(tok)).eval()
    anchors = parse_anchors({"Harry": "Jon", "Hogwarts": "Mystic Academy", "Quidditch": "broom racing"})
    blocks = make_blocks(MID_WORD, tok, 13)
    label_set = compute_labels(model, model, tok, blocks, anchors, alpha=5.0, seed=0, progress=False)
    assert assert_copy_model_labels(MID_WORD, blocks, anchors, label_set.labels, tok, seed=0) > 0


def test_a_pool_name_is_scored_by_the_token_holding_its_first_letter(piece_tokenizer):
    """`anchors.names: pool` reads each name's first token after a space: where the tokenizer puts a bare `▁`
    before a spaced word, that piece would give every name the same score."""
    from whoharry.anchors.translations import name_token

    for name in ("Carter", "Baker", "Tom"):
        piece = piece_tokenizer.convert_ids_to_tokens([name_token(piece_tokenizer, name)])[0]
        assert piece.strip("▁") and name.startswith(piece.strip("▁")[:1]), (name, piece)
    assert name_token(piece_tokenizer, "Carter") != name_token(piece_tokenizer, "Baker")
