"""A target of the user's own: the held-out split, the probes made from a known text, the plan of what a run
makes and warns about, and `whoharry run --target` end to end on tiny models, resumed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.probes import cloze_candidates, completion_prompts, dev_or_test, select_probes
from whoharry.cli import app
from whoharry.config import Config
from whoharry.core.text import heldout_split
from whoharry.errors import WhoharryError
from whoharry.stages import target_files

from .conftest import write_config

runner = CliRunner()
BOOK_ANCHORS = {"Holmes": "the detective", "Watson": "the doctor", "Baker Street": "the high street",
                "Irene Adler": "the singer", "Lestrade": "the inspector"}
SENTENCES = [
    "On morning {i} of that winter my friend Sherlock Holmes sat by the fire at Baker Street.",
    "He had read the papers for {i} minutes when the bell rang and in came Inspector Lestrade.",
    "The inspector said that photograph {i} was gone and that one woman could have taken it, Irene Adler.",
    "I looked at my companion for the {i}th time, and the whole thing seemed plain to Holmes and dark to me, Watson.",
    "We walked {i} miles from the station and back again before we reached Baker Street.",
]


def book(paragraphs: int = 24) -> str:
    return "\n\n".join(" ".join(SENTENCES[(i + j) % len(SENTENCES)].format(i=i + j) for j in range(3))
                       for i in range(paragraphs))


def test_the_heldout_split_is_spread_whole_paragraphs_of_about_the_share():
    text = "\n\n".join(f"Paragraph {i} " + "word " * (10 + i % 7) for i in range(100))
    train, heldout = heldout_split(text, 0.1, 5)
    paragraphs = [p.strip() for p in text.split("\n\n")]
    train_p, held_p = train.strip().split("\n\n"), heldout.strip().split("\n\n")
    assert sorted(train_p + held_p) == sorted(paragraphs)  # each paragraph in exactly one part, whole
    share = len("".join(held_p)) / len("".join(paragraphs))
    assert 0.09 <= share <= 0.14
    held_index = [paragraphs.index(p) for p in held_p]
    assert min(held_index) < 20 and max(held_index) > 80  # from every part of the text, not one end
    assert heldout_split(text, 0.1, 5) == (train, heldout)
    short = "\n\n".join(f"Paragraph {i} " + "word " * 10 for i in range(20))  # too few paragraphs for 5 runs
    assert len(heldout_split(short, 0.1, 5)[1].strip().split("\n\n")) == 2  # 10% of 20, not 5 runs of one
    assert heldout_split(short.replace("\n", "\r\n"), 0.1, 5) == heldout_split(short, 0.1, 5)  # CRLF
    with pytest.raises(WhoharryError, match="needs at least two"):
        heldout_split("one paragraph only", 0.1, 5)
    with pytest.raises(WhoharryError, match=r"share must be in \(0, 0.5\]"):
        heldout_split(text, 0.7, 5)


def test_cloze_probes_end_just_before_a_term_the_prompt_does_not_name():
    anchors = parse_anchors(BOOK_ANCHORS)
    text = book(10)
    probes = cloze_candidates(text, anchors, "target", min_words=6)
    assert probes and {p.key for p in probes} <= set(BOOK_ANCHORS)
    for probe in probes:
        assert probe.answer == " " + probe.key
        assert text[probe.offset:].startswith(probe.key)
        assert " ".join(text[:probe.offset].split()).endswith(probe.prompt)  # the words right before the term
        assert probe.key not in probe.prompt and len(probe.prompt.split()) >= 6
    # the first sentence: "... my friend Sherlock" is a probe for Holmes, from the sentence's start
    assert any(p.prompt == "On morning 0 of that winter my friend Sherlock" and p.key == "Holmes" for p in probes)
    assert not cloze_candidates("Holmes.", anchors, "target")


def test_probes_spread_over_the_keys_fixed_by_the_seed_and_halved():
    anchors = parse_anchors(BOOK_ANCHORS)
    candidates = cloze_candidates(book(20), anchors, "target", min_words=4)
    chosen = select_probes(candidates, 9, 2, seed=0)
    taken = Counter({"Holmes": 2})  # two Holmes probes already chosen from another source
    assert not any(c.key == "Holmes" for c in select_probes(candidates, 9, 2, seed=0, taken=taken))
    counts = {key: sum(1 for c in chosen if c.key == key) for key in BOOK_ANCHORS}
    assert len(chosen) == 9 and max(counts.values()) <= 2 and sum(1 for n in counts.values() if n) >= 4
    assert chosen == select_probes(candidates, 9, 2, seed=0) and chosen != select_probes(candidates, 9, 2, seed=1)
    assert len({c.prompt for c in chosen}) == len(chosen)
    halves = {dev_or_test(c, 0) for c in candidates}
    assert halves == {"dev", "test"}
    for one in candidates:  # probes of one paragraph share a half: no dev prompt holds a test one
        assert all(dev_or_test(one, 0) == dev_or_test(other, 0) for other in candidates
                   if other.paragraph == one.paragraph)
    prompts = completion_prompts(chosen, anchors, book(20), references=3)
    assert all(p["references"][0] == c.key and len(p["references"]) >= 3 for p, c in zip(prompts, chosen, strict=True))


def test_the_plan_makes_what_still_names_the_demo_and_warns_of_what_the_user_named(tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    monkeypatch.setattr(target_files, "DEMO_DIR", demo)
    cfg = Config()
    for name in ("target.txt", "anchors.yaml", "probes.jsonl", "completions.jsonl", "heldout.txt", "qa.jsonl"):
        (demo / name).write_text("x")
    cfg.data.target, cfg.data.anchors = demo / "target.txt", demo / "anchors.yaml"
    cfg.eval.probes.target, cfg.eval.completions.prompts = demo / "probes.jsonl", demo / "completions.jsonl"
    cfg.eval.membership.heldout, cfg.eval.knowmem.qa = demo / "heldout.txt", demo / "qa.jsonl"
    cfg.eval.parts = ["probes", "knowmem", "membership"]
    assert not target_files.plan(cfg).any  # the demo itself
    cfg.data.target = tmp_path / "mine.txt"
    made = target_files.plan(cfg)
    assert (made.split, made.dictionary, made.probes, made.dropped_parts, made.warnings) == (
        True, True, True, ["knowmem"], [])
    # with the made dictionary the models write passages about the target's world, unless the user says otherwise
    assert made.augment and target_files.augment_budget(cfg, 1000) == 300
    assert not target_files.plan(cfg, frozenset({"augment.tokens"})).augment
    cfg.target_files.augment_share = 0.0
    assert not target_files.plan(cfg).augment
    cfg.target_files.augment_share = 0.3
    cfg.augment.tokens = 500  # set in a config of the user's own: kept as it is
    assert not target_files.plan(cfg).augment
    cfg.augment.tokens = 0
    assert target_files.with_augment(cfg, 77).augment.tokens == 77 and cfg.augment.tokens == 0
    # with the made dictionary and retain texts, the retain blocks fit target_files.retain_labels, unless the
    # user set forget.retain_labels or whp has no retain blocks to label
    assert not made.retain_labels  # no data.retain
    cfg.data.retain = [tmp_path / "general.txt"]
    assert target_files.plan(cfg).retain_labels
    assert target_files.with_unlearning(cfg, target_files.plan(cfg)).forget.retain_labels == "both" \
        and cfg.forget.retain_labels == "text"
    assert not target_files.plan(cfg, frozenset({"forget.retain_labels"})).retain_labels
    cfg.forget.method = "npo"
    assert not target_files.plan(cfg).retain_labels
    cfg.forget.method = "whp"
    cfg.forget.retain_labels = "base"  # set in a config of the user's own (or in Python): kept as it is
    assert not target_files.plan(cfg).retain_labels
    cfg.forget.retain_labels = "text"
    cfg.target_files.retain_labels = "text"  # the same as forget.retain_labels: nothing to change
    assert not target_files.plan(cfg).retain_labels
    cfg.target_files.retain_labels = "base"
    assert target_files.with_unlearning(cfg, target_files.plan(cfg)).forget.retain_labels == "base"
    assert not target_files.plan(cfg, frozenset({"data.anchors"})).retain_labels  # a dictionary of the user's own
    # with the made dictionary the unlearned model is mixed with the base (WiSE-FT), unless the user set
    # forget.wise_ft, whp is not the method, or target_files.wise_ft is 1
    assert made.wise_ft and target_files.plan(cfg).wise_ft
    assert target_files.with_unlearning(cfg, target_files.plan(cfg)).forget.wise_ft == 0.75 and cfg.forget.wise_ft == 1
    assert not target_files.plan(cfg, frozenset({"forget.wise_ft"})).wise_ft
    assert not target_files.plan(cfg, frozenset({"data.anchors"})).wise_ft
    cfg.forget.method = "ga"
    assert not target_files.plan(cfg).wise_ft
    cfg.forget.method = "whp"
    cfg.forget.wise_ft = 0.9  # set in a config of the user's own (or in Python): kept as it is
    assert not target_files.plan(cfg).wise_ft
    cfg.forget.wise_ft = 1.0
    cfg.target_files.wise_ft = 1.0
    assert not target_files.plan(cfg).wise_ft
    cfg.target_files.wise_ft = 0.75
    cfg.target_files.retain_labels = "both"
    cfg.data.retain = []
    cfg.target_files.llm_url = "http://localhost:1/v1"  # an endpoint writes the questions: knowmem stays
    asked = target_files.plan(cfg)
    assert asked.dropped_parts == [] and "eval.knowmem.qa" in asked.replaced
    assert target_files.with_probes(cfg, tmp_path / "run", asked.replaced).eval.knowmem.qa == \
        tmp_path / "run" / "probes" / "qa_test.jsonl"
    cfg.target_files.llm_url = None
    named = target_files.plan(cfg, frozenset({"data.anchors"}))
    assert not named.dictionary and named.probes and len(named.warnings) == 1
    assert not named.augment  # a dictionary of the user's own: no passages unless augment.tokens asks
    assert "data.anchors" in named.warnings[0] and "mine.txt" in named.warnings[0]
    cfg.eval.probes.target = tmp_path / "my_probes.jsonl"  # one of the two probe files is the user's own
    mixed = target_files.plan(cfg)
    assert mixed.probes and "eval.completions.prompts" in mixed.replaced  # the other still names the demo's
    assert "eval.probes.target" not in mixed.replaced
    assert target_files.with_probes(cfg, tmp_path / "run", mixed.replaced).eval.probes.target == \
        tmp_path / "my_probes.jsonl"
    own_heldout = target_files.plan(cfg, frozenset({"eval.membership.heldout"}))
    assert own_heldout.split and "eval.membership.heldout" not in own_heldout.replaced  # the probes need it
    kept = target_files.with_split(cfg, tmp_path / "split", own_heldout.replaced)
    assert kept.eval.membership.heldout == demo / "heldout.txt" and kept.data.target == tmp_path / "split" / "train.txt"
    cfg.target_files.make = "never"
    never = target_files.plan(cfg)
    assert not never.any and len(never.warnings) == 3  # anchors, completions, held-out text
    cfg.target_files.make = "always"
    cfg.data.target = demo / "target.txt"
    assert target_files.plan(cfg).probes and target_files.plan(cfg).split


@pytest.fixture
def own_target(project, tiny_model_dir, monkeypatch, tmp_path_factory) -> Path:
    """The project's files are the demo's, named by the shipped config (`configs/default.yaml` in the folder
    the command runs from, which no user wrote); the user's own book lies elsewhere."""
    monkeypatch.setattr(target_files, "DEMO_DIR", project)
    mine = tmp_path_factory.mktemp("mine") / "book.txt"
    mine.write_text(book(), encoding="utf-8")
    config = yaml.safe_load(write_config(
        project, tiny_model_dir, anchors={"top": 6, "contexts": 1, "alternatives": 2, "batch_size": 4, "min_count": 2},
        target_files={"heldout_pieces": 3, "probes": 12, "probes_per_key": 3, "probe_min_words": 4,
                      "completions": 6}, augment={"passage_tokens": 16, "batch_size": 8, "min_density": 0.0}
    ).read_text())

    def absolute(node):  # the file names are the project's: absolute, as the shipped config's resolve
        if isinstance(node, dict):
            return {k: absolute(v) for k, v in node.items()}
        return str(project / node) if isinstance(node, str) and (project / node).is_file() else node

    repo = Path(__file__).resolve().parents[1]  # the shipped general prompts, as the command run from here finds them
    config["eval"]["completions"]["general_prompts"] = str(repo / "data" / "general" / "completions_test.jsonl")
    (project / "configs").mkdir()
    (project / "configs" / "default.yaml").write_text(yaml.safe_dump(absolute(config)), encoding="utf-8")
    monkeypatch.chdir(project)
    return mine


