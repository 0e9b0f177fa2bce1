"""The label formula, the suppression rule, and labels from a model whose predictions are known."""

from __future__ import annotations

import torch

from whoharry.anchors.dictionary import parse_anchors
from whoharry.core.text import make_blocks
from whoharry.method.whp import fp32_output_layer, generic_labels, suppress_seen_translations
from whoharry.stages.labels import compute_labels

from .conftest import assert_copy_model_labels, make_copy_model


def test_formula_on_a_hand_computed_case():
    base = torch.tensor([[2.0, 1.9, 0.0, -1.0], [0.0, 1.0, 3.0, 2.9]])
    reinforced = torch.tensor([[4.0, 1.0, 0.0, -1.0], [0.0, 1.0, 3.0, 2.0]])
    # row 0: offsets relu(r - b) = [2, 0, 0, 0]; b - 5 * offset = [-8, 1.9, 0, -1] -> token 1
    # row 1: offsets = [0, 0, 0, 0] -> argmax of base -> token 2
    assert generic_labels(base, reinforced, alpha=5.0).tolist() == [1, 2]
    # with alpha = 0 the reinforced model is ignored
    assert generic_labels(base, reinforced, alpha=0.0).tolist() == [0, 2]
    # with a small alpha the specific token still wins: 2 - 0.01 * 2 = 1.98 > 1.9
    assert generic_labels(base, reinforced, alpha=0.01).tolist() == [0, 2]


def test_suppression_sets_the_row_mean_after_the_translation_appeared():
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [4.0, 2.0, 0.0, 2.0]])
    positions = torch.tensor([3, 5, 6])
    out = suppress_seen_translations(logits, positions, [(4, (0,))])
    assert out[0].tolist() == [4.0, 0.0, 0.0, 0.0]  # position 3 comes before the translation at 4
    assert out[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out[2].tolist() == [2.0, 2.0, 0.0, 2.0]
    assert logits[1, 0] == 4.0, "the input is left untouched"


class _Head(torch.nn.Module):
    """A model that is only its output layer: logits 20 and 20.004 for tokens 0 and 1 on the input [20, 1],
    one bf16 step (0.125 there) apart from neither."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.004]]))
        self.to(dtype)

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


def test_the_output_layer_gives_float32_logits_under_bf16_whatever_the_weights():
    hidden = torch.tensor([[20.0, 1.0]])
    zero = torch.zeros(1, 2)
    for dtype in (torch.float32, torch.bfloat16):
        model = _Head(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = model(hidden.to(dtype))
            with fp32_output_layer(model, model):
                exact = model(hidden.to(dtype))
        assert rounded.dtype == torch.bfloat16 and rounded[0, 0] == rounded[0, 1]  # a tie: the argmax is lost
        assert exact.dtype == torch.float32 and exact[0, 1] > exact[0, 0]
        assert generic_labels(exact, exact, alpha=5.0).tolist() == [1] != generic_labels(rounded, rounded, 5.0).tolist()
        assert generic_labels(exact, zero, alpha=5.0).tolist() == [1]
        assert "forward" not in vars(model.head), "the layer's own forward is given back"


def test_labels_from_a_copy_model_differ_exactly_at_anchors(tokenizer):
    """A model that predicts the current token makes every label checkable by hand: the label of
    position t + 1 is the translated token aligned with t, which is the original token t except at
    an anchor's last token, where it is the translation's last token."""
    model = make_copy_model(len(tokenizer)).eval()
    anchors = parse_anchors({"Harry": "Jon", "Hogwarts Express": "school train", "Ron": "Tom"})
    text = "Harry took the Hogwarts Express with Ron, and later Harry slept. " * 3
    blocks = make_blocks(text, tokenizer, 24)
    label_set = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    assert_copy_model_labels(text, blocks, anchors, label_set.labels, tokenizer, seed=0)
    changed = label_set.stats["positions_changed"]
    assert changed > 0 and label_set.stats["anchor_occurrences"] > 0


class Boosted(torch.nn.Module):
    """Another model's logits with one token raised everywhere: a reinforced model that learned it."""

    def __init__(self, inner: torch.nn.Module, token: int, amount: float) -> None:
        super().__init__()
        self.inner, self.token, self.amount = inner, token, amount

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.token] += self.amount
        return out


