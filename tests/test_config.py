"""Config merging: defaults < YAML < --set, with loud failures on unknown keys and bad values."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from whoharry.config import EVAL_PARTS, QUICK, Config, as_overrides, load_config, validate
from whoharry.errors import WhoharryError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate():
    cfg = load_config()
    assert cfg.labels.alpha == 5.0
    assert cfg.model.allow_download is False and cfg.model.trust_remote_code is False


def test_yaml_then_overrides_then_shortcuts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("labels:\n  alpha: 3\nreinforce:\n  epochs: 4\ndata:\n  target: text/t.txt\n")
    cfg = load_config(path, ["labels.alpha=2.5", "unlearn.max_steps=7"], max_steps=3, seed=11)
    assert cfg.labels.alpha == 2.5
    assert cfg.reinforce.epochs == 4.0
    assert cfg.reinforce.max_steps == 3 and cfg.unlearn.max_steps == 3
    assert cfg.seed == 11
    assert cfg.data.target == (tmp_path / "text" / "t.txt").resolve(), "YAML paths resolve beside the file"


def test_set_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.anchors=a.yaml", "eval.probes.related=null", "eval.knowmem.qa=q.jsonl"])
    assert cfg.data.anchors == tmp_path / "a.yaml"
    assert cfg.eval.probes.related is None
    assert cfg.eval.knowmem.qa == tmp_path / "q.jsonl"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels.alpah=3", "did you mean 'labels.alpha'"),
        ("lables.alpha=3", "did you mean 'labels'"),
        ("labels.alpha=high", "must be float"),
        ("labels.alpha=-1", "labels.alpha must be >= 0"),
        ("unlearn.learning_rate=0", "unlearn.learning_rate must be > 0"),
        ("reinforce.batch_size=2.5", "must be int"),
        ("labels=3", "is a section"),
        ("reinforce.precision=fp8", "precision must be one of"),
        ("noequals", "expects key=value"),
        ("eval.probes.max_new_tokens=0", "eval.probes.max_new_tokens must be >= 1"),
        ("eval.relearning.steps=0", "eval.relearning.steps must be >= 1"),
        ("eval.membership.passage_tokens=4", "eval.membership.passage_tokens must be at least 8"),
        ("eval.verbatim.excerpts=-1", "eval.verbatim.excerpts must be >= 0"),
        ("eval.sampling.temperature=0", "eval.sampling.temperature must be > 0"),
        ("eval.benchmarks.limit=0", "eval.benchmarks.limit must be >= 1"),
        ("eval.block_length=4", "eval.block_length must be at least 8 tokens"),
        ("eval.parts=[probes, nope]", r"eval.parts\[1\] must be one of probes, completions"),
        ("eval.probes=3", "is a section"),
        ("eval.probs.target=x", "did you mean 'eval.probes'"),
        ("anchors.batch_size=0", "anchors.batch_size must be >= 1"),
        ("anchors.name_min_count=3", "anchors.name_min_count must be <= anchors.min_count"),
    ],
)
def test_bad_overrides_fail_with_one_clear_message(override, message):
    with pytest.raises(WhoharryError, match=message):
        load_config(None, [override])


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("labels:\n  alpha: [1, 2\n")
    with pytest.raises(WhoharryError, match=r"line \d+, column \d+"):
        load_config(path)


def paths_in(obj) -> list[Path]:
    """Every file path a config tree names."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += paths_in(value)
        elif isinstance(value, Path):
            found.append(value)
        elif isinstance(value, list):
            found += [item for item in value if isinstance(item, Path)]
    return found


def test_every_shipped_config_loads():
    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    assert shipped, "configs/ should ship at least the default"
    for path in shipped:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        for named in paths_in(cfg):
            assert named.is_file(), f"{path}: {named} is missing"


