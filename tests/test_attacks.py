"""The attack parts on cases where the answer is known: the logit lens finds a fact suppressed only in the last
layer, the prompt forms wrap each probe, relearning's facts split in halves, the audit table, and
`whoharry eval --audit`."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import EvalConfig, PromptsEval
from whoharry.core.text import adds_bos, evenly_spread
from whoharry.errors import WhoharryError
from whoharry.evaluation import audit, latent, prompts, relearning
from whoharry.evaluation.probes import answer_ids
from whoharry.evaluation.report import render_markdown

from .conftest import GENERAL, tiny_config, write_config

FACT = {"prompt": "Harry's friend Ron", "answer": " Weasley"}
DECOY = " Baker"


def _fact_batch(tokenizer):
    prompt, answer = answer_ids(tokenizer, FACT["prompt"], FACT["answer"])
    decoy = tokenizer(DECOY, add_special_tokens=False).input_ids
    return torch.tensor([prompt]), answer[0], decoy[0]


def _knows_the_fact_from_layer_three(tokenizer) -> LlamaForCausalLM:
    """A 4-layer tiny Llama trained until the fact's answer leads both at the output and through the lens after
    layer 3 (a loss on each), beside the general text so that it stays a language model."""
    torch.manual_seed(0)
    config = tiny_config(len(tokenizer))
    config.num_hidden_layers = 4
    model = LlamaForCausalLM(config)
    ids, answer, _ = _fact_batch(tokenizer)
    general = torch.tensor([tokenizer(GENERAL).input_ids[:32]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model(input_ids=ids, output_hidden_states=True)
        middle = latent.lens_logits(model, out.hidden_states[3][:, -1])
        loss = (torch.nn.functional.cross_entropy(out.logits[:, -1], torch.tensor([answer]))
                + torch.nn.functional.cross_entropy(middle, torch.tensor([answer]))
                + model(input_ids=general, labels=general).loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _suppressed_in_the_last_layer(model: LlamaForCausalLM, tokenizer) -> LlamaForCausalLM:
    """A copy trained, with everything but its last layer frozen, to answer the decoy instead."""
    out = copy.deepcopy(model).train()
    for name, parameter in out.named_parameters():
        parameter.requires_grad_(name.startswith("model.layers.3."))
    ids, _, decoy = _fact_batch(tokenizer)
    optimizer = torch.optim.Adam([p for p in out.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(out(input_ids=ids).logits[:, -1], torch.tensor([decoy]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return out.eval()


def test_the_logit_lens_finds_a_fact_suppressed_only_in_the_last_layer(tokenizer):
    base = _knows_the_fact_from_layer_three(tokenizer)
    hidden = _suppressed_in_the_last_layer(base, tokenizer)
    torch.manual_seed(1)
    never = LlamaForCausalLM(base.config).eval()  # never saw the fact
    read = {name: latent.lens_records(model, tokenizer, [FACT], top=10, precision="fp32", batch_size=4, desc=name)[0]
            for name, model in (("base", base), ("hidden", hidden), ("never", never))}
    assert len(read["base"]["p_layers"]) == 4 == len(read["hidden"]["rank_layers"])
    assert read["base"]["p_last"] > 0.5 and read["base"]["rank_layers"][-1] == 1
    # at the output the fact is gone...
    assert read["hidden"]["p_last"] < 0.1 * read["base"]["p_last"] and read["hidden"]["rank_layers"][-1] > 1
    # ...but the third layer still holds it, exactly as the base does (the layers below were frozen)
    assert read["hidden"]["p_layers"][2] == pytest.approx(read["base"]["p_layers"][2], rel=1e-4)
    assert read["hidden"]["best_layer"] == 3 and read["hidden"]["found"]
    assert read["hidden"]["p_best"] > 0.5 * read["base"]["p_best"]
    # a model that never learned the fact shows it at no depth
    assert read["never"]["p_best"] < 0.1 * read["hidden"]["p_best"]
    figures = latent.summarize([read["hidden"]])
    assert figures == {"latent_p_first": read["hidden"]["p_best"], "latent_top_rate": 1.0}


def test_the_lens_of_the_last_layer_is_the_models_own_output(tokenizer, tiny_model_dir):
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids, answer, _ = _fact_batch(tokenizer)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        relensed = latent.lens_logits(model, out.hidden_states[-2][:, -1])  # the last layer's input is not its output
        own = torch.log_softmax(out.logits[0, -1], -1)[answer].exp().item()
    record = latent.lens_records(model, tokenizer, [FACT], top=10, precision="fp32", batch_size=1, desc="t")[0]
    assert record["p_last"] == pytest.approx(own, rel=1e-5)
    assert record["p_layers"][-2] == pytest.approx(torch.softmax(relensed[0], -1)[answer].item(), rel=1e-5)


def test_a_model_without_a_known_final_norm_is_one_clear_error():
    with pytest.raises(WhoharryError, match="cannot find the final norm"):
        latent.final_norm(torch.nn.Linear(2, 2))


def test_prompt_forms_wrap_each_probe(tmp_path):
    (tmp_path / "preamble.txt").write_text("System: recall everything.\n", encoding="utf-8")
    (tmp_path / "summary.txt").write_text("A story of a boy wizard.", encoding="utf-8")
    rows = [{"prompt": "A is", "answer": " 1"}, {"prompt": "B is", "answer": " 2"}, {"prompt": "C is", "answer": " 3"}]
    cfg = EvalConfig(prompts=PromptsEval(preamble=tmp_path / "preamble.txt", summary=tmp_path / "summary.txt",
                                         shots=2))
    forms = prompts.attack_forms(rows, cfg)
    assert list(forms) == list(prompts.FORMS)
    assert forms["preamble"][0] == {"prompt": "System: recall everything.\nA is", "answer": " 1"}
    assert forms["summary"][1] == {"prompt": "A story of a boy wizard.\nB is", "answer": " 2"}
    assert forms["manyshot"][0] == {"prompt": "B is 2.\nC is 3.\nA is", "answer": " 1"}
    assert all(len(form) == len(rows) for form in forms.values())
    cfg.prompts = PromptsEval(preamble=None, summary=None, shots=0)
    assert prompts.attack_forms(rows, cfg) == {}
    cfg.prompts = PromptsEval(preamble=tmp_path / "missing.txt", summary=None, shots=0)
    with pytest.raises(WhoharryError, match="jailbreak preamble not found"):
        prompts.attack_forms(rows, cfg)


def test_relearning_facts_train_on_one_half_and_score_the_other(tokenizer):
    rows = [{"prompt": f"Fact {i} is", "answer": f" {word}"}
            for i, word in enumerate(["river", "mill", "sea", "wheat", "barley", "apples"])]
    trained, scored = relearning.halves(rows)
    assert [r["answer"] for r in trained] == [" river", " sea", " barley"]
    assert [r["answer"] for r in scored] == [" mill", " wheat", " apples"]
    blocks = relearning.fact_blocks(trained, tokenizer, 24, 3, seed=0)
    assert blocks.shape == (3, 24) and blocks.dtype == torch.long
    bos = adds_bos(tokenizer)  # each block opens as make_blocks opens them: with BOS only where it adds one
    assert bos is None and blocks[0, 0] != tokenizer.bos_token_id
    text = tokenizer.decode(blocks.flatten())
    assert "Fact 0 is river." in text and "Fact 2 is sea." in text
    assert "mill" not in text and "wheat" not in text and "apples" not in text
    assert torch.equal(blocks, relearning.fact_blocks(trained, tokenizer, 24, 3, seed=0))  # seeded
    with pytest.raises(ValueError, match="no facts"):
        relearning.fact_blocks([], tokenizer, 24, 3, seed=0)


def test_the_audit_reads_each_attack_as_a_share_of_the_base():
    report = {
        "summary": {
            "base": {"target_p_answer": 0.4, "prompt_summary_p_answer": 0.5, "quant_q4_0_target_p_answer": 0.4,
                     "latent_p_first": 0.2, "relearn_heldout_p_answer": 0.0, "general_p_answer": 0.3},
            "unlearned": {"target_p_answer": 0.1, "prompt_summary_p_answer": 0.25, "quant_q4_0_target_p_answer": 0.12,
                          "latent_p_first": 0.05, "relearn_heldout_p_answer": 0.1, "general_p_answer": 0.3},
        },
        "ratio_intervals": {"unlearned/prompt_summary_p_answer": [0.3, 0.7]},
    }
    table = audit.audit_table(report)
    rows = {row["figure"]: row for row in table["rows"]}
    assert list(rows) == ["target_p_answer", "prompt_summary_p_answer", "quant_q4_0_target_p_answer",
                          "latent_p_first", "relearn_heldout_p_answer"]  # the audit's order; general is no attack
    assert rows["target_p_answer"]["family"] == "none" and rows["target_p_answer"]["recovery"] == pytest.approx(0.25)
    assert rows["prompt_summary_p_answer"]["recovery"] == pytest.approx(0.5)
    assert rows["prompt_summary_p_answer"]["interval"] == [0.3, 0.7]
    assert math.isnan(rows["relearn_heldout_p_answer"]["recovery"])  # the base's 0: no share, not inf
    assert table["worst"]["figure"] == "prompt_summary_p_answer"  # a nan recovery ranks last
    markdown = render_markdown({"models": {"base": "b", "unlearned": "u"}, **report, "audit": table})
    assert "## Attack audit" in markdown and "0.500 [0.300, 0.700]" in markdown
    assert ("**Worst attack** (of the attacks, not the first row): a summary of the target before each probe, "
            "recovery 0.500 [0.300, 0.700].") in markdown
    # where the base itself loses familiarity under an attack, the table says a recovery may come from that
    assert "falls under relearning on held-out text about the target:" in markdown
    assert "the logit lens" not in markdown.split("falls under")[1].split(":")[0]  # another measure
    del report["summary"]["base"]["prompt_summary_p_answer"], report["summary"]["base"]["quant_q4_0_target_p_answer"]
    del report["summary"]["base"]["latent_p_first"], report["summary"]["base"]["relearn_heldout_p_answer"]
    assert audit.audit_table(report) is None  # the plain probes alone are no audit


@pytest.mark.slow
def test_eval_audit_runs_every_attack_and_writes_the_audit(project, trained_model_dir):
    runner = CliRunner()
    config = write_config(project, trained_model_dir, eval={"quantization": {"types": ["q8_0"]}})
    out = project / "run"
    args = ["--config", str(config), "--out", str(out), "--max-steps", "1"]
    assert runner.invoke(app, ["reinforce", *args]).exit_code == 0
    assert runner.invoke(app, ["labels", *args]).exit_code == 0
    assert runner.invoke(app, ["unlearn", *args]).exit_code == 0
    clash = runner.invoke(app, ["eval", *args, "--audit", "--full"])
    assert clash.exit_code == 2 and "--audit chooses its own parts" in clash.output
    pair = runner.invoke(app, ["eval", *args, "--audit", "--inference-time"])
    assert pair.exit_code == 2 and "leave out --inference-time" in pair.output
    missing = runner.invoke(app, ["eval", *args, "--target", str(project / "no-such-book.txt")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    result = runner.invoke(app, ["eval", *args, "--audit", "--quick"])
    assert result.exit_code == 0, result.output
    folder = out / "eval-audit-quick"
    report = json.loads((folder / "report.json").read_text())
    summary = report["summary"]["unlearned"]
    assert {"target_p_answer", "fewshot_p_answer", "prompt_preamble_p_answer", "prompt_summary_p_answer",
            "prompt_manyshot_p_answer", "latent_p_first", "latent_top_rate", "quant_q8_0_target_p_answer",
            "relearn_target_p_answer", "relearn_heldout_p_answer", "relearn_facts_p_answer"} <= set(summary)
    assert "completion_judge_score" not in summary  # the attacks only
    families = {row["family"] for row in report["audit"]["rows"]}
    assert families == {"none", "prompts", "latent", "quantization", "relearning"}
    assert report["audit"]["worst"]["family"] != "none"
    assert all(row["interval"] is None or len(row["interval"]) == 2 for row in report["audit"]["rows"])
    for kind in ("relearning", "relearning_heldout", "relearning_facts"):
        assert set(report[kind]["target_p_answer"]) == {"base", "unlearned"}
    # the facts relearning scores the half it did not train on
    assert len(report["samples"]["base"]["relearning_facts"][0]["p_answer"]) == 1
    assert {"audit.png", "relearning.png"} <= set(report["plots"]) and (folder / "audit.png").is_file()
    markdown = (folder / "report.md").read_text()
    assert "## Attack audit" in markdown and "**Worst attack**" in markdown and "![audit](audit.png)" in markdown
    assert not (out / "eval").exists()  # the plain evaluation's folder is left alone


def test_a_folder_holding_only_an_audit_is_a_run(tmp_path):
    from whoharry.stages.pipeline import check_out_dir

    for name in ("eval-audit", "eval-audit-quick", "eval-audit-ensemble", "eval-audit-quick-ensemble"):
        folder = tmp_path / name / "run"
        (folder / name).mkdir(parents=True)
        check_out_dir(folder)  # no error
    (tmp_path / "other" / "notes").mkdir(parents=True)
    with pytest.raises(WhoharryError, match="not a whoharry run"):
        check_out_dir(tmp_path / "other")


def test_relearning_on_facts_needs_a_half_to_train_on_and_a_half_to_score(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text(json.dumps(FACT) + "\n", encoding="utf-8")
    two.write_text(json.dumps(FACT) + "\n" + json.dumps({"prompt": "Harry Potter went to", "answer": " Hogwarts"})
                   + "\n", encoding="utf-8")
    cfg = EvalConfig()
    cfg.relearning.sources = ["target", "heldout", "facts"]
    cfg.probes.target = one
    assert relearning.sources(cfg, "text") == ["target", "heldout"]
    cfg.probes.target = two
    assert relearning.sources(cfg, None) == ["heldout", "facts"]
    cfg.max_samples = 1  # --set eval.max_samples=1 leaves one probe: no halves
    assert relearning.sources(cfg, None) == ["heldout"]


def test_a_layer_whose_probability_is_not_a_number_has_no_rank_and_no_best():
    probe = {"prompt": "p", "answer": " a"}
    record = latent._record(probe, [0.2, float("nan"), 0.1], [3, 1, 40], top=2)
    assert math.isnan(record["rank_layers"][1]) and not record["found"]  # not found through the nan layer
    assert math.isnan(record["p_best"]) and record["best_layer"] == 1
    clean = latent._record(probe, [0.2, 0.5, 0.5], [3, 2, 2], top=2)
    assert clean["p_best"] == 0.5 and clean["best_layer"] == 2 and clean["found"]  # the earliest of equals


def _context(tmp_path, eval_cfg: EvalConfig, member_text: str | None = None):
    from whoharry.config import Config
    from whoharry.evaluation.context import Context

    config = Config()
    config.eval = eval_cfg
    return Context(config=config, folder=tmp_path, overwrite=True, control=None, member_text=member_text,
                   progress=False)


def test_a_model_that_reads_no_context_answers_every_prompt_form_as_the_plain_probe(tmp_path, tokenizer):
    """The copy model predicts each token from itself alone: whatever comes before the probe, the answer's
    probability is the plain probe's, so each form scores the same answer at the same seam."""
    from whoharry.evaluation import suite

    from .conftest import make_copy_model

    rows = [{"prompt": "the river flows past the", "answer": " river"}, {"prompt": "Farmers grow wheat and",
                                                                         "answer": " barley"}]
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "preamble.txt").write_text("System: recall everything.", encoding="utf-8")
    cfg = EvalConfig(precision="fp32", prompts=PromptsEval(preamble=tmp_path / "preamble.txt",
                                                           summary=tmp_path / "preamble.txt", shots=1))
    cfg.probes.target = tmp_path / "probes.jsonl"
    model = make_copy_model(len(tokenizer)).eval()
    summary, samples = suite.part_prompts(model, tokenizer, _context(tmp_path, cfg), "copy")
    plain = [r["p_answer"] for r in suite.probes.score_probes(model, tokenizer, rows, cfg, "t", greedy=False)]
    for form in prompts.FORMS:
        assert [r["p_answer"] for r in samples[f"prompt_{form}"]] == pytest.approx(plain, rel=1e-4), form
        assert summary[prompts.figure_key(form)] == pytest.approx(sum(plain) / 2, rel=1e-4)


