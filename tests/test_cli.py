"""The command line end to end on tiny models built in the test: artifacts, skipping, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.anchors.dictionary import load_anchors
from whoharry.cli import app
from whoharry.core.text import make_blocks

from .conftest import assert_copy_model_labels, write_config

runner = CliRunner()

STAGE_FILES = {"config.yaml", "manifest.json", "metrics.jsonl"}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json"}


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", [[], ["reinforce"], ["labels"], ["unlearn"], ["eval"], ["run"]])
def test_help_renders(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command:
        for option in ("--config", "--set", "--out", "--max-steps", "--seed"):
            assert option in result.output
    if command in (["unlearn"], ["run"]):
        assert "--method" in result.output
    if command == ["eval"]:  # a command's own options keep their help beside the shared ones
        assert "--inference-time" in result.output and "Recompute" in result.output
        assert "Cap every training" in result.output


def test_experiment_help_renders():
    result = runner.invoke(app, ["experiment", "retrain-gap", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--config", "--quick", "--corpora", "--out", "--set"):
        assert option in result.output


def test_run_end_to_end_writes_the_layout_and_exact_labels(project, copy_model_dir, tokenizer):
    # a copy model barely moved by reinforcing: every label is predictable by hand
    config = write_config(project, copy_model_dir, reinforce={"learning_rate": 1e-9})
    out = project / "run"
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--max-steps", "2", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "base vs. unlearned" in result.output and str(out.resolve()) in result.output.replace("\n", "")
    # the run's resolved config is written, not printed; its path and three completions end the output
    assert "resolved config: " + str((out / "config.yaml").resolve()) in result.output.replace("\n", "")
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name"] == str(copy_model_dir)
    assert "before and after" in result.output and result.output.count("    unlearned: ") == 2  # both prompts
    assert "eval:\n" not in result.output
    # the unlearned folder carries its card (with the evaluation just run) and the run's provenance
    final = out / "unlearn" / "final"
    card_text = (final / "README.md").read_text()
    assert card_text.startswith("---\n") and "library_name: transformers" in card_text
    assert "## What was unlearned" in card_text and "`target.txt`" in card_text and "Method**: `whp`" in card_text
    assert "| target familiarity: mean P(answer) |" in card_text and "Robustness not measured" in card_text
    assert "arXiv:2310.02238" in card_text
    assert yaml.safe_load((final / "whoharry_config.yaml").read_text()) == yaml.safe_load(
        (out / "unlearn" / "config.yaml").read_text())
    assert json.loads((final / "whoharry_manifest.json").read_text())["stage"] == "unlearn"

    model_dir_files = {f"final/{name}" for name in MODEL_FILES}
    assert files(out / "reinforce") >= STAGE_FILES | model_dir_files
    assert files(out / "unlearn") >= STAGE_FILES | model_dir_files
    label_files = files(out / "labels")
    label_tensors = {"labels.safetensors", "stats.json"}
    assert {f for f in label_files if not f.startswith("dataset/")} == STAGE_FILES | label_tensors
    assert {"dataset/state.json", "dataset/dataset_info.json"} <= label_files
    eval_files = files(out / "eval")
    assert eval_files >= STAGE_FILES | {"report.json", "report.md", "familiarity_vs_utility.png", "probe_shift.png"}
    assert {f"parts/{m}/{p}.json" for m in ("base", "unlearned") for p in ("probes", "completions")} <= eval_files
    assert not (out / "reinforce" / "checkpoints").exists()
    for stage in ("reinforce", "labels", "unlearn", "eval"):
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["stage"] == stage
        assert {"fingerprint", "config_hash", "seed", "inputs", "outputs", "seconds", "versions"} <= set(manifest)
    assert json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]["steps"] == 2

    tensors = load_file(str(out / "labels" / "labels.safetensors"))
    stats = json.loads((out / "labels" / "stats.json").read_text())
    assert str(tensors["labels"].dtype) == "torch.int32"
    assert tensors["labels"].shape == tensors["input_ids"].shape == (stats["blocks"], 32)
    text = (project / "target.txt").read_text()
    blocks = make_blocks(text, tokenizer, 32)
    assert tensors["input_ids"].tolist() == blocks.ids
    differ = assert_copy_model_labels(text, blocks, load_anchors(project / "anchors.yaml"), tensors["labels"],
                                      tokenizer, seed=0)
    assert differ > 0
    assert stats["anchor_occurrences"] > 0 and stats["occurrences_per_key"]["Harry"] > 0
    last = json.loads((out / "labels" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["blocks"], last["positions_labelled"], last["positions_changed"]) == (
        stats["blocks"], stats["positions_labelled"], stats["positions_changed"])

    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["summary"]) == {"base", "unlearned"}
    assert {"target_p_answer", "target_hit_rate", "general_p_answer", "general_perplexity"} <= set(
        report["summary"]["base"]
    )
    assert len(report["samples"]["unlearned"]["target"]) == 2
    assert {"completion_reference_rate", "completion_fluency_perplexity", "membership_auc_loss",
            "membership_auc_minkpp"} <= set(report["summary"]["unlearned"])
    assert 0.0 <= report["summary"]["unlearned"]["membership_auc_zlib"] <= 1.0
    assert len(report["samples"]["unlearned"]["verbatim"]) == 4
    assert 0.0 <= report["summary"]["unlearned"]["verbmem_rouge_l"] <= 1.0
    for key, (lo, hi) in report["intervals"]["unlearned"].items():
        assert lo <= report["summary"]["unlearned"][key] + 1e-5 and lo <= hi, key
    assert "unlearned/general_perplexity" in report["ratio_intervals"]
    assert " [" in (out / "eval" / "report.md").read_text()

    # a second run with the same settings does nothing
    before = {s: (out / s / "manifest.json").read_text() for s in ("reinforce", "labels", "unlearn", "eval")}
    again = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--max-steps", "2", "-q"])
    assert again.exit_code == 0, again.output
    assert {s: (out / s / "manifest.json").read_text() for s in before} == before

    # a changed label setting redoes labels and what follows, not reinforce
    changed = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--max-steps", "2", "-q",
                                  "--set", "labels.alpha=2"])
    assert changed.exit_code == 0, changed.output
    after = {s: (out / s / "manifest.json").read_text() for s in before}
    assert after["reinforce"] == before["reinforce"]
    assert all(after[s] != before[s] for s in ("labels", "unlearn", "eval"))

    # the same model evaluated in another folder reads the base model's parts from the shared cache
    shutil.copytree(out / "unlearn", project / "elsewhere" / "unlearn")
    elsewhere = runner.invoke(app, ["eval", "--config", str(config), "--out", str(project / "elsewhere"), "-q",
                                    "--set", "labels.alpha=2"])
    assert elsewhere.exit_code == 0, elsewhere.output
    read = json.loads((project / "elsewhere" / "eval" / "manifest.json").read_text())["inputs"]["base_parts_read"]
    assert {"probes", "completions", "verbatim", "membership", "utility"} <= set(read)
    assert json.loads((project / "elsewhere" / "eval" / "report.json").read_text())["summary"]["base"] == \
        json.loads((out / "eval" / "report.json").read_text())["summary"]["base"]


def test_unlearning_raises_the_forget_loss_and_bounds_the_retain_loss(project, trained_model_dir):
    """On a tiny model that learned the story and the general text: after unlearning, the loss on
    the original tokens where labels changed rises, and the loss on general text stays bounded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whoharry.method.objectives import causal_lm_loss

    config = write_config(project, trained_model_dir, unlearn={"epochs": 4, "learning_rate": 1e-3})
    out = project / "run"
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out / "labels" / "labels.safetensors"))
    ids, labels = tensors["input_ids"].long(), tensors["labels"].long()
    changed = labels.clone()
    changed[(labels == ids) | (labels == -100)] = -100  # positions where the generic label differs
    forget = ids.clone()
    forget[changed == -100] = -100  # ... scored against the original tokens there
    tok = AutoTokenizer.from_pretrained(trained_model_dir)
    general = torch.tensor(make_blocks((project / "general.txt").read_text(), tok, 32).ids)

    def losses(path):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            return (causal_lm_loss(model(input_ids=ids).logits, forget).item(),
                    causal_lm_loss(model(input_ids=general).logits, general).item())

    base_forget, base_retain = losses(trained_model_dir)
    new_forget, new_retain = losses(out / "unlearn" / "final")
    print(f"forget loss {base_forget:.3f} -> {new_forget:.3f}, retain loss {base_retain:.3f} -> {new_retain:.3f}")
    assert new_forget > base_forget + 0.5
    assert new_retain < base_retain * 1.5


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("mutate", "args", "message"),
    [
        (lambda p: (p / "target.txt").unlink(), [], "target text not found"),
        (lambda p: (p / "target.txt").write_bytes(b"\xff\xfe bad"), [], "not UTF-8"),
        (lambda p: (p / "target.txt").write_text("   \n"), [], "is empty"),
        (lambda p: (p / "target.txt").write_text("Harry."), [], "fewer than one block"),
        (lambda p: (p / "target.txt").write_bytes(b"Harry\x00\x01\x02 Potter"), [], "looks binary"),
        (lambda p: (p / "anchors.yaml").write_text("Harry: [Jon\n"), [], "YAML syntax error at line"),
        (lambda p: (p / "anchors.yaml").write_text("Harry: Jon\nHarry: Sam\n"), [], "duplicate anchor key 'Harry'"),
        (lambda p: (p / "anchors.yaml").write_text("Harry: ''\n"), [], "empty translation"),
        (lambda p: (p / "anchors.yaml").write_text("'': Jon\n"), [], "key is empty"),
        (lambda p: (p / "anchors.yaml").unlink(), [], "not found"),
        (lambda p: (p / "config.yaml").write_text("seed: [\n"), [], "YAML syntax error at line"),
        (lambda p: None, ["--set", "unlearn.epochs=two"], "'unlearn.epochs' must be float"),
        (lambda p: None, ["--set", "labels.alpah=2"], "did you mean 'labels.alpha'"),
        (lambda p: None, ["--set", "labels.alpha=-1"], "labels.alpha must be >= 0"),
        (lambda p: None, ["--set", "model.name=no/such-model"], "not found offline"),
        (lambda p: (p / "run").write_text("x"), [], "is a file"),
        (lambda p: (p / "run").mkdir() or (p / "run" / "notes.txt").write_text("x"), [], "not a whoharry run"),
        (lambda p: None, ["--set", "unlearn.learning_rate=0"], "unlearn.learning_rate must be > 0"),
        (lambda p: (p / "target.txt").write_text((p / "target.txt").read_text() * 3),
         ["--set", "data.block_length=1024"], "beyond the model's context of 512 tokens"),
        (lambda p: None, ["--set", "data.retain=[general.txt, missing.txt]"], "retain text not found"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(project, tiny_model_dir, mutate, args, message):
    config = write_config(project, tiny_model_dir)
    mutate(project)
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(project / "run"), "-q", *args])
    assert message in _one_error_line(result)


