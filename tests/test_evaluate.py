"""Probe scoring and perplexity on tiny models."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from whoharry.anchors.dictionary import parse_anchors
from whoharry.config import CompletionsEval, Config, EvalConfig, LLMJudgeEval, ProbesEval, SamplingEval
from whoharry.errors import WhoharryError
from whoharry.evaluation.completions import (
    Completion,
    complete,
    end_token_ids,
    generate,
    judge_nll,
    named_references,
    pooled_perplexity,
    read_completion_prompts,
)
from whoharry.evaluation.probes import read_probes, score_probes
from whoharry.evaluation.suite import Context, block_losses, part_completions, part_sampling
from whoharry.method.inference import InferenceTimeWHP
from whoharry.stages.evaluate import add_specific_familiarity

from .conftest import make_copy_model


@pytest.mark.parametrize(
    ("reader", "content", "message"),
    [
        (read_probes, '{"prompt": "a"}', r"f.jsonl:1: expected"),
        (read_probes, "not json", r"f.jsonl:1: not valid JSON"),
        (read_probes, "", "is empty"),
        (read_completion_prompts, '{"prompt": "a", "references": "Hogwarts"}', r"f.jsonl:1: expected"),
        (read_completion_prompts, '{"prompt": "a", "references": ["Hogwarts", ""]}', r"f.jsonl:1: expected"),
        (read_completion_prompts, None, "not found"),
    ],
)
def test_probe_and_completion_file_errors(tmp_path, reader, content, message):
    path = tmp_path / "f.jsonl"
    if content is not None:
        path.write_text(content + "\n")
    with pytest.raises(WhoharryError, match=message):
        reader(path)


def test_answer_probability_and_greedy_hit_on_a_copy_model(tokenizer):
    """A copy model repeats the last token forever: its greedy completion of "... the" is " the the ..."
    and the probability of the answer " the" after " the" is close to 1."""
    model = make_copy_model(len(tokenizer)).eval()
    probes = [{"prompt": "the river flows past the", "answer": " the"},
              {"prompt": "the river flows past the", "answer": " river"}]
    cfg = EvalConfig(probes=ProbesEval(max_new_tokens=3), precision="fp32")
    first, second = score_probes(model, tokenizer, probes, cfg, "t")
    assert first["hit"] and first["completion"].startswith(" the the")
    assert first["p_answer"] > 0.9 > second["p_answer"]
    assert not second["hit"]


def test_perplexity_matches_the_mean_loss(tokenizer):
    torch.manual_seed(0)
    model = make_copy_model(len(tokenizer)).eval()
    text = "the river flows past the mill and into the sea. " * 6
    value = pooled_perplexity([(r["nll"], r["tokens"]) for r in block_losses(model, tokenizer, text, 16, "fp32")])
    ids = tokenizer(text).input_ids[:16]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    first_block = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    assert value > 1 and math.isfinite(value)
    assert abs(math.log(value) - first_block) < 2.0


def test_named_references_are_new_whole_words():
    refs = ["Ron", "Hogwarts", "Sirius Black"]
    assert named_references("Harry and Ron went", " to Hogwarts with Ron", refs) == ["Hogwarts"]
    assert named_references("Harry", " met sirius black and Ronald", refs) == ["Sirius Black"]
    assert named_references("Harry", " went to the Hogwartsian hall", refs) == []


def test_completion_fluency_separates_fluent_from_random_text(tokenizer):
    """Judged by a copy model, a completion that repeats the prompt's last token is near-certain, a
    completion of unrelated tokens is not; the reference rate counts completions naming a term."""
    judge = make_copy_model(len(tokenizer)).eval()
    done = complete(judge, tokenizer, ["the river flows past the"], 4, "fp32", 2)
    assert done[0].text.startswith(" the the") and len(done[0].ids) == 4
    fluent = pooled_perplexity(judge_nll(judge, tokenizer, done, "fp32", 2))
    noisy = [Completion(done[0].prompt, done[0].prompt_ids, tokenizer(" mill sea river flows").input_ids, "")]
    assert 1.0 <= fluent < 1.5 < pooled_perplexity(judge_nll(judge, tokenizer, noisy, "fp32", 2))


def context(tmp_path, anchors=None, **settings) -> Context:
    """An evaluation context over tiny inputs: fp32, eval settings (and sections) from keyword arguments."""
    cfg = Config()
    cfg.eval = EvalConfig(precision="fp32", **settings)
    cfg.data.anchors = tmp_path / "no-anchors.yaml"
    cfg.data.target = tmp_path / "no-target.txt"
    return Context(config=cfg, folder=tmp_path / "eval", overwrite=False, control=anchors, member_text=None,
                   progress=False)


def test_completion_figures_and_the_offline_judge(tmp_path, tokenizer):
    rows = [{"prompt": "the river flows past", "references": ["past", "mill"]},
            {"prompt": "a b", "references": ["zebra"]}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    model = make_copy_model(len(tokenizer)).eval()
    ctx = context(tmp_path, parse_anchors({"b": "x"}), completions=CompletionsEval(prompts=path, tokens=3),
                  sampling=SamplingEval(samples=2))
    summary, samples = part_completions(model, model, tokenizer, ctx, "t")
    records = samples["completions"]
    # the copy model writes " past past past": "past" is already in the prompt, so nothing new is named;
    # after "a b" it writes " b b b", and "b" is in the prompt too: judge score 0 everywhere
    assert records[0]["references_named"] == [] and summary["completion_reference_rate"] == 0.0
    assert [r["judge_score"] for r in records] == [0, 0] and summary["completion_judge_score"] == 0.0
    assert summary["completion_fluency_perplexity"] < 1.5
    sampled, sampled_samples = part_sampling(model, tokenizer, ctx, "t")
    assert len(sampled_samples["completions_sampled"]) == 4
    assert 0.0 <= sampled["completion_judge_score_sampled"] <= 3.0


def _forgetting_copy_model(tokenizer, forgotten: str, generic: str):
    """A copy model that reads the token `forgotten` as `generic`: after "a b" it writes " x x x", the
    continuation of the prompt with its anchor translated (untied head, so `generic` stays itself)."""
    from transformers import LlamaForCausalLM

    copy = make_copy_model(len(tokenizer))
    config = copy.config
    config.tie_word_embeddings = False
    model = LlamaForCausalLM(config)
    model.load_state_dict(copy.state_dict(), strict=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(copy.model.embed_tokens.weight)
        old, new = (tokenizer(word, add_special_tokens=False).input_ids[-1] for word in (forgotten, generic))
        model.model.embed_tokens.weight[old] = copy.model.embed_tokens.weight[new]
    return model.eval()


def test_like_with_like_fluency_does_not_count_forgetting_as_disfluency(tmp_path, tokenizer):
    """A model that continues "a b" as the translated prompt "a x" would (" x x x") is fluent like with like,
    as fluent as the base's own completion of "a x"; the older figure, read after "a b", calls it disfluent.
    General prompts give their own figure."""
    path, general = tmp_path / "c.jsonl", tmp_path / "g.jsonl"
    path.write_text(json.dumps({"prompt": "a b", "references": ["zebra"]}) + "\n")
    general.write_text(json.dumps({"prompt": "the river flows past the", "references": []}) + "\n")
    base = make_copy_model(len(tokenizer)).eval()
    forgetting = _forgetting_copy_model(tokenizer, " b", " x")
    ctx = context(tmp_path, parse_anchors({"b": "x"}),
                  completions=CompletionsEval(prompts=path, general_prompts=general, tokens=3))
    reference, reference_samples = part_completions(base, base, tokenizer, ctx, "base", reference=True)
    forgot, samples = part_completions(forgetting, base, tokenizer, ctx, "unlearned")
    written = samples["completions"][0]["completion"]
    assert "x" in written and written == reference_samples["completions"][0]["generic_completion"]  # of "a x"
    assert written != reference_samples["completions"][0]["completion"]  # the base's of "a b"
    assert samples["completions"][0]["translated_prompt"] == "a x"
    assert reference["completion_fluency_generic_perplexity"] < 1.5
    assert forgot["completion_fluency_generic_perplexity"] < 1.5  # like with like: as fluent as the base
    assert forgot["completion_fluency_perplexity"] > 2 * reference["completion_fluency_perplexity"]  # the old one
    assert forgot["general_fluency_perplexity"] < 1.5 and "general_completions" in samples
    without = context(tmp_path, None, completions=CompletionsEval(prompts=path, general_prompts=None, tokens=3))
    summary, _ = part_completions(base, base, tokenizer, without, "base", reference=True)
    assert "completion_fluency_generic_perplexity" not in summary and "general_fluency_perplexity" not in summary


def test_specific_probes_are_those_whose_answer_rests_on_target_terms():
    def records(*pairs):
        return [{"p_answer": p, "p_control": c} for p, c in pairs]

    results = {
        "base": {"summary": {}, "samples": {"target": records((0.8, 0.1), (0.9, 0.85), (0.4, 0.0))}},
        "unlearned": {"summary": {}, "samples": {"target": records((0.2, 0.1), (0.9, 0.9), (0.0, 0.0))}},
    }
    add_specific_familiarity(results)
    assert [r["specific"] for r in results["unlearned"]["samples"]["target"]] == [True, False, True]
    assert results["base"]["summary"]["target_specific_p_answer"] == pytest.approx(0.6)
    assert results["unlearned"]["summary"]["target_specific_p_answer"] == pytest.approx(0.1)
    assert results["unlearned"]["summary"]["target_specific_probes"] == 2


def test_control_prompt_replaces_target_terms(tokenizer):
    anchors = parse_anchors({"Harry Potter": ["Jon Smith"], "Harry": ["Jon", "Tom"], "Hogwarts": "the academy"})
    translated = anchors.translate_text("Harry Potter and Harry went to Hogwarts.")
    assert translated == "Jon Smith and Jon went to the academy."
    model = make_copy_model(len(tokenizer)).eval()
    cfg = EvalConfig(probes=ProbesEval(max_new_tokens=2), precision="fp32")
    [record] = score_probes(model, tokenizer, [{"prompt": "Harry went to Harry", "answer": " Harry"}], cfg, "t",
                            control=anchors)
    # the copy model repeats the prompt's last word: " Harry" after "Harry", not after "Jon"
    assert record["p_answer"] > 0.9 and record["p_control"] < 0.1


def test_llm_judge_scores_join_the_greedy_completions(tmp_path, tokenizer, monkeypatch):
    from whoharry.evaluation import judges as llm_judge
    from whoharry.evaluation import suite

    rows = [{"prompt": "the river", "references": ["mill"]}, {"prompt": "a b", "references": ["zebra"]}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    seen = {}

    def fake_judge(cfg, target, items, progress=False):
        seen.update(url=cfg.base_url, key_env=cfg.api_key_env, target=target, items=items)
        return [{"llm_score": 3, "llm_reason": "names it"}, {"llm_score": 0, "llm_reason": ""}]

    monkeypatch.setattr(llm_judge, "judge_completions", fake_judge)
    ctx = context(tmp_path, completions=CompletionsEval(prompts=path),
                  llm_judge=LLMJudgeEval(url="http://127.0.0.1:9/v1", key_env="MY_KEY"))
    records = [{"prompt": r["prompt"], "completion": " x"} for r in rows]
    summary, samples = suite.part_llm_judge(records, ctx)
    assert summary == {"completion_llm_score": 1.5}
    assert [r["llm_score"] for r in samples["completions_llm"]] == [3, 0]
    assert seen["items"][1]["references"] == ["zebra"] and seen["key_env"] == "MY_KEY"
    assert seen["target"] == ctx.eval.target_name


def recorder():
    """A list of the values computed, and `compute(value)`: a part that records its value and returns it."""
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"figure": value}, {"records": [value]}
        return run

    return calls, compute


def test_part_cache_is_keyed_by_model_settings_and_the_fluency_judge(tmp_path):
    calls, compute = recorder()
    ctx = context(tmp_path)
    ctx.base_id = "base-a"
    assert ctx.cached("unlearned", "m1", "probes", compute(1)) == ({"figure": 1}, {"records": [1]})
    assert ctx.cached("unlearned", "m1", "probes", compute(2))[0] == {"figure": 1}  # read back
    assert ctx.cached("unlearned", "m2", "probes", compute(3))[0] == {"figure": 3}  # another model
    ctx.eval.probes.max_new_tokens += 1
    assert ctx.cached("unlearned", "m2", "probes", compute(4))[0] == {"figure": 4}  # a setting of the part
    ctx.eval.knowmem.tokens += 1
    assert ctx.cached("unlearned", "m2", "probes", compute(5))[0] == {"figure": 4}  # another part's setting
    ctx.cached("unlearned", "m2", "completions", compute(6))
    ctx.base_id = "base-b"
    assert ctx.cached("unlearned", "m2", "completions", compute(7))[0] == {"figure": 7}  # another judge
    assert ctx.cached("unlearned", "m2", "completions", compute(10), reference=True)[0] == {"figure": 10}  # role
    assert ctx.cached("unlearned", "m2", "probes", compute(8))[0] == {"figure": 4}
    ctx.overwrite = True
    assert ctx.cached("unlearned", "m2", "probes", compute(9))[0] == {"figure": 9}
    assert calls == [1, 3, 4, 6, 7, 10, 9]


def test_the_base_models_parts_are_shared_across_run_folders(tmp_path, monkeypatch):
    from whoharry.core import artifacts
    from whoharry.evaluation import context as evaluation_context

    calls, compute = recorder()
    def folder_context(name, shared_id="weights-a"):
        ctx = context(tmp_path)
        ctx.folder, ctx.base_id, ctx.shared_id = tmp_path / name, "base", shared_id
        return ctx

    assert folder_context("run-1").cached("base", "base", "probes", compute(1))[0] == {"figure": 1}
    second = folder_context("run-2")
    assert second.cached("base", "base", "probes", compute(2))[0] == {"figure": 1}  # read from the shared cache
    assert (tmp_path / "run-2" / "parts" / "base" / "probes.json").is_file()  # and kept in the run folder
    assert list(second.shared_reads) == ["probes"]  # what the manifest records
    for where in ("a", "b"):  # the same probe file in another folder (a clone of the project elsewhere)
        (tmp_path / where).mkdir()
        (tmp_path / where / "probes.jsonl").write_text('{"prompt": "x", "answer": " y"}\n')
        moved = folder_context(f"run-{where}")
        moved.eval.probes.target = tmp_path / where / "probes.jsonl"
        assert moved.cached("base", "base", "probes", compute(0))[0] == {"figure": 0}
    calls.remove(0)
    assert second.cached("unlearned", "base", "probes", compute(3))[0] == {"figure": 3}  # only the base's
    assert folder_context("run-3", "weights-b").cached("base", "base", "probes", compute(4))[0] == {"figure": 4}
    assert folder_context("run-4", None).cached("base", "base", "probes", compute(5))[0] == {"figure": 5}
    changed = folder_context("run-5")
    changed.eval.probes.max_new_tokens += 1
    assert changed.cached("base", "base", "probes", compute(6))[0] == {"figure": 6}  # another setting
    monkeypatch.setattr(artifacts, "code_hash", lambda: "other code")
    assert folder_context("run-6").cached("base", "base", "probes", compute(7))[0] == {"figure": 7}
    assert calls == [1, 3, 4, 5, 6, 7]
    assert len(list(evaluation_context.shared_parts_dir().iterdir())) == 5  # weights a, b, 2 settings, code


def test_a_shared_cache_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, caplog):
    from whoharry.evaluation import context as evaluation_context

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(evaluation_context, "shared_parts_dir", lambda: tmp_path / "a-file" / "eval")
    ctx = context(tmp_path)
    ctx.base_id, ctx.shared_id = "base", "weights"
    with caplog.at_level("WARNING"):
        assert ctx.cached("base", "base", "probes", lambda: ({"figure": 1}, {}))[0] == {"figure": 1}
    assert "not kept in" in caplog.text
    assert (tmp_path / "eval" / "parts" / "base" / "probes.json").is_file()


def test_concurrent_writers_of_one_shared_file_never_collide(tmp_path):
    import threading

    from whoharry.core import artifacts

    path, errors = tmp_path / "shared" / "part.json", []

    def write(value):
        try:
            for _ in range(30):
                artifacts.write_json_unique(path, {"key": "k", "value": value, "pad": "x" * 5000})
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and json.loads(path.read_text())["value"] in range(4)
    assert [p.name for p in path.parent.iterdir()] == ["part.json"]  # no temporary file left


THE = " the"  # the copy model repeats a prompt's last token: after "... the" it writes " the" forever


@pytest.mark.parametrize(
    "declare",
    [
        lambda model, end: setattr(model.generation_config, "eos_token_id", [0, end]),  # a list (Gemma-style)
        lambda model, end: setattr(model.generation_config, "eos_token_id", end),  # an int other than the tokenizer's
        lambda model, end: setattr(model.config, "eos_token_id", end),  # only the model config names it
    ],
)
def test_completions_end_at_every_end_token_the_model_declares(tokenizer, declare):
    """A model whose end token is not the tokenizer's EOS: the completion stops there, and the padding that
    generation put after it is neither kept nor judged."""
    model = make_copy_model(len(tokenizer)).eval()
    end = tokenizer(THE).input_ids[0]
    declare(model, end)
    done = complete(model, tokenizer, ["the river flows past the", "a b"], 8, "fp32", 2)
    assert done[0].ids == [] and done[0].text == ""
    assert done[1].ids and end not in done[1].ids and tokenizer.pad_token_id not in done[1].ids
    assert judge_nll(model, tokenizer, done[:1], "fp32", 2) == [(0, 0)]


def test_completions_end_at_padding(tokenizer):
    """Padding (here not the EOS token) never counts as generated text."""
    model = make_copy_model(len(tokenizer)).eval()
    prompt = tokenizer("the river").input_ids + [tokenizer.pad_token_id]
    assert generate(model, tokenizer, [prompt], 4, "fp32") == [[]]


def test_the_two_model_pair_ends_at_its_base_models_end_tokens(tokenizer):
    """`InferenceTimeWHP` has no config of its own and never stops early: its base model's end tokens cut."""
    base, reinforced = make_copy_model(len(tokenizer)).eval(), make_copy_model(len(tokenizer)).eval()
    end = tokenizer(THE).input_ids[0]
    base.generation_config.eos_token_id = [0, end]
    pair = InferenceTimeWHP(base, reinforced, 1.0)
    prompts = [tokenizer("the river flows past the").input_ids, tokenizer("a b").input_ids]
    cut = generate(pair, tokenizer, prompts, 5, "fp32")
    assert cut[0] == [] and len(cut[1]) == 5
    assert end_token_ids(pair, tokenizer) == {0, tokenizer.pad_token_id, end}


