"""The evaluation suite's parts on known cases: the offline judge, answer ranks, the robustness variants,
knowledge memorisation, relearning, lm-eval, and the report's verdicts."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from whoharry.config import EvalConfig, ProbesEval, RelearningEval
from whoharry.errors import WhoharryError
from whoharry.evaluation import benchmarks, completions, knowmem, probes
from whoharry.evaluation import relearning as relearn
from whoharry.evaluation.judges import score
from whoharry.evaluation.report import verdict

from .conftest import STORY, make_copy_model

TERMS = ["Hogwarts", "Ron Weasley", "Black", "Quidditch"]


@pytest.mark.parametrize(
    ("prompt", "completion", "references", "expected"),
    [
        ("Harry went to", " the seaside with his aunt", ["Hogwarts"], 0),  # nothing of the target
        ("Harry went to", " a black cat and a blacksmith", ["Hogwarts"], 0),  # terms match case-sensitively
        ("Harry went to", " play Quidditch", ["Hogwarts"], 1),  # one target term, not the one asked for
        ("Harry went to", " play Quidditch with Ron Weasley", ["Hogwarts"], 2),  # two target terms
        ("Harry went to", " Hogwarts", ["Hogwarts"], 2),  # the asked-for term alone
        ("Harry went to", " hogwarts to play Quidditch", ["Hogwarts"], 3),  # asked-for term and more
        ("Harry and Ron Weasley went to", " see Ron Weasley", ["Hogwarts"], 0),  # already in the prompt
        ("Harry's friend", " Ron Weasley", ["Weasley"], 2),  # "Weasley" inside "Ron Weasley" counts once
    ],
)
def test_offline_judge_scores(prompt, completion, references, expected):
    assert score(prompt, completion, references, TERMS)[0] == expected


def test_answer_rank_is_one_for_the_most_likely_token(tokenizer):
    model = make_copy_model(len(tokenizer)).eval()
    rows = [{"prompt": "the river flows past the", "answer": " the"},
            {"prompt": "the river flows past the", "answer": " river"}]
    cfg = EvalConfig(probes=ProbesEval(max_new_tokens=2), precision="fp32")
    first, second = probes.score_probes(model, tokenizer, rows, cfg, "t")
    assert first["rank"] == 1 < second["rank"]
    summary = probes.summarize("target", [first, second])
    assert summary["target_reciprocal_rank"] == pytest.approx((1 + 1 / second["rank"]) / 2)
    assert summary["target_hit_rate"] == 0.5


def test_hint_and_few_shot_prompts():
    rows = [{"prompt": "A is", "answer": " 1"}, {"prompt": "B is", "answer": " 2"}, {"prompt": "C is", "answer": " 3"}]
    assert probes.with_hint(rows, "Letters and numbers.\n")[0]["prompt"] == "Letters and numbers.\nA is"
    shots = probes.few_shot(rows, 2)
    assert shots[0] == {"prompt": "B is 2.\nC is 3.\nA is", "answer": " 1"}
    assert shots[2]["prompt"] == "A is 1.\nB is 2.\nC is"
    # never more shots than other probes
    assert probes.few_shot(rows[:2], 5)[0]["prompt"] == "B is 2.\nA is"


def test_knowmem_takes_the_first_line_of_the_reply_and_scores_it(monkeypatch, tokenizer):
    replies = [" Albus Dumbledore\nQuestion: next", " the castle", ""]

    def fake_complete(model, tok, prompts, *args, **kwargs):
        assert all(p.endswith("\nAnswer:") and "Question: " in p for p in prompts)
        return [completions.Completion(p, [], [], text) for p, text in zip(prompts, replies, strict=True)]

    monkeypatch.setattr(completions, "complete", fake_complete)
    questions = [{"question": "Who is the headmaster?", "answer": "Albus Dumbledore"},
                 {"question": "Where do they live?", "answer": "Hogwarts castle"},
                 {"question": "What?", "answer": "Something"}]
    records = knowmem.knowmem_records(None, tokenizer, questions, 8, "fp32", 4)
    assert [r["reply"] for r in records] == ["Albus Dumbledore", "the castle", ""]
    assert [r["rouge_l"] for r in records] == [1.0, pytest.approx(0.5), 0.0]


def test_relearning_brings_familiarity_back(tmp_path, tokenizer, tiny_model_dir):
    """A random tiny model fine-tuned on the story for a few steps finds its answers more likely."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Harry Potter went to", "answer": " Hogwarts"},
            {"prompt": "Harry's friend Ron", "answer": " Weasley"}]
    cfg = EvalConfig(relearning=RelearningEval(steps=4, eval_every=2, blocks=4, learning_rate=3e-3), block_length=32,
                     precision="fp32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = relearn.relearn_blocks(STORY * 6, tokenizer, cfg.block_length, cfg.relearning.blocks)
    curve = relearn.relearn_curve(model, tokenizer, ids, rows, cfg, seed=0, work_dir=tmp_path, desc="t")
    assert [point["step"] for point in curve] == [0, 2, 4]
    assert sum(curve[-1]["p_answer"]) > 2 * sum(curve[0]["p_answer"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lm_eval_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(WhoharryError, match="needs lm-eval, which is not installed"):
        benchmarks.require_lm_eval()


def test_lm_eval_results_become_figures_with_intervals(monkeypatch):
    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["model"], calls["batch_size"] = pretrained, batch_size

    def simple_evaluate(model, tasks, limit, log_samples):
        calls["tasks"], calls["limit"], calls["wrapped"] = tasks, limit, model
        return {"results": {"arc_easy": {"acc,none": 0.5, "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.05},
                            "boolq": {"acc,none": 0.7, "acc_stderr,none": 0.01}}}

    package = types.ModuleType("lm_eval")
    package.simple_evaluate = simple_evaluate
    hf_module = types.ModuleType("lm_eval.models.huggingface")
    hf_module.HFLM = FakeHFLM
    monkeypatch.setitem(sys.modules, "lm_eval", package)
    monkeypatch.setitem(sys.modules, "lm_eval.models", types.ModuleType("lm_eval.models"))
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", hf_module)
    figures, spans = benchmarks.run_tasks("MODEL", "TOK", ["arc_easy", "boolq"], 10, 8)
    assert figures == {"lmeval_arc_easy_acc_norm": 0.6, "lmeval_boolq_acc": 0.7}
    assert spans["lmeval_arc_easy_acc_norm"] == pytest.approx([0.6 - 0.098, 0.6 + 0.098])
    assert calls["model"] == "MODEL" and calls["limit"] == 10 and isinstance(calls["wrapped"], FakeHFLM)

    def failing(**kwargs):
        raise ConnectionError("cannot reach huggingface.co\nmore")

    package.simple_evaluate = failing
    with pytest.raises(WhoharryError, match="could not run arc_easy: ConnectionError: cannot reach huggingface.co"):
        benchmarks.run_tasks("MODEL", "TOK", ["arc_easy"], None, 8)


def test_verdicts_follow_direction_and_interval():
    summary = {"base": {"f": 0.4, "g": 0.5, "auc": 0.8}, "unlearned": {"f": 0.1, "g": 0.49, "auc": 0.3, "leak": -0.4}}
    assert verdict("f", "lower", summary, {}, [0.1, 0.4]).startswith("lower (-75%")
    assert verdict("f", "lower", summary, {}, [0.1, 1.2]) == "no clear change"
    assert verdict("g", "keep", summary, {}, [0.9, 1.05]) == "kept"
    assert verdict("g", "keep", {"base": {"g": 0.5}, "unlearned": {"g": 0.3}}, {}, [0.5, 0.7]) == "worse (-40%)"
    assert verdict("g", "keep", {"base": {"g": 0.5}, "unlearned": {"g": 0.6}}, {}, [1.1, 1.3]) == "better (+20%)"
    assert verdict("g", "keep low", {"base": {"g": 0.5}, "unlearned": {"g": 0.6}}, {}, [1.1, 1.3]) == "worse (+20%)"
    assert verdict("g", "keep low", {"base": {"g": 0.5}, "unlearned": {"g": 0.4}}, {}, [0.7, 0.9]) == "better (-20%)"
    assert verdict("auc", "toward 0.5", summary, {"unlearned": {"auc": [0.2, 0.4]}}, None).startswith("below 0.5")
    assert verdict("leak", "toward 0", summary, {}, None).startswith("below the reference")


def test_sampled_completions_repeat_with_the_seed_and_differ_from_greedy(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = ["Harry Potter went to", "The river flows past"]

    def texts(**kwargs):
        return [c.text for c in completions.complete(model, tokenizer, prompts, 8, "fp32", 2, **kwargs)]

    first, again, other = texts(temperature=2.0, seed=0), texts(temperature=2.0, seed=0), texts(temperature=2.0, seed=1)
    assert first == again and first != other
    assert texts() == texts()  # greedy needs no seed
    assert first != texts()