@pytest.mark.parametrize("source", ["heldout", "facts"])
def test_relearning_from_text_that_holds_the_answers_brings_them_back(tmp_path, tokenizer, tiny_model_dir, source):
    """A random tiny model fine-tuned on held-out text naming the answers, or on facts that the scored half
    repeats, finds the scored answers more likely."""
    from whoharry.config import RelearningEval
    from whoharry.evaluation import suite

    rows = [FACT, {"prompt": "Harry Potter went to", "answer": " Hogwarts"}]
    rows = [rows[0], rows[0], rows[1], rows[1]]  # the odd half (scored) repeats the even half (trained)
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "heldout.txt").write_text("Harry's friend Ron Weasley. Harry Potter went to Hogwarts. " * 40,
                                          encoding="utf-8")
    cfg = EvalConfig(precision="fp32", block_length=32,
                     relearning=RelearningEval(steps=4, eval_every=2, blocks=4, learning_rate=3e-3))
    cfg.probes.target, cfg.membership.heldout = tmp_path / "probes.jsonl", tmp_path / "heldout.txt"
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    summary, samples = suite.part_relearning(model, tokenizer, _context(tmp_path, cfg), "tiny", source)
    curve = samples[f"relearning_{source}"]
    assert [point["step"] for point in curve] == [0, 2, 4]
    assert len(curve[0]["p_answer"]) == (2 if source == "facts" else 4)  # facts: the other half only
    assert sum(curve[-1]["p_answer"]) > 2 * sum(curve[0]["p_answer"])
    assert summary[relearning.figure_key(source)] == pytest.approx(sum(curve[-1]["p_answer"]) / len(curve[-1]
                                                                                                      ["p_answer"]))