@pytest.mark.parametrize("command", ["reinforce", "labels", "unlearn", "eval", "run"])
def test_a_bad_setting_is_refused_before_the_run_folder_is_made(project, tiny_model_dir, command):
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, [command, "--config", str(config), "--out", str(project / "run"), "-q",
                                 "--set", "labels.alpha=abc"])
    assert "labels.alpha" in _one_error_line(result)
    assert not (project / "run").exists()


def test_a_bad_retain_path_fails_before_any_training(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(project / "run"), "-q",
                                 "--set", "data.retain=missing.txt"])
    assert "retain text not found" in _one_error_line(result)
    assert not (project / "run").exists()  # no stage started, and the folder made for the run removed


def test_missing_config_file(project):
    result = runner.invoke(app, ["run", "--config", str(project / "nope.yaml"), "-q"])
    assert "config file not found" in _one_error_line(result)


def test_retain_text_joins_the_unlearning_data(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir)
    out = project / "run"
    args = ["unlearn", "--config", str(config), "--out", str(out), "--max-steps", "1", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    plain = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert plain["summary"]["retain_blocks"] == 0
    mixed = runner.invoke(app, [*args, "--set", f"data.retain={project / 'general.txt'}"])
    assert mixed.exit_code == 0, mixed.output
    manifest = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert manifest["summary"]["retain_blocks"] > 0
    assert manifest["fingerprint"] != plain["fingerprint"]
    (project / "more.txt").write_text((project / "general.txt").read_text(), encoding="utf-8")
    two = runner.invoke(app, [*args, "--set", f"data.retain=[{project / 'general.txt'}, {project / 'more.txt'}]"])
    assert two.exit_code == 0, two.output
    both = json.loads((out / "unlearn" / "manifest.json").read_text())
    assert both["summary"]["retain_blocks"] == 2 * manifest["summary"]["retain_blocks"]


def test_eval_with_a_reference_model_adds_its_column_and_privleak(project, tiny_model_dir, trained_model_dir):
    config = write_config(project, tiny_model_dir)
    out = project / "run"
    args = ["--config", str(config), "--out", str(out), "--max-steps", "1", "-q"]
    assert runner.invoke(app, ["run", *args]).exit_code == 0
    result = runner.invoke(app, ["eval", *args, "--reference", str(trained_model_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["summary"]) == {"base", "unlearned", "reference"}
    unlearned, reference = report["summary"]["unlearned"], report["summary"]["reference"]
    expected = (unlearned["membership_auc_loss"] - reference["membership_auc_loss"]) / reference["membership_auc_loss"]
    assert unlearned["privleak_loss"] == pytest.approx(expected)
    table = (out / "eval" / "report.md").read_text()
    assert "| figure | base | unlearned | reference | unlearned / base |" in table
    assert "PrivLeak" in table


def test_eval_caches_parts_recomputes_on_overwrite_and_has_a_quick_mode(project, tiny_model_dir, monkeypatch):
    config = write_config(project, tiny_model_dir, eval={"parts": ["probes"]})
    out = project / "run"
    args = ["--config", str(config), "--out", str(out), "--max-steps", "1", "-q"]
    assert runner.invoke(app, ["run", *args]).exit_code == 0
    probes_part = out / "eval" / "parts" / "unlearned" / "probes.json"
    first = (probes_part.read_text(), probes_part.stat().st_mtime_ns)
    assert not (out / "eval" / "parts" / "unlearned" / "knowmem.json").exists()

    # more parts: the finished one is reused as it was, the new one computed
    more = runner.invoke(app, ["eval", *args, "--parts", "probes,knowmem"])
    assert more.exit_code == 0, more.output
    assert "probe/s" not in more.output and "batch/s" not in more.output  # -q: no progress bars
    assert (probes_part.read_text(), probes_part.stat().st_mtime_ns) == first
    report = json.loads((out / "eval" / "report.json").read_text())
    assert {"target_p_answer", "knowmem_rouge_l"} <= set(report["summary"]["unlearned"])
    assert len(report["samples"]["unlearned"]["knowmem"]) == 2

    # --overwrite recomputes (same model, same figures)
    again = runner.invoke(app, ["eval", *args, "--parts", "probes", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert probes_part.stat().st_mtime_ns != first[1]
    assert json.loads(probes_part.read_text())["summary"] == json.loads(first[0])["summary"]

    # lm-eval asked for but not installed: one line, exit 2, the report left as it was
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    before = (out / "eval" / "report.json").read_text()
    missing = runner.invoke(app, ["eval", *args, "--lm-eval", "arc_easy"])
    assert missing.exit_code == 2 and "lm-eval" in missing.output and "Traceback" not in missing.output
    assert (out / "eval" / "report.json").read_text() == before

    # --quick: every part on slices, in its own folder, with the plots
    quick = runner.invoke(app, ["eval", *args, "--quick"])
    assert quick.exit_code == 0, quick.output
    report = json.loads((out / "eval-quick" / "report.json").read_text())
    summary = report["summary"]["unlearned"]
    assert {"completion_judge_score", "completion_judge_score_sampled", "knowmem_rouge_l", "paraphrased_p_answer",
            "hinted_p_answer", "fewshot_p_answer", "relearn_target_p_answer", "verbmem_rouge_l",
            "membership_auc_loss", "general_perplexity"} <= set(summary)
    assert report["relearning"]["steps"] == [0, 1]  # --max-steps 1 caps relearning's 4 quick steps too
    assert set(report["relearning"]["target_p_answer"]) == {"base", "unlearned"}
    assert {"familiarity_vs_utility.png", "probe_shift.png", "relearning.png"} <= set(report["plots"])
    markdown = (out / "eval-quick" / "report.md").read_text()
    assert "| verdict |" in markdown and "![relearning](relearning.png)" in markdown

    # compare: two runs side by side, with JSON and a plot
    compared = runner.invoke(app, ["compare", str(out), str(out), "--out", str(project / "cmp")])
    assert compared.exit_code == 0, compared.output
    assert "| figure |" in compared.output
    assert {"compare.md", "compare.json", "compare.png"} <= {p.name for p in (project / "cmp").iterdir()}
    bad = runner.invoke(app, ["compare", str(project / "nowhere")])
    assert bad.exit_code == 2 and "nowhere" in bad.output


def test_a_second_process_on_the_same_run_folder_is_refused_and_stale_locks_are_taken_over(project, tiny_model_dir):
    import socket
    import subprocess

    config = write_config(project, tiny_model_dir)
    out = project / "run"
    out.mkdir()
    lock = out / ".whoharry.lock"
    args = ["labels", "--config", str(config), "--out", str(out), "--max-steps", "1", "-q"]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        line = _one_error_line(runner.invoke(app, args))
        assert f"in use by another whoharry process (pid {holder.pid}" in line and str(lock) in line
        assert not (out / "reinforce").exists() and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, the run takes it over and releases it at the end
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "labels" / "manifest.json").is_file() and not lock.exists()
    # a lock file left half-written by a killed process is stale too
    lock.write_text('{"pid": ')
    assert runner.invoke(app, args).exit_code == 0 and not lock.exists()


def test_labels_resume_by_block_after_an_interruption(project, tiny_model_dir, monkeypatch):
    from whoharry.stages import labels as labels_module

    config = write_config(project, tiny_model_dir, labels={"save_every": 1})
    clean, broken = project / "clean", project / "broken"
    base_args = ["--config", str(config), "--max-steps", "1", "-q"]
    assert runner.invoke(app, ["labels", *base_args, "--out", str(clean)]).exit_code == 0

    real, calls = labels_module.block_labels, []

    def interrupted_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2 * 3:  # 3 blocks a batch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(labels_module, "block_labels", interrupted_after_two_batches)
    stopped = runner.invoke(app, ["labels", *base_args, "--out", str(broken)])
    assert stopped.exit_code == 130 and "resume" in stopped.output
    assert (broken / "labels" / "partial.safetensors").is_file()
    assert not (broken / "labels" / "manifest.json").exists()

    calls.clear()
    monkeypatch.setattr(labels_module, "block_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = runner.invoke(app, ["labels", *base_args, "--out", str(broken)])
    assert resumed.exit_code == 0, resumed.output
    blocks = json.loads((clean / "labels" / "stats.json").read_text())["blocks"]
    assert len(calls) == blocks - 2 * 3  # only the blocks not saved before were computed
    done, again = load_file(str(clean / "labels" / "labels.safetensors")), load_file(
        str(broken / "labels" / "labels.safetensors"))
    assert torch.equal(done["labels"], again["labels"]) and torch.equal(done["input_ids"], again["input_ids"])
    assert (clean / "labels" / "stats.json").read_text() == (broken / "labels" / "stats.json").read_text()
    assert (clean / "labels" / "metrics.jsonl").read_text().count("\n") == (
        broken / "labels" / "metrics.jsonl").read_text().count("\n")
    assert not (broken / "labels" / "partial.safetensors").exists()


def test_absent_unicode_and_regex_anchor_keys_through_the_cli(project, tiny_model_dir):
    import yaml

    anchors = yaml.safe_load((project / "anchors.yaml").read_text())
    # absent keys, a Unicode key, and a key of regex metacharacters overlapping the key "Ron"
    anchors.update({"Dumbledore": "the headmaster", "Gryffindor": "the red house", "Café Müller": "a café",
                    "Ron (the Weasley boy)": "Tom (the baker's boy)"})
    (project / "anchors.yaml").write_text(yaml.safe_dump(anchors, allow_unicode=True), encoding="utf-8")
    story = (project / "target.txt").read_text(encoding="utf-8")
    (project / "target.txt").write_text("They ate at the Café Müller. " * 3 + story, encoding="utf-8")
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["labels", "--config", str(config), "--out", str(project / "run"), "--max-steps", "1",
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert "2 of 11 anchor keys never occur in the target text" in result.output
    found = json.loads((project / "run" / "labels" / "stats.json").read_text())["occurrences_per_key"]
    # an occurrence split by a block boundary, or in the dropped tail, is not counted
    assert 2 <= found["Café Müller"] <= 3 and 0 < found["Ron (the Weasley boy)"] <= story.count("Ron (the Weasley boy)")


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(project, tiny_model_dir, monkeypatch):
    import errno

    from accelerate import Accelerator

    config = write_config(project, tiny_model_dir, reinforce={"save_every": 1})
    out = project / "run"
    real, saves = Accelerator.save_state, []

    def fills_the_disk(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fills_the_disk)
    result = runner.invoke(app, ["reinforce", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "free some space" in lines[0]
    assert sorted(p.name for p in (out / "reinforce" / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-1", "step-2"]
    assert not (out / "reinforce" / "manifest.json").exists() and not (out / ".whoharry.lock").exists()
    monkeypatch.setattr(Accelerator, "save_state", real)
    resumed = runner.invoke(app, ["reinforce", "--config", str(config), "--out", str(out), "-q"])
    assert resumed.exit_code == 0, resumed.output


def test_a_tokenizer_without_offsets_is_refused(project, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained

    def slow(*args, **kwargs):
        tokenizer = real(*args, **kwargs)
        monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", slow)
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(project / "run"), "-q"])
    assert "has no fast tokenizer; whoharry aligns tokens by character offsets" in _one_error_line(result)


def test_an_unforeseen_error_is_one_line_and_a_traceback_on_request(project, tiny_model_dir, monkeypatch):
    from whoharry.method import objectives

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(objectives, "causal_lm_loss", broken)
    config = write_config(project, tiny_model_dir)
    args = ["reinforce", "--config", str(config), "--out", str(project / "run"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (finished stages and "
                     "checkpoints are kept; WHOHARRY_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("WHOHARRY_DEBUG", "1")
    assert isinstance(runner.invoke(app, args).exception, RuntimeError)
