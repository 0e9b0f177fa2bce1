"""Behaviour pinned across refactors: labels and figures of tiny seeded models, compared with the values
the code gave before the package was laid out in folders (computed then, written here).

Labels are compared bit for bit (sha256 of the tensor); figures to a relative 1e-5, which leaves room for
another CPU's float rounding but not for a changed computation.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import LlamaForCausalLM

from whoharry.anchors.dictionary import parse_anchors
from whoharry.config import EvalConfig, ProbesEval
from whoharry.core.text import make_blocks
from whoharry.evaluation import membership, probes, verbatim
from whoharry.stages.labels import compute_labels

from .conftest import ANCHORS, STORY, tiny_config

LABELS_SHA256 = "b75b898a287b1de43e7a6e5281a607d1485bd181e57b080f6ec730f34c0d5954"
POSITIONS_CHANGED = 577
# p_answer, rank, p_control and greedy completion of each probe
PROBES = [[0.0022971237355372456, 271, 0.002454606072148179, 'oooo'],
          [0.002132489906905139, 322, 0.0021276064901319816, ' Ron Ron Ron Ron']]
MEMBERSHIP = [{'loss': -5.992176532745361,
               'zlib': -1.57688850268983,
               'mink': -6.136957168579102,
               'minkpp': -0.9323320388793945},
              {'loss': -5.949046611785889,
               'zlib': -1.5934946877615792,
               'mink': -6.148825168609619,
               'minkpp': -1.04315984249115},
              {'loss': -6.0518012046813965,
               'zlib': -1.5651209601040543,
               'mink': -6.334585189819336,
               'minkpp': -1.9445561170578003},
              {'loss': -6.068432807922363,
               'zlib': -1.7848331227022058,
               'mink': -6.30817174911499,
               'minkpp': -1.8063818216323853},
              {'loss': -5.9359211921691895,
               'zlib': -1.8171187420280612,
               'mink': -6.319072723388672,
               'minkpp': -1.832382321357727}]
VERBATIM = [0.25, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def models(tokenizer):
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config(len(tokenizer))).eval()
    torch.manual_seed(1)
    reinforced = LlamaForCausalLM(tiny_config(len(tokenizer))).eval()
    return base, reinforced


def test_labels_are_bit_identical(models, tokenizer):
    base, reinforced = models
    blocks = make_blocks(STORY * 6, tokenizer, 32)
    label_set = compute_labels(base, reinforced, tokenizer, blocks, parse_anchors(ANCHORS), alpha=5.0, seed=0,
                               batch_size=3, precision="fp32", progress=False)
    assert label_set.stats["positions_changed"] == POSITIONS_CHANGED
    assert hashlib.sha256(label_set.labels.numpy().tobytes()).hexdigest() == LABELS_SHA256


def test_probe_figures_are_unchanged(models, tokenizer):
    cfg = EvalConfig(probes=ProbesEval(max_new_tokens=4), batch_size=4, precision="fp32")
    rows = [{"prompt": "Harry Potter went to", "answer": " Hogwarts"},
            {"prompt": "Harry's friend Ron", "answer": " Weasley"}]
    records = probes.score_probes(models[0], tokenizer, rows, cfg, "p", parse_anchors(ANCHORS), progress=False)
    for record, (p_answer, rank, p_control, completion) in zip(records, PROBES, strict=True):
        assert record["p_answer"] == pytest.approx(p_answer, rel=1e-5)
        assert record["p_control"] == pytest.approx(p_control, rel=1e-5)
        assert (record["rank"], record["completion"]) == (rank, completion)


def test_membership_and_verbatim_figures_are_unchanged(models, tokenizer):
    scores = membership.passage_scores(models[0], tokenizer, STORY * 6, 16, "fp32", 5)
    assert len(scores) == len(MEMBERSHIP)
    for got, want in zip(scores, MEMBERSHIP, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    records = verbatim.verbatim_records(models[0], tokenizer, STORY * 6, 8, 4, 4, "fp32", 2)
    assert [r["rouge_l"] for r in records] == pytest.approx(VERBATIM, rel=1e-5)