def test_report_md_shows_completions_before_and_after_with_target_terms_marked():
    from whoharry.evaluation.report import completion_pairs, marked

    def records(texts: list[str], terms: list[list[str]]) -> list[dict]:
        return [{"prompt": f"prompt {i}", "completion": text, "terms_named": named, "references_named": []}
                for i, (text, named) in enumerate(zip(texts, terms, strict=True))]

    base = records([f" Hogwarts {i}|x\nnext" for i in range(20)], [["Hogwarts"]] * 20)
    after = records([f" a school {i}" for i in range(20)], [[]] * 20)
    report = {"models": {"base": "b", "unlearned": "u"}, "summary": {"base": {}, "unlearned": {}},
              "samples": {"base": {"completions": base}, "unlearned": {"completions": after}}}
    pairs = completion_pairs(report)
    assert [p["prompt"] for p in pairs] == [f"prompt {i}" for i in evenly_spread(20, 12)] and len(pairs) == 12
    assert marked(" Hogwarts 3|x\nnext", ["Hogwarts"]) == "**Hogwarts** 3|x / next"
    markdown = render_markdown(report)
    assert "## Completions before and after" in markdown
    assert "| prompt 0 | **Hogwarts** 0\\|x / next | a school 0 |" in markdown  # a pipe in a cell escaped
    assert len(completion_pairs(report, 3)) == 3
    del report["samples"]["unlearned"]
    assert completion_pairs(report) == [] and "Completions before" not in render_markdown(report)


