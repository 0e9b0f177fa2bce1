"""Alignment, anchors and labels do not depend on the tokenizer's kind: SentencePiece-style tokenizers
(a `▁` marks a word start, as in Gemma, Llama 2 and T5) give labels as exact as byte-level BPE does."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from whoharry.anchors.dictionary import parse_anchors
from whoharry.core.text import make_blocks
from whoharry.stages.labels import compute_labels

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


@pytest.fixture(params=["unigram-metaspace", "bpe-byte-fallback"])
def piece_tokenizer(request) -> PreTrainedTokenizerFast:
    tok = _unigram_metaspace() if request.param == "unigram-metaspace" else _bpe_byte_fallback()
    # a BOS before every sequence, as Gemma and Llama 2 put one
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


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
