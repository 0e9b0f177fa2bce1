"""The field's own scorers: ROUGE-L through rouge-score with MUSE's settings, the AUC through SciPy's
Mann-Whitney U, bootstrap intervals through scipy.stats.bootstrap, the run lock through filelock, and the
`eval --muse` preset."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import load_config
from whoharry.config.evaluation import MUSE, MUSE_PARTS
from whoharry.core import runlock
from whoharry.errors import WhoharryError
from whoharry.evaluation import completions, knowmem
from whoharry.evaluation.intervals import Parts, interval, percentiles, ratio_interval
from whoharry.evaluation.membership import auc, score_tokens
from whoharry.evaluation.verbatim import rouge_l

from .conftest import write_config

runner = CliRunner()


def test_rouge_l_is_rouge_scores_rougeL_f_measure_without_stemming():
    assert rouge_l("The cat sat on the mat.", "the cat sat on the mat") == 1.0
    # LCS 3 of 3 predicted and 4 true words: F1 = 2 * 1 * 0.75 / 1.75 (recall alone would be 0.75)
    assert rouge_l("a c d", "a b c d") == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l("a b c d e f g h", "a b") == pytest.approx(0.4)  # precision 0.25, recall 1
    assert rouge_l("", "a b") == 0.0 and rouge_l("a b", "c d") == 0.0
    # rougeL, not rougeLsum: the lines swapped share an LCS of 2 of 4 words, though each line matches one
    assert rouge_l("c d\na b", "a b\nc d") == pytest.approx(0.5)
    # use_stemmer=False, as MUSE scores: "running" is not "runs"
    assert rouge_l("running", "runs") == 0.0


def test_rouge_l_tokenizes_as_rouge_score_does_on_ascii_text_and_keeps_other_letters():
    # rouge-score splits at every character outside [a-z0-9]; a `\w+` split would keep "snake_case" one word
    # and score 2 * (1/2) * (1/3) / (5/6) = 0.4
    assert rouge_l("snake_case word", "snake case word") == 1.0
    # letters rouge-score would drop are kept: "café" and "cafè" are not both "caf"
    assert rouge_l("café", "cafè") == 0.0 and rouge_l("café au lait", "café au lait") == 1.0
    # a text without spaces is read a character a word, not as nothing
    assert rouge_l("猫が座った", "猫が座った") == 1.0
    assert 0.0 < rouge_l("猫が座った", "犬が座った") < 1.0


def test_auc_is_mann_whitney_u_over_pairs_with_ties_counting_half():
    members, nonmembers = [1.0, 2.0, 2.0, 3.0], [2.0, 0.0, 3.0]
    # by hand: 1 beats 0; each 2 beats 0 and ties 2; 3 beats 2 and 0 and ties 3: 6.5 of 12 pairs
    assert auc(members, nonmembers) == pytest.approx(6.5 / 12)
    rows = auc(np.array([members, [3.0, 3.0, 3.0, 3.0]]), np.array([nonmembers, [0.0, 1.0, 2.0]]))
    assert rows == pytest.approx([6.5 / 12, 1.0])
    assert auc([-np.inf, 0.0], [1.0]) == 0.0
    assert np.isnan(auc([1.0, np.nan], [0.0])) and np.isnan(auc([], [0.0]))


def test_the_paired_ratio_interval_holds_the_estimate_is_seeded_and_narrower_than_unpaired():
    rng = np.random.default_rng(7)
    base = rng.uniform(0.1, 0.9, 80)
    unlearned = base * 0.6 + rng.normal(0, 0.01, 80)  # moves with the base, probe by probe
    numer, denom = Parts(unlearned, np.ones(80)), Parts(base, np.ones(80))
    estimate = unlearned.mean() / base.mean()
    lo, hi = ratio_interval(numer, denom)
    assert lo < estimate < hi
    assert ratio_interval(numer, denom, seed=0) == (lo, hi)
    assert ratio_interval(numer, denom, seed=1) != (lo, hi)
    # the same resamples drawn for each model independently: the probes' spread no longer cancels
    first, second = (np.random.default_rng(s).integers(0, 80, size=(1000, 80)) for s in (0, 1))
    unpaired = percentiles(numer.value(first) / denom.value(second))
    assert (hi - lo) < (unpaired[1] - unpaired[0]) / 3


def test_a_nan_sample_gives_a_nan_interval_never_a_number():
    assert all(np.isnan(v) for v in interval(Parts(np.array([np.nan, 1.0, 2.0]), np.ones(3))))
    assert all(np.isnan(v) for v in ratio_interval(Parts(np.ones(3), np.ones(3)),
                                                    Parts(np.full(3, np.nan), np.ones(3))))
    assert interval(Parts(np.array([0.3]), np.ones(1))) == (0.3, 0.3)  # one sample: every resample is it


def test_min_k_averages_the_configured_share_of_tokens():
    lp = -torch.arange(1.0, 11.0)
    assert score_tokens(lp, lp, "text", k_fraction=0.4)["mink"] == pytest.approx(-8.5)  # -7 to -10
    assert score_tokens(lp, lp, "text")["mink"] == pytest.approx(-9.5)


def test_knowmem_shots_are_the_files_first_questions_placed_before_each_other_and_not_scored(tmp_path, monkeypatch,
                                                                                             tokenizer):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"Question number {i}?", "answer": f"answer {i}"} for i in range(5)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    shown, asked = knowmem.read_with_shots(path, 2, limit=2)
    assert shown == rows[:2] and asked == rows[2:4]
    seen = []

    def fake_complete(model, tok, prompts, *args, **kwargs):
        seen.extend(prompts)
        return [completions.Completion(p, [], [], " answer 2") for p in prompts]

    monkeypatch.setattr(completions, "complete", fake_complete)
    records = knowmem.knowmem_records(None, tokenizer, asked, 8, "fp32", 4, examples=shown)
    assert seen[0] == ("Question: Question number 0?\nAnswer: answer 0\n\n"
                       "Question: Question number 1?\nAnswer: answer 1\n\nQuestion: Question number 2?\nAnswer:")
    assert [r["rouge_l"] for r in records] == [1.0, 0.5]
    assert knowmem.prompt_for("Q?") == f"{knowmem.FORMAT}Question: Q?\nAnswer:"  # no shots: the general ones
    with pytest.raises(WhoharryError, match="shots=5 leaves none"):
        knowmem.read_with_shots(path, 5)


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_the_lock_refuses_a_second_holder_and_replaces_a_stale_one(tmp_path, caplog):
    out = tmp_path / "run"
    script = ("import sys, time; from pathlib import Path; from whoharry.core import runlock\n"
              "with runlock.hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = rf"in use by another whoharry process \(pid {holder.pid} on"
        with pytest.raises(WhoharryError, match=refused), runlock.hold(out):
            pass
    finally:
        holder.kill()  # SIGKILL: its OS lock goes with it, its holder file stays behind
        holder.wait()
    assert json.loads((out / runlock.LOCK).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING), runlock.hold(out) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and not (out / runlock.LOCK).exists()
    # a holder file naming a process that is gone, or left half-written, is stale too
    for stale in (json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}), '{"pid": '):
        (out / runlock.LOCK).write_text(stale)
        with runlock.hold(out):
            pass
        assert not (out / runlock.LOCK).exists()


def test_a_holder_file_of_a_live_process_is_honoured_and_a_new_folder_left_clean(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / runlock.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(WhoharryError, match=f"pid {os.getpid()}"), runlock.hold(out):
        pass
    fresh = tmp_path / "fresh"
    with runlock.hold(fresh):
        pass
    assert not fresh.exists()  # nothing written: no folder, no lock files


def test_muse_overrides_resolve_to_muses_settings():
    cfg = load_config(None, [f"{key}={json.dumps(value)}" for key, value in MUSE.items()])
    assert cfg.eval.parts == list(MUSE_PARTS)
    assert (cfg.eval.verbatim.prompt_tokens, cfg.eval.verbatim.continuation_tokens) == (1024, 128)
    assert (cfg.eval.knowmem.tokens, cfg.eval.knowmem.shots) == (32, 10)
    assert (cfg.eval.membership.k_fraction, cfg.eval.membership.passage_tokens) == (0.4, 2048)


def test_eval_muse_writes_its_own_folder_with_muses_settings(project, tiny_model_dir, monkeypatch):
    from whoharry.cli import stages as cli_stages
    from whoharry.stages import evaluate

    seen = {}

    def fake_run(cfg, out, model_path, *, stage_dir, **kwargs):
        seen.update(cfg=cfg, stage_dir=stage_dir)
        return stage_dir

    monkeypatch.setattr(evaluate, "run", fake_run)
    monkeypatch.setattr(evaluate, "load_report", lambda path: {})
    monkeypatch.setattr(cli_stages, "summary_text", lambda *args: "done")
    config = write_config(project, tiny_model_dir, eval={"knowmem": {"qa": "qa.jsonl", "tokens": 4}})
    out = project / "run"
    args = ["eval", "--config", str(config), "--out", str(out), "--model", str(tiny_model_dir), "-q"]
    result = runner.invoke(app, [*args, "--muse", "--set", "eval.knowmem.shots=1"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"].eval
    assert seen["stage_dir"] == out / "eval-muse"
    assert cfg.parts == list(MUSE_PARTS) and cfg.verbatim.continuation_tokens == 128
    assert cfg.membership.k_fraction == 0.4 and cfg.knowmem.tokens == 32
    assert cfg.knowmem.shots == 1  # the user's --set over the preset
    quick = runner.invoke(app, [*args, "--muse", "--quick"])
    assert quick.exit_code == 0, quick.output
    assert seen["stage_dir"] == out / "eval-muse-quick"
    assert seen["cfg"].eval.verbatim.excerpts == 8 and seen["cfg"].eval.verbatim.prompt_tokens == 1024
    for clash in (["--audit"], ["--parts", "probes"], ["--full"]):
        refused = runner.invoke(app, [*args, "--muse", *clash])
        lines = [line for line in refused.output.splitlines() if line.strip()]
        assert refused.exit_code == 2 and len(lines) == 1, refused.output
        assert lines[0].startswith("error: --muse chooses its own parts"), refused.output


def test_the_muse_folder_counts_as_part_of_a_run():
    from whoharry.stages import pipeline

    assert "eval-muse" in pipeline.RUN_ENTRIES and "eval-muse-quick-ensemble" in pipeline.RUN_ENTRIES