def test_every_shipped_sweep_trial_loads(monkeypatch):
    """As scripts/sweep.py loads a trial: its dev-probe settings, then the trial's, over the default config."""
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    monkeypatch.chdir(ROOT)
    sweeps = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        trials = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert trials, path
        if "previous-default" in trials:  # the trials tuned before the default changed keep its settings
            previous = load_config(ROOT / "configs" / "default.yaml", as_overrides(trials["previous-default"]))
            assert (previous.labels.targets, previous.labels.translations, previous.unlearn.learning_rate) == (
                "hard", 1, 5e-5)
            assert trials["inside-translate"]["labels.targets"] == "hard"
        for name, settings in trials.items():
            cfg = load_config(ROOT / "configs" / "default.yaml", as_overrides({**sweep.DEV, **(settings or {})}))
            assert cfg.model.name, (path, name)
            assert cfg.eval.probes.target.name == "probes_dev.jsonl"
            assert cfg.eval.completions.general_prompts.name == "completions_dev_wide.jsonl"
            for named in paths_in(cfg.eval):
                assert named.is_file(), f"{path} {name}: {named} is missing"


def test_the_shipped_experiment_config_loads(tmp_path):
    from whoharry.experiments.retrain_gap import load_experiment

    for path in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for book in (raw["forget_book"], raw["retain_book"]):
            (tmp_path / book).touch()  # the books are downloaded; loading checks only that they are there
        exp = load_experiment(path, quick=True, corpora=tmp_path)
        assert exp.run.eval.verbatim.excerpts == 3 and exp.run.eval.membership.max_passages == 4  # --quick
        for named in [*paths_in(exp.run), exp.anchors, exp.probes, exp.qa]:
            assert named.is_file() or named.parent == tmp_path, f"{path}: {named} is missing"


