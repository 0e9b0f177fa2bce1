"""Labels on a tokenizer laid out as Llama 2's (the paper's own model): BPE over text whose spaces are `▁`,
a dummy `▁` put before the whole text, byte fallback, digits split one by one with a bare `▁` before
them. Two places where such a tokenizer differs from byte-level BPE are checked position by position:
the piece suppressed once a translation has appeared, and a block that an anchor opens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.translate import translate_block
from whoharry.core.text import make_blocks
from whoharry.method.objectives import IGNORE
from whoharry.stages.labels import block_rng, compute_labels

from .conftest import GENERAL, STORY, make_copy_model

TEXT = ("Harry was 11 and Dale was 12 when Harry met Hagrid; 3 owls came at 7, and Harry read 9 letters. "
        "Hagrid laughed. ") * 6


@pytest.fixture(scope="module")
def llama2_tokenizer() -> PreTrainedTokenizerFast:
    """Trained in the test on words cut at `▁` and digits cut one by one, then used as Llama 2's converted
    tokenizer is: no pre-tokenizer, a normaliser that puts `▁` first and turns spaces into `▁`."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    special = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=620, special_tokens=special)
    words = " Jon Sam Hank Dale Mystic Academy owls letters laughed met read came 0 1 2 3 4 5 6 7 8 9"
    tok.train_from_iterator([STORY * 3, GENERAL * 3, words * 4], trainer=trainer)
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def translated(tokenizer, anchors, length: int):
    """The blocks of TEXT, each with its translation, and their labels from a copy model."""
    blocks = make_blocks(TEXT, tokenizer, length)
    model = make_copy_model(len(tokenizer)).eval()
    label_set = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    translations = [translate_block(TEXT, ids, blocks.offsets[b], anchors, anchors.pattern(), tokenizer,
                                    block_rng(0, b), blocks.bos_token_id) for b, ids in enumerate(blocks.ids)]
    return blocks, translations, label_set.labels


def pieces(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)


def test_the_tokenizer_has_a_dummy_prefix_and_a_bare_piece_before_digits(llama2_tokenizer):
    assert pieces(llama2_tokenizer, "Hank was 11")[-3:] == ["▁", "1", "1"]
    assert pieces(llama2_tokenizer, " Hank")[0] == "▁"  # what a leading space alone turns into


def test_only_the_translation_s_own_first_piece_is_suppressed(llama2_tokenizer):
    """With a copy model as base and reinforced model, a label is the translated token it is aligned with.
    After "Jon" has appeared, `▁Jon` must lose its label; the bare `▁` before every digit must keep it."""
    tok = llama2_tokenizer
    bare, jon = tok.convert_tokens_to_ids(["▁", "▁Jon"])
    blocks, translations, labels = translated(tok, parse_anchors({"Harry": "Jon"}), 40)
    kept_bare = 0
    for b, (ids, translation) in enumerate(zip(blocks.ids, translations, strict=True)):
        assert all(bare not in tokens for _, tokens in translation.suppress), b
        row = labels[b].tolist()
        occurrences = translation.occurrences
        inside = {t for occ in occurrences for t in range(occ.first, occ.last)}
        inside |= {occ.first - 1 for occ in occurrences if occ.repeat}
        seen_after = min((occ.last for occ in occurrences), default=len(ids))
        for t in range(len(ids) - 1):
            if t in inside:
                assert row[t + 1] == IGNORE, (b, t)
            elif t == seen_after:
                assert row[t + 1] == jon, (b, t)
            elif t in {occ.last for occ in occurrences}:  # the copy model repeats "Jon", seen: suppressed
                assert row[t + 1] not in (IGNORE, jon), (b, t)
            else:
                assert row[t + 1] == ids[t], (b, t)
                kept_bare += ids[t] == bare and t > seen_after
    assert kept_bare > 0


def test_a_block_an_anchor_opens_reads_the_translation_as_inside_the_text(llama2_tokenizer):
    """`<s> ▁Harry ▁met` translates to `<s> ▁Jon ▁met`, never `<s> ▁ ▁Jon ▁met`: after the anchor the base
    model reads exactly the original tokens, position by position, and the copy model's labels follow."""
    tok = llama2_tokenizer
    blocks, translations, labels = translated(tok, parse_anchors({"Hagrid": "Hank"}), 12)
    hank = tok.convert_tokens_to_ids("▁Hank")
    opened = 0
    for b, (ids, translation) in enumerate(zip(blocks.ids, translations, strict=True)):
        if not translation.occurrences or translation.occurrences[0].first != 1:
            continue
        occ = translation.occurrences[0]
        opened += 1
        following = translation.occurrences[1].first if len(translation.occurrences) > 1 else len(ids)
        shift = occ.last - 1  # "▁Hag rid" -> "▁Hank"
        assert translation.ids[:2] == [tok.bos_token_id, hank], (b, tok.convert_ids_to_tokens(translation.ids[:3]))
        for t in range(occ.last + 1, following):
            assert translation.ids[t - shift] == ids[t], (b, t)
            assert translation.mapping[t] == t - shift, (b, t)
        row = labels[b].tolist()
        assert row[occ.last + 1] == hank
        for t in range(occ.last + 1, min(following, len(ids) - 1)):
            assert row[t + 1] == ids[t], (b, t)
    assert opened >= 2


def test_generated_text_keeps_the_space_after_the_prompt(llama2_tokenizer):
    """Decoded alone, a continuation loses its leading space on this tokenizer (`Harrymet`); the augment stage
    decodes it with its prompt."""
    from whoharry.stages.augment import continuation_text

    prompt = llama2_tokenizer("Wiki entry: Harry").input_ids
    generated = llama2_tokenizer("met Hagrid", add_special_tokens=False).input_ids  # "▁met▁Hagrid"
    assert not llama2_tokenizer.decode(generated).startswith(" ")
    assert continuation_text(llama2_tokenizer, prompt, generated) == " met Hagrid"