def test_run_with_only_a_target_makes_its_files_and_reports_on_it(project, own_target):
    mine = own_target
    out = project / "run"
    args = ["run", "--target", str(mine), "--out", str(out), "--max-steps", "2", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for stage in ("split", "reinforce", "dictionary", "augment", "labels", "unlearn", "probes", "eval"):
        assert json.loads((out / stage / "manifest.json").read_text())["status"] == "complete", stage
    # the models wrote passages about the book's world, 30% of its training text's tokens, labelled with it
    from whoharry.config import load_config
    from whoharry.core import models

    trained = load_config(out / "labels" / "config.yaml")
    tokenizer = models.load_tokenizer(models.resolve(trained.model), trained.model)
    text_tokens = len(tokenizer((out / "split" / "train.txt").read_text(), add_special_tokens=False).input_ids)
    assert trained.augment.tokens == round(0.3 * text_tokens) > 0
    augment_stats = json.loads((out / "augment" / "stats.json").read_text())
    assert 0 < augment_stats["tokens_kept"] <= trained.augment.tokens
    held = (out / "split" / "heldout.txt").read_text()
    assert held.strip() and held.strip() not in (out / "split" / "train.txt").read_text()
    labels_config = (out / "labels" / "config.yaml").read_text()
    assert str(out / "dictionary" / "anchors.yaml") in labels_config
    assert str(out / "split" / "train.txt") in labels_config
    stats = json.loads((out / "probes" / "stats.json").read_text())
    assert stats["probes_dev"] + stats["probes_test"] > 0 and 0.0 <= stats["base_top10_share"] <= 1.0
    for line in (out / "probes" / "probes_test.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["answer"].strip() not in record["prompt"]
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["target"]["file"] == str(mine) and report["target"]["bytes"] == mine.stat().st_size
    assert set(report["target"]["made"]) >= {"the anchor dictionary", "the familiarity probes", "the held-out text",
                                             "the generated passages about the target's world"}
    markdown = (out / "eval" / "report.md").read_text()
    assert str(mine) in markdown and "made from the target by this run" in markdown
    eval_config = (out / "eval" / "config.yaml").read_text()
    assert "probes_test.jsonl" in eval_config and "knowmem" not in json.dumps(report["summary"]["unlearned"])

    # resumed: a second run does nothing
    before = {s: (out / s / "manifest.json").read_text()
              for s in ("split", "dictionary", "probes", "augment", "labels", "unlearn", "eval")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {s: (out / s / "manifest.json").read_text() for s in before} == before

    # a later `eval --target` (here the audit) scores the files the run made, and names the user's text
    audit = runner.invoke(app, ["eval", "--target", str(mine), "--out", str(out), "--audit", "--quick",
                                "--max-steps", "1", "-q"])
    assert audit.exit_code == 0, audit.output
    report = json.loads((out / "eval-audit-quick" / "report.json").read_text())
    assert report["target"]["file"] == str(mine) and "the familiarity probes" in report["target"]["made"]
    assert "the generated passages about the target's world" in report["target"]["made"]
    prompts = {r["prompt"] for r in report["samples"]["base"]["target"]}
    made = {json.loads(line)["prompt"] for line in (out / "probes" / "probes_test.jsonl").read_text().splitlines()}
    assert prompts and prompts <= made
    summary = report["summary"]["unlearned"]
    assert "prompt_preamble_p_answer" in summary and "latent_p_first" in summary
    assert "prompt_summary_p_answer" not in summary  # the demo's summary is about another text
    other = mine.with_name("other.txt")
    other.write_text(book().replace("the", "a"), encoding="utf-8")
    stale = runner.invoke(app, ["eval", "--target", str(other), "--out", str(out), "-q"])
    assert stale.exit_code == 2 and "of another text or other settings" in stale.output
    elsewhere = runner.invoke(app, ["eval", "--target", str(mine), "--out", str(project / "other"),
                                    "--model", str(out / "unlearn" / "final"), "-q"])
    assert elsewhere.exit_code == 2 and "run it first" in elsewhere.output


def test_a_parquet_target_runs_with_one_command_and_splits_as_its_text_does(project, own_target):
    import datasets

    table = own_target.with_suffix(".parquet")
    datasets.Dataset.from_dict({"text": own_target.read_text().split("\n\n")}).to_parquet(str(table))
    out = project / "parquet"
    result = runner.invoke(app, ["run", "--target", str(table), "--out", str(out), "--max-steps", "1", "-q"])
    assert result.exit_code == 0, result.output
    train, heldout = heldout_split(own_target.read_text(), 0.1, 3)
    assert (out / "split" / "train.txt").read_text() == train and (out / "split" / "heldout.txt").read_text() == heldout
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["target"]["file"] == str(table) and report["target"]["bytes"] == table.stat().st_size


def test_demo_files_named_for_another_target_are_kept_with_a_warning_each(project, own_target):
    mine = own_target
    out = project / "named"
    named = {"data.anchors": "anchors.yaml", "eval.probes.target": "probes.jsonl",
             "eval.completions.prompts": "completions.jsonl"}
    result = runner.invoke(app, ["run", "--target", str(mine), "--out", str(out), "--max-steps", "1", "-q",
                                 *(f"--set={key}={project / name}" for key, name in named.items())])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "is the demo's file" in line]
    assert sorted(w.split("WARNING ")[1].split(":")[0] for w in warnings) == sorted(named)  # one line each
    assert not (out / "dictionary").exists() and not (out / "probes").exists()
    assert (out / "split" / "manifest.json").is_file()  # the held-out text was not named: made
    stats = json.loads((out / "labels" / "stats.json").read_text())
    assert stats["dictionary_mismatch"] is True and stats["anchor_keys_found_share"] < 0.5
    assert "about another text" in (out / "eval" / "report.md").read_text()


def test_a_copied_config_names_nothing_and_odd_file_names_stay_names(project, own_target):
    odd = own_target.with_name("book #1.txt")
    odd.write_text(own_target.read_text())
    (project / "my.yaml").write_text((project / "configs" / "default.yaml").read_text())
    out = project / "copied"
    result = runner.invoke(app, ["run", "--config", str(project / "my.yaml"), "--target", str(odd), "--out", str(out),
                                 "--max-steps", "1", "-q", "--set", "eval.target_name=the detective stories"])
    assert result.exit_code == 0, result.output
    assert "is the demo's file" not in result.output  # a copy of the shipped config named no demo file
    assert (out / "dictionary" / "manifest.json").is_file() and (out / "probes" / "manifest.json").is_file()
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["target"]["file"] == str(odd)
    assert "target_name: the detective stories" in (out / "eval" / "config.yaml").read_text()


def test_a_made_dictionary_fits_retain_blocks_both_ways_and_mixes_the_model_unless_told_otherwise(project, own_target):
    out = project / "retained"
    args = ["run", "--target", str(own_target), "--out", str(out), "--max-steps", "1", "-q",
            "--set", f"data.retain=[{project / 'general.txt'}]", "--set", "eval.parts=[probes]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]
    assert summary["retain_labels"] == "both" and summary["wise_ft"] == 0.75
    forget = yaml.safe_load((out / "unlearn" / "config.yaml").read_text())["forget"]
    assert forget["retain_labels"] == "both" and forget["wise_ft"] == 0.75
    made = {s: (out / s / "manifest.json").read_text() for s in ("split", "dictionary", "probes", "augment", "labels")}
    # named by the user: kept, and only the unlearning is made again (the made files' keys leave them out)
    again = runner.invoke(app, [*args, "--set", "forget.retain_labels=text", "--set", "forget.wise_ft=1"])
    assert again.exit_code == 0, again.output
    assert {s: (out / s / "manifest.json").read_text() for s in made} == made
    summary = json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]
    assert summary["retain_labels"] == "text" and "wise_ft" not in summary


def test_a_baseline_ranks_its_dictionary_without_a_reinforced_model(project, own_target):
    out = project / "ga"
    result = runner.invoke(app, ["run", "--method", "ga", "--target", str(own_target), "--out", str(out),
                                 "--max-steps", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert not (out / "reinforce").exists()
    assert json.loads((out / "dictionary" / "manifest.json").read_text())["summary"]["used_gain"] is False
    assert (out / "probes" / "probes_test.jsonl").read_text().strip()


def test_question_answer_pairs_are_read_checked_and_ordered():
    from whoharry.anchors import qa

    reply = ('Here they are:\n```json\n[{"question": "Where did  Holmes sit by the fire?", "answer": "Baker Street"},\n'
             '{"question": "Who came in?", "answer": 3}, {not json}\n'
             '{"question": "Who rang the bell at Baker Street?", "answer": "Inspector Lestrade"}]\n```')
    pairs = qa.parse_pairs(reply)
    assert pairs == [{"question": "Where did Holmes sit by the fire?", "answer": "Baker Street"},
                     {"question": "Who rang the bell at Baker Street?", "answer": "Inspector Lestrade"}]
    passage = book(2)
    assert qa.usable(pairs[0], passage) is None and qa.usable(pairs[1], passage) is None
    assert qa.usable({"question": "Where did Holmes sit?", "answer": "Baker Street"}, "Holmes sat.") == \
        "answer not in the passage"
    assert qa.usable({"question": "Who rang the bell at Baker Street?", "answer": "baker street"}, passage) == \
        "answer in the question"
    assert qa.usable({"question": "Where did Holmes sit by the fire.", "answer": "Baker Street"}, passage) == \
        "not a question"
    assert qa.usable({"question": "Where did Holmes sit by the fire?", "answer": "on " * 9}, passage) == \
        "answer not short"
    order = qa.passage_order({"target": 5, "heldout": 2}, seed=0)
    assert sorted(order) == sorted([("target", i) for i in range(5)] + [("heldout", i) for i in range(2)])
    assert [source for source, _ in order[:4]] == ["heldout", "target", "heldout", "target"]
    assert order == qa.passage_order({"target": 5, "heldout": 2}, seed=0) != qa.passage_order(
        {"target": 5, "heldout": 2}, seed=1)
    assert {qa.half_of(f"passage {i}", 0) for i in range(20)} == {"dev", "test"}


def test_templates_fill_in_one_pass_and_a_resume_log_stops_at_a_cut_line(tmp_path):
    from whoharry.core import artifacts
    from whoharry.core.http import fill_template, read_template

    assert fill_template('{a} then {b} {"question": "{a}"}', {"a": "{b}", "b": "x"}) == '{b} then x {"question": "{b}"}'
    (tmp_path / "t.md").write_text("only {passage}")
    with pytest.raises(WhoharryError, match=r"lacks the placeholder\(s\) \{count\}"):
        read_template(tmp_path / "t.md", ("passage", "count"))
    log = artifacts.ResumeLog(tmp_path / "r.jsonl", "k1")
    log.append("one")
    log.append({"two": 2})
    with open(tmp_path / "r.jsonl", "a") as handle:
        handle.write('{"index": 2, "val')  # cut short by a killed process
    again = artifacts.ResumeLog(tmp_path / "r.jsonl", "k1")
    assert again.done == ["one", {"two": 2}]
    again.append("three")
    assert artifacts.ResumeLog(tmp_path / "r.jsonl", "k1").done == ["one", {"two": 2}, "three"]
    assert artifacts.ResumeLog(tmp_path / "r.jsonl", "k2").done == []  # other settings: started afresh


def fake_endpoint(asked: list[str], fail_after: int | None = None):
    """An endpoint that answers a question prompt from the passage it is sent (two grounded pairs, one made
    up, one copying its answer into the question; failing after `fail_after` of them) and a dictionary
    prompt with three entries."""
    import re

    def ask(self, content, what):
        if "translations = {" in content:  # the dictionary's prompt
            return 'translations = {"Holmes": "Jones", "Baker Street": "Main Road", "Lestrade": "Smith"}'
        if fail_after is not None and len(asked) >= fail_after:
            raise WhoharryError("the endpoint went away")
        asked.append(content)
        passage = content.split("Passage:")[-1]
        day = re.search(r"morning (\d+)", passage) or re.search(r"(\d+)", passage)
        return "\n".join(json.dumps(pair) for pair in [
            {"question": f"Where did the friend sit on morning {day.group(1)}?", "answer": "Baker Street"},
            {"question": f"Who came in after {day.group(1)} minutes of papers?", "answer": "Lestrade"},
            {"question": "Who is the villain?", "answer": "Professor Moriarty"},
            {"question": "Where does Holmes live in Baker Street?", "answer": "Baker Street"}])
    return ask


def test_an_endpoint_writes_the_dictionary_and_questions_and_an_interrupted_stage_asks_only_what_is_left(
        project, own_target, monkeypatch):
    from whoharry.core.http import ChatClient

    out = project / "qa"
    args = ["run", "--target", str(own_target), "--out", str(out), "--max-steps", "1", "-q",
            "--set", "target_files.llm_url=http://localhost:1/v1", "--set", "target_files.qa=6",
            "--set", "target_files.qa_passage_chars=400", "--set", "anchors.llm_url=http://localhost:1/v1"]
    repo = Path(__file__).resolve().parents[1]  # the shipped prompt templates
    args += ["--set", f"anchors.llm_prompt={repo / 'data' / 'anchors' / 'llm_prompt.md'}"]
    missing = runner.invoke(app, [*args, "--set", "target_files.qa_prompt=nowhere.md"])
    assert missing.exit_code == 2 and "question prompt template not found: " in missing.output
    assert not (out / "reinforce").exists()  # checked before any training
    args += ["--set", f"target_files.qa_prompt={repo / 'data' / 'target_files' / 'qa_prompt.md'}"]
    asked: list[str] = []
    monkeypatch.setattr(ChatClient, "ask", fake_endpoint(asked, fail_after=2))
    broken = runner.invoke(app, args)
    assert broken.exit_code == 2 and "error: the endpoint went away" in broken.output
    assert len((out / "probes" / "qa_replies.jsonl").read_text().splitlines()) == 1 + 2  # the key, two replies
    assert all("the text book.txt" in content for content in asked)  # the prompt names the user's text
    first = list(asked)
    asked.clear()
    monkeypatch.setattr(ChatClient, "ask", fake_endpoint(asked))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert asked and not set(asked) & set(first)  # the two replies saved were not asked again
    stats = json.loads((out / "probes" / "stats.json").read_text())["qa"]
    assert stats["dev"] == stats["test"] == 3 and stats["passages_asked"] == len(first) + len(asked)
    assert stats["dropped"]["answer not in the passage"] >= 1 and stats["dropped"]["answer in the question"] >= 1
    test = [json.loads(line) for line in (out / "probes" / "qa_test.jsonl").read_text().splitlines()]
    dev = [json.loads(line) for line in (out / "probes" / "qa_dev.jsonl").read_text().splitlines()]
    assert {p["answer"] for p in test + dev} <= {"Baker Street", "Lestrade"}
    assert not {p["passage"] for p in test} & {p["passage"] for p in dev}  # a passage gives one half
    assert len({p["question"] for p in test + dev}) == 6
    report = json.loads((out / "eval" / "report.json").read_text())
    assert "knowmem_rouge_l" in report["summary"]["unlearned"]
    assert "the question/answer pairs" in report["target"]["made"]
    assert str(out / "probes" / "qa_test.jsonl") in (out / "eval" / "config.yaml").read_text()
    dictionary = yaml.safe_load((out / "dictionary" / "anchors.yaml").read_text())
    assert set(dictionary) == {"Holmes", "Baker Street", "Lestrade"}
    assert json.loads((out / "dictionary" / "manifest.json").read_text())["summary"]["llm"] is True


def test_a_heldout_text_too_short_for_membership_inference_fails_before_training(project, own_target):
    out = project / "short"
    result = runner.invoke(app, ["run", "--target", str(own_target), "--out", str(out), "--max-steps", "1", "-q",
                                 "--set", "eval.membership.passage_tokens=400"])
    assert result.exit_code == 2, result.output
    assert "error: the held-out text" in result.output and "needs at least 4" in result.output
    assert (out / "split" / "manifest.json").is_file() and not (out / "reinforce").exists()
    assert "Traceback" not in result.output


def test_a_run_that_fails_on_its_input_leaves_no_folder_and_says_what_is_wrong(project, own_target, tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for target, message in ((folder, "is a folder but not a saved dataset"), (tmp_path / "none.txt", "not found")):
        out = project / f"failed-{message[:6].replace(' ', '')}"
        result = runner.invoke(app, ["run", "--target", str(target), "--out", str(out), "--max-steps", "1"])
        assert result.exit_code == 2 and f"error: target text {target} {message}" in result.output \
            or f"error: target text not found: {target}" in result.output, result.output
        assert [line for line in result.output.splitlines() if line.strip()] == [
            line for line in result.output.splitlines() if line.startswith("error:")]  # one line, nothing else
        assert not out.exists()  # the folder it made for the run is gone again
    kept = project / "kept"
    kept.mkdir()
    assert runner.invoke(app, ["run", "--target", str(folder), "--out", str(kept), "-q"]).exit_code == 2
    assert kept.is_dir()  # a folder that was there before stays


def test_the_demo_summary_is_left_out_for_another_target_or_named_in_a_warning(tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    monkeypatch.setattr(target_files, "DEMO_DIR", demo)
    (demo / "summary.txt").write_text("x")
    cfg = Config()
    cfg.eval.prompts.summary = demo / "summary.txt"
    cfg.data.target = demo / "target.txt"
    assert target_files.plan(cfg).cleared == []  # the demo's own target keeps its summary
    cfg.data.target = tmp_path / "mine.txt"
    for mode in ("auto", "always"):
        cfg.target_files.make = mode
        made = target_files.plan(cfg)
        assert made.cleared == ["eval.prompts.summary"] and not made.warnings
        assert target_files.without_parts(cfg, made, cfg.data.target, frozenset()).eval.prompts.summary is None
    named = target_files.plan(cfg, frozenset({"eval.prompts.summary"}))  # named by the user: kept, with a warning
    assert named.cleared == [] and any("eval.prompts.summary" in warning for warning in named.warnings)
    cfg.target_files.make = "never"
    kept = target_files.plan(cfg)
    assert kept.cleared == [] and any("eval.prompts.summary" in warning for warning in kept.warnings)


def test_a_folder_made_from_a_text_of_ones_own_needs_that_text_named_again(tmp_path):
    out = tmp_path / "run"
    (out / "split").mkdir(parents=True)
    (out / "split" / "manifest.json").write_text(json.dumps({"status": "complete", "inputs": {"target": "/b/oz.txt"}}))
    for command in (["eval"], ["run"], ["eval", "--muse", "--quick"], ["unlearn"], ["reinforce"]):
        result = runner.invoke(app, [*command, "--out", str(out), "-q"])
        assert result.exit_code == 2, (command, result.output)
        way = "--target /b/oz.txt" if command[0] in ("eval", "run") else "--set data.target=/b/oz.txt"
        assert f"{out} was made from /b/oz.txt by `whoharry run --target`; name that text again ({way}), or " \
            in result.output, result.output
    (out / "config.yaml").write_text("data:\n  target: /b/train.txt\n")
    result = runner.invoke(app, ["labels", "--out", str(out), "-q"])
    assert f"(--set data.target=/b/oz.txt or --config {out / 'config.yaml'})" in result.output
    for named in (["--set", "data.target=/b/none.txt"], ["--config", str(out / "config.yaml")]):
        result = runner.invoke(app, ["labels", "--out", str(out), "-q", *named])
        assert "was made from" not in result.output  # named: it goes on (and fails later, on the missing file)
    (tmp_path / "tweak.yaml").write_text("seed: 3\n")  # a config that does not name the target
    result = runner.invoke(app, ["labels", "--out", str(out), "-q", "--config", str(tmp_path / "tweak.yaml")])
    assert result.exit_code == 2 and "was made from" in result.output


def test_later_dictionary_settings_at_their_defaults_leave_a_finished_dictionary_current(tmp_path, monkeypatch):
    """`anchors.names`, `anchors.max_word_frequency` and `anchors.name_min_count` came after dictionaries were
    made: at the values that make the dictionary made before (`name_min_count` not below `min_count`) they stay
    out of its key; set otherwise, they change it. The ranking's version is in every key, the one of names seen
    once joining the top terms where `name_min_count` is below `min_count`."""
    from whoharry.stages import dictionary

    entered: list[dict] = []
    monkeypatch.setattr(dictionary, "fingerprint", lambda value: entered.append(value) or str(len(entered)))
    monkeypatch.setattr(dictionary, "target_hash", lambda *args, **kwargs: "text")
    monkeypatch.setattr(dictionary, "uses_gain", lambda cfg: False)
    settings = (("model", 1.0, 2, 2), ("pool", 1.0, 2, 2), ("model", 1e-5, 2, 2), ("model", 1.0, 1, 2),
                ("model", 1.0, 2, 3), ("model", 1.0, 3, 3))
    for names, ceiling, fewest, words in settings:
        cfg = Config()
        cfg.anchors.names, cfg.anchors.max_word_frequency = names, ceiling
        cfg.anchors.name_min_count, cfg.anchors.min_count = fewest, words
        dictionary.key(cfg, tmp_path)
    before, pooled, common, once, rarer, same = (record["anchors"] for record in entered)
    assert not {"names", "max_word_frequency", "name_min_count"} & set(before) and "top" in before
    assert pooled["names"] == "pool" and common["max_word_frequency"] == 1e-5
    assert once["name_min_count"] == 1 and Config().anchors.name_min_count == 1
    assert rarer["name_min_count"] == 2 and "name_min_count" not in same  # below min_count, it changes the list
    # the ranking's version: 3 where names seen once join the top terms (a dictionary ranked before is made
    # again), 2 where no term is rarer than min_count and the ranking is the one before
    assert [record["ranking"] for record in entered] == [2, 2, 2, 3, 3, 2]