def test_retain_takes_one_path_or_a_list(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  retain: [a.txt, sub/b.txt]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.retain == [tmp_path / "a.txt", tmp_path / "sub" / "b.txt"]
    assert load_config(None, ["data.retain=one.txt"]).data.retain == [Path.cwd() / "one.txt"]
    assert load_config(None, ["data.retain=null"]).data.retain == []
    with pytest.raises(WhoharryError, match=r"data.retain\[1\]"):
        load_config(None, ["data.retain=[a.txt, 3]"])


def test_exponent_without_a_dot_is_a_number(tmp_path):
    (tmp_path / "c.yaml").write_text("unlearn:\n  learning_rate: 3e-5\n")
    assert load_config(tmp_path / "c.yaml").unlearn.learning_rate == 3e-5
    assert load_config(None, ["labels.alpha=1e1"]).labels.alpha == 10.0
    with pytest.raises(WhoharryError, match="labels.alpha' must be float"):
        load_config(None, ["labels.alpha=five"])


def test_the_paper_config_with_the_paper_scripts_settings():
    """configs/llama2-7b.yaml with what scripts/paper_run.sh sets: one step sees 16 blocks of 512."""
    script = (ROOT / "scripts" / "paper_run.sh").read_text(encoding="utf-8")
    keys = set(re.findall(r'--set "([a-z_.]+)=', script))
    assert {"data.target", "reinforce.grad_accum", "unlearn.grad_accum", "reinforce.lora_rank"} <= keys
    cfg = load_config(ROOT / "configs" / "llama2-7b.yaml", [
        "data.target=README.md", "reinforce.grad_accum=4", "unlearn.grad_accum=4", "reinforce.lora_rank=64",
        "unlearn.lora_rank=64", "reinforce.learning_rate=1e-4", "unlearn.learning_rate=3e-5"])
    assert cfg.model.name == "meta-llama/Llama-2-7b-chat-hf" and cfg.data.block_length == 512
    assert cfg.labels.alpha == 5.0 and cfg.data.retain == []
    assert cfg.unlearn.batch_size * cfg.unlearn.grad_accum == 16 and cfg.unlearn.max_steps == 512
    assert cfg.reinforce.lora_rank == 64 and cfg.model.inference_dtype == "bf16"


def test_the_accelerate_configs_name_their_engines():
    engines = {path.stem: yaml.safe_load(path.read_text(encoding="utf-8"))
               for path in (ROOT / "configs" / "accelerate").glob("*.yaml")}
    assert engines["ddp"]["distributed_type"] == "MULTI_GPU"
    assert engines["fsdp"]["distributed_type"] == "FSDP" and engines["fsdp"]["fsdp_config"]["fsdp_version"] == 2
    assert engines["zero3"]["distributed_type"] == "DEEPSPEED"
    assert engines["zero3"]["deepspeed_config"]["zero_stage"] == 3


def test_training_options_are_checked():
    with pytest.raises(WhoharryError, match="unlearn.lora_rank must be >= 0"):
        load_config(None, ["unlearn.lora_rank=-1"])
    with pytest.raises(WhoharryError, match="model.inference_dtype must be one of fp32, bf16, fp16"):
        load_config(None, ["model.inference_dtype=int8"])
    assert load_config(None, ["reinforce.gradient_checkpointing=true"]).reinforce.gradient_checkpointing


def test_quick_mode_settings_are_valid_keys():
    cfg = load_config(None, as_overrides(QUICK))
    assert cfg.eval.max_samples == 16 and cfg.eval.sampling.samples == 1
    assert cfg.eval.relearning.steps == 4 and cfg.eval.benchmarks.limit == 20


def test_max_steps_caps_the_relearning_too():
    assert load_config(None, ["eval.relearning.steps=8"], max_steps=3).eval.relearning.steps == 3
    assert load_config(None, ["eval.relearning.steps=2"], max_steps=3).eval.relearning.steps == 2


@pytest.mark.parametrize(
    ("override", "new"),
    [("eval.target_probes=x.jsonl", "eval.probes.target"), ("eval.relearn_steps=3", "eval.relearning.steps"),
     ("eval.lm_eval_tasks=[boolq]", "eval.benchmarks.tasks"), ("eval.completion_samples=1", "eval.sampling.samples"),
     ("eval.llm_judge_url=http://x", "eval.llm_judge.url"), ("eval.completions=x.jsonl", "eval.completions.prompts")],
)
def test_a_former_eval_key_names_its_new_place(override, new):
    with pytest.raises(WhoharryError, match=f"is now '{re.escape(new)}'"):
        load_config(None, [override])


def test_checks_run_on_values_set_in_code():
    cfg = load_config()
    cfg.eval.parts = ["probes", "nope"]
    with pytest.raises(WhoharryError, match="eval.parts: unknown part 'nope'; valid parts: " + ", ".join(EVAL_PARTS)):
        validate(cfg)
    cfg = load_config()
    cfg.unlearn.precision = "fp8"
    with pytest.raises(WhoharryError, match="unlearn.precision must be one of auto, fp32, bf16, fp16"):
        validate(cfg)
    cfg = load_config()
    cfg.forget.method = "sgd"
    with pytest.raises(WhoharryError, match="forget.method must be one of whp, ga, npo"):
        validate(cfg)


def test_every_part_declares_the_settings_it_reads():
    """The cache key of each evaluation part: its own `eval.PART` section and the settings it reads besides."""
    from operator import attrgetter

    from whoharry.evaluation.suite import PART_INPUTS, part_fingerprint, part_inputs

    assert set(PART_INPUTS) == {*EVAL_PARTS, "llm_judge", "relearning-heldout", "relearning-facts"}
    cfg = Config()
    for part in [*PART_INPUTS, "benchmark-boolq"]:
        for path in part_inputs(part):
            attrgetter(path)(cfg.eval)  # every declared setting exists
    assert all(any(path.split(".")[0] == part for path in PART_INPUTS[part]) for part in EVAL_PARTS)
    before = {part: part_fingerprint(cfg, part) for part in ("robustness", "relearning", "sampling", "benchmark-a")}
    cfg.eval.probes.general = None  # read by the probes part only
    cfg.eval.benchmarks.tasks = ["a", "b"]  # each task is a part of its own
    assert {part: part_fingerprint(cfg, part) for part in before} == before
    cfg.eval.probes.max_new_tokens += 1
    cfg.eval.completions.tokens += 1
    after = {part: part_fingerprint(cfg, part) for part in before}
    assert [after[part] != before[part] for part in before] == [True, False, True, False]
    # each relearning source is a part of its own: asking for more sources keeps the finished ones
    sources = ("relearning", "relearning-heldout", "relearning-facts")
    before = {part: part_fingerprint(cfg, part) for part in sources}
    cfg.eval.relearning.sources = ["target", "heldout", "facts"]
    assert {part: part_fingerprint(cfg, part) for part in sources} == before
    cfg.eval.membership.heldout = None
    assert [part_fingerprint(cfg, part) != before[part] for part in sources] == [False, True, False]