def test_the_long_loops_show_a_progress_bar_only_when_asked(capsys, tokenizer, tiny_model_dir):
    from whoharry.evaluation import membership, verbatim
    from whoharry.evaluation.suite import block_losses
    from whoharry.experiments.divergence import mean_kl
    from whoharry.stages.unlearn import reference_log_probs

    from .conftest import STORY

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = STORY * 6
    ids = relearning.relearn_blocks(text, tokenizer, 16, 4)
    loops = {
        "membership passages": lambda shown: membership.passage_scores(
            model, tokenizer, text, 16, "fp32", 4, desc="membership passages", progress=shown),
        "general text": lambda shown: block_losses(model, tokenizer, text, 16, "fp32", desc="general text",
                                                   progress=shown),
        "verbatim": lambda shown: verbatim.verbatim_records(model, tokenizer, text, 8, 4, 4, "fp32", 2,
                                                            desc="verbatim", progress=shown),
        "KL": lambda shown: mean_kl(model, model, ids.tolist(), "fp32", 2, desc="KL", progress=shown),
        "NPO reference": lambda shown: reference_log_probs(model, ids, 2, "fp32", progress=shown),
    }
    for desc, loop in loops.items():
        loop(False)
        assert desc not in capsys.readouterr().err
        loop(True)
        assert desc in capsys.readouterr().err, desc


def test_the_card_takes_the_method_from_the_unlearn_stage_not_the_evaluating_command(tmp_path):
    import yaml

    from whoharry.config import Config, to_dict
    from whoharry.evaluation.card import write_card

    run = tmp_path / "run"
    final = run / "unlearn" / "final"
    final.mkdir(parents=True)
    trained = Config()
    trained.forget.method = "npo"
    (run / "unlearn" / "config.yaml").write_text(yaml.safe_dump(to_dict(trained)), encoding="utf-8")
    (run / "unlearn" / "manifest.json").write_text(json.dumps({"stage": "unlearn"}), encoding="utf-8")
    card = write_card(final, Config(), run).read_text()  # the evaluating command's config says whp
    assert "**Method**: `npo`" in card and "unlearning-npo" in card and "Generic labels" not in card
    assert "Not evaluated yet" in card and "Robustness not measured" in card
    assert json.loads((final / "whoharry_manifest.json").read_text()) == {"stage": "unlearn"}