def test_end_tokens_with_padding_equal_to_eos(tokenizer):
    """SmolLM2 pads with its EOS token: one end token, and the declared ones beside it."""
    model = make_copy_model(len(tokenizer)).eval()
    model.generation_config.eos_token_id = [0, 7]
    model.config.eos_token_id = 9
    same = SimpleNamespace(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    assert end_token_ids(model, same) == {0, 7, 9}
    assert end_token_ids(model, tokenizer) == {0, 1, 7, 9}


@pytest.mark.parametrize(
    ("scored", "expected"),
    [
        ([(1000.0, 1)], math.inf),  # a collapsed model: over 709 nats a token overflows exp
        ([(1e9, 100), (2.0, 1)], math.inf),
        ([(float("inf"), 3)], math.inf),
        ([(6.0, 3)], math.exp(2.0)),
        ([(-0.0, 2)], 1.0),
    ],
)
def test_pooled_perplexity_never_overflows(scored, expected):
    assert pooled_perplexity(scored) == pytest.approx(expected)


@pytest.mark.parametrize("scored", [[(float("nan"), 3)], [(2.0, 1), (float("nan"), 1)], [], [(0.0, 0)]])
def test_pooled_perplexity_is_nan_only_for_nan_losses_or_no_tokens(scored):
    assert math.isnan(pooled_perplexity(scored))