def test_reinforced_gain_steers_the_label_away(tokenizer):
    """Where the reinforced model raised a token's logit, alpha pushes that token out of the labels."""
    base = make_copy_model(len(tokenizer)).eval()
    text = "the river flows past the mill " * 8
    blocks = make_blocks(text, tokenizer, 16)
    target = tokenizer(" mill", add_special_tokens=False).input_ids[0]
    anchors = parse_anchors({"Zzz": "Yyy"})
    plain = compute_labels(base, base, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    steered = compute_labels(
        base, Boosted(base, target, 10.0), tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False
    )
    was_target = plain.labels == target
    assert was_target.any()
    assert not (steered.labels == target).any()
    assert torch.equal(plain.labels[~was_target], steered.labels[~was_target])


def test_the_match_order_reaches_the_labels(tokenizer):
    """In dictionary order a shorter key listed first wins, and the words after it are labelled as they stand."""
    model = make_copy_model(len(tokenizer)).eval()
    anchors = parse_anchors({"Hogwarts": "Mystic Academy", "Hogwarts Express": "school train"})
    text = "Harry took the Hogwarts Express, and the Hogwarts Express left at eleven. " * 4
    blocks = make_blocks(text, tokenizer, 24)
    by_order = {order: compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False,
                                      match_order=order) for order in ("longest", "dictionary")}
    found = by_order["longest"].stats["occurrences_per_key"]
    assert list(found) == ["Hogwarts Express"] and by_order["dictionary"].stats["occurrences_per_key"] == {
        "Hogwarts": found["Hogwarts Express"]}
    express = tokenizer(" Express", add_special_tokens=False).input_ids[0]
    assert (by_order["dictionary"].labels == express).sum() >= found["Hogwarts Express"] - 1  # the copy model's
    assert (by_order["longest"].labels == express).sum() == 0


def test_inside_anchors_translate_labels_each_inner_position_with_the_translation_s_token(tokenizer):
    """With a copy model, the label after the i-th token of a key is the translation's i-th token, position
    by position; where the key has more tokens than its translation, its further inner positions keep no
    label; `mask` (the paper's rule) labels none of them."""
    from whoharry.anchors.translate import translate_block
    from whoharry.method.objectives import IGNORE
    from whoharry.stages.labels import block_rng

    model = make_copy_model(len(tokenizer)).eval()
    # "Hogwarts Express" is 4 tokens, "Sam" 2; "Ron Weasley" fewer than "Mystic Academy school train"
    anchors = parse_anchors({"Hogwarts Express": "Sam", "Ron Weasley": "Mystic Academy school train"})
    text = "Harry took the Hogwarts Express home, and played Quidditch at noon with Ron Weasley. " * 4
    blocks = make_blocks(text, tokenizer, 32)
    masked = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False)
    labels = compute_labels(model, model, tokenizer, blocks, anchors, alpha=5.0, seed=0, progress=False,
                            inside_anchors="translate")
    inner = unlabelled = 0
    for b, ids in enumerate(blocks.ids):
        translation = translate_block(text, ids, blocks.offsets[b], anchors, anchors.pattern(), tokenizer,
                                      block_rng(0, b), blocks.bos_token_id, "translate")
        for occ in translation.occurrences:
            value_last = translation.mapping[occ.last]
            value_ids = translation.ids[occ.value_first : value_last + 1]
            assert tokenizer.decode(value_ids).strip() == occ.value
            for t in range(occ.first, min(occ.last, len(ids) - 1)):
                assert masked.labels[b, t + 1] == IGNORE, (b, t)
                i = t - occ.first
                if i < len(value_ids) - 1:
                    if occ.repeat and i == 0:  # a translation's first token, seen before: suppressed
                        assert labels.labels[b, t + 1] not in (IGNORE, value_ids[0]), (b, t)
                    else:
                        assert labels.labels[b, t + 1] == value_ids[i], (b, t)  # the copy model repeats it
                    inner += 1
                else:
                    assert labels.labels[b, t + 1] == IGNORE, (b, t)
                    unlabelled += 1
    assert inner > 0 and unlabelled > 0
    assert labels.stats["positions_labelled"] == masked.stats["positions_labelled"] + inner
