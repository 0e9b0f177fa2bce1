"""Typed configuration: dataclass defaults, merged with a YAML file, merged with `--set key=value`.

The dataclasses below are the only schema. Unknown keys fail with the closest valid key named.
Relative paths in a YAML file resolve against that file's folder; paths given with `--set` resolve
against the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whoharry.errors import WhoharryError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class ModelConfig:
    """Which base model to unlearn from and how to load it."""

    name: str = "smollm2-135m"  # alias, hub id, local folder or .gguf file
    revision: str | None = None  # hub revision, when downloads are allowed
    allow_download: bool = False  # let transformers reach the model hub
    trust_remote_code: bool = False  # run code shipped with a hub model
    # the weights of the models the labels and eval stages only read (training keeps fp32 master
    # weights): bf16 halves their memory on a GPU; fp32 | bf16 | fp16
    inference_dtype: str = "fp32"
    # "auto": spread those models over every visible GPU (one process), for models one GPU cannot hold
    device_map: str | None = None


@dataclass
class DataConfig:
    """The unlearn target, its anchor dictionary, and how it is cut into blocks."""

    target: Path = Path("data/harry_potter/target.txt")
    anchors: Path = Path("data/harry_potter/anchors.yaml")
    block_length: int = 256  # tokens per block (the paper used 512)
    # Texts mixed into the unlearning fine-tune with their own tokens as labels, as a regulariser that
    # keeps general ability; none is the paper's recipe. One path or a list of paths.
    retain: list[Path] = field(default_factory=list)


@dataclass
class TrainConfig:
    """One fine-tuning stage (reinforce or unlearn); both run the same loop."""

    epochs: float = 2.0
    learning_rate: float = 3e-5
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # caps the number of optimizer steps
    save_every: int = 0  # steps between checkpoints; 0 keeps no intermediate checkpoints
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (mixed precision; master weights stay fp32)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    compile: bool = False  # torch.compile the model before training
    # LoRA through peft (0: full fine-tuning); the adapters are merged into a plain model at the end
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class LabelsConfig:
    """Generic-label generation: argmax(v_base - alpha * relu(v_reinforced - v_base))."""

    alpha: float = 5.0
    batch_size: int = 4
    precision: str = "auto"
    save_every: int = 8  # batches between saves of the labels made so far, for a rerun to resume (0: none)


METHODS = ("whp", "ga", "npo")


@dataclass
class ForgetConfig:
    """How the unlearn stage forgets. `whp` is this project's method (the generic labels); `ga` (gradient
    ascent on the target) and `npo` (negative preference optimisation) are the usual baselines, for
    comparison. With `data.retain` set, ga and npo add a retain term: the cross-entropy on retain
    blocks paired with each batch, weighted by `retain_weight` (whp mixes retain blocks into its data)."""

    method: str = "whp"  # whp | ga | npo
    npo_beta: float = 0.1  # NPO's inverse temperature
    retain_weight: float = 1.0  # ga and npo: weight of the retain term


@dataclass
class AnchorsConfig:
    """`whoharry anchors suggest`: how candidate terms are found, ranked and translated."""

    top: int = 200  # terms written
    min_count: int = 2  # occurrences a term needs in the target
    max_words: int = 5  # words in a multi-word name (`Wicked Witch of the East`)
    # floor an ordinary word's general frequency at its frequency in English (wordfreq), so that a short
    # general text does not make `replied` look as rare as a coined name
    english_frequencies: bool = True
    alternatives: int = 3  # generic translations per term
    contexts: int = 6  # occurrences the baseline reads to propose translations
    batch_size: int = 8  # blocks per forward pass when scoring the target
    # optional: a dictionary from an LLM, passage by passage as in the paper (off while llm_url is empty);
    # the key is read from the environment variable named by llm_key_env, never from a file
    llm_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_key_env: str = "OPENAI_API_KEY"
    llm_prompt: Path = Path("data/anchors/llm_prompt.md")
    llm_passage_chars: int = 6000


# The parts of the evaluation, in the order they run; `eval.parts` picks some of them.
EVAL_PARTS = ("probes", "completions", "sampling", "knowmem", "robustness", "verbatim", "membership", "utility",
              "benchmarks", "relearning")


@dataclass
class EvalConfig:
    """What `whoharry eval` measures: familiarity, memorisation, leakage, robustness and utility."""

    parts: list[str] = field(default_factory=lambda: list(EVAL_PARTS))
    # familiarity by token probability (probes) and by completions
    target_probes: Path | None = Path("data/harry_potter/probes_test.jsonl")
    general_probes: Path | None = Path("data/general/probes_test.jsonl")
    related_probes: Path | None = Path("data/related/probes_test.jsonl")
    completions: Path | None = Path("data/harry_potter/completions_test.jsonl")
    completion_samples: int = 2  # sampled completions per prompt (the `sampling` part)
    sample_temperature: float = 0.8
    judge_terms: list[str] = field(default_factory=list)  # extra target terms for the offline judge
    # optional LLM judge: an OpenAI-compatible endpoint (off while llm_judge_url is empty); the key is
    # read from the environment variable named by llm_judge_key_env, never from a file
    llm_judge_url: str | None = None
    llm_judge_model: str = "gpt-4o-mini"
    llm_judge_key_env: str = "OPENAI_API_KEY"
    llm_judge_rubric: Path = Path("data/judge/rubric.md")
    target_name: str = "the Harry Potter books"  # how the LLM judge's rubric names the target
    # knowledge memorisation (MUSE's KnowMem): question/answer pairs about the target
    qa: Path | None = Path("data/harry_potter/qa_test.jsonl")
    qa_tokens: int = 16
    # robustness (Lynch et al.): the target facts asked indirectly, after a hint, and few-shot
    paraphrased_probes: Path | None = Path("data/harry_potter/probes_paraphrased_test.jsonl")
    hint: Path | None = Path("data/harry_potter/hint.txt")
    fewshot: int = 3  # solved target probes placed before each probe (0 skips few-shot)
    # relearning: fine-tune each model on a few target blocks and watch familiarity come back
    relearn_steps: int = 8
    relearn_eval_every: int = 2
    relearn_blocks: int = 8
    relearn_learning_rate: float = 1e-4
    # held-out text of the target's domain, never trained on: the non-members of membership inference
    heldout_target: Path | None = Path("data/harry_potter/heldout.txt")
    membership_passage_tokens: int = 128
    membership_max_passages: int = 48  # target passages scored (evenly spread); held-out ones all
    # a model that never saw the target (folder, .gguf, alias or hub id; the base model's tokenizer is
    # used), scored beside the others: the mark forgetting should reach, and the PrivLeak reference
    reference: str | None = None
    # verbatim memorisation: greedy continuations of target excerpts against the true text (0 skips it)
    verbatim_excerpts: int = 32
    verbatim_prompt_tokens: int = 64
    verbatim_continuation_tokens: int = 32
    general_text: Path | None = Path("data/general/heldout.txt")
    # standard benchmarks through lm-eval (installed separately), e.g. [arc_easy, boolq]
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None  # examples per task (None: all)
    max_samples: int | None = None  # cap every probe, prompt and question file at N lines (quick mode)
    max_new_tokens: int = 12  # greedy tokens after each probe
    completion_tokens: int = 24  # tokens after each completion prompt
    batch_size: int = 16  # probes per forward pass and per batched generation
    block_length: int = 256
    precision: str = "auto"


# `whoharry eval --quick`: every part on small slices, a few minutes on a laptop CPU
QUICK = {
    "eval.max_samples": 16,
    "eval.completion_samples": 1,
    "eval.membership_max_passages": 16,
    "eval.verbatim_excerpts": 8,
    "eval.relearn_steps": 4,
    "eval.relearn_blocks": 4,
    "eval.lm_eval_limit": 20,
}


@dataclass
class Config:
    """The whole run: every stage's settings in one tree."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reinforce: TrainConfig = field(default_factory=TrainConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    unlearn: TrainConfig = field(default_factory=TrainConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """A mapping of dotted keys to values as `--set key=value` strings (values written as YAML)."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in settings.items()]


def load_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    *,
    max_steps: int | None = None,
    seed: int | None = None,
) -> Config:
    """Defaults < YAML file < `--set a.b=c` overrides < the `--max-steps` and `--seed` shortcuts."""
    cfg = merge_sources(Config(), path, overrides)
    if max_steps is not None:
        cfg.reinforce.max_steps = max_steps
        cfg.unlearn.max_steps = max_steps
    if seed is not None:
        cfg.seed = seed
    validate(cfg)
    return cfg


def merge_sources(obj: Any, path: Path | None, overrides: list[str] | None) -> Any:
    """Merge a YAML file, then `key=value` overrides, into a config dataclass (in place; returned)."""
    if path is not None:
        _merge(obj, _read_yaml(path), base_dir=path.resolve().parent, prefix="")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise WhoharryError(f"--set expects key=value (for example labels.alpha=5), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(obj, nested, base_dir=Path.cwd(), prefix="")
    return obj


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WhoharryError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WhoharryError(f"{path}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WhoharryError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _merge(obj: Any, values: dict[str, Any], *, base_dir: Path, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            close = difflib.get_close_matches(dotted, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise WhoharryError(f"unknown config key {dotted!r}{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise WhoharryError(f"config key {dotted!r} is a section; give it a mapping of keys")
            _merge(current, value, base_dir=base_dir, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, base_dir))


def _coerce(value: Any, hint: Any, dotted: str, base_dir: Path) -> Any:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        items = [] if value is None else value if isinstance(value, list) else [value]
        return [_coerce(v, item, f"{dotted}[{i}]", base_dir) for i, v in enumerate(items)]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise WhoharryError(f"config key {dotted!r} cannot be empty")
    for kind in options:
        if kind is Path and isinstance(value, str):
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base_dir / path).resolve()
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            # PyYAML reads `3e-5` (no dot) as text; take it as the number it plainly is
            try:
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in options if k is not type(None))
    raise WhoharryError(f"config key {dotted!r} must be {wanted}, got {value!r}")


def validate(cfg: Config) -> None:
    """Range checks that no type can express."""
    checks: list[tuple[bool, str]] = [
        (cfg.data.block_length >= 8, "data.block_length must be at least 8 tokens"),
        (cfg.labels.alpha >= 0, "labels.alpha must be >= 0 (the paper used 5)"),
        (cfg.labels.batch_size >= 1, "labels.batch_size must be >= 1"),
        (cfg.labels.save_every >= 0, "labels.save_every must be >= 0 (0 keeps no progress)"),
        (cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1"),
        (cfg.eval.completion_tokens >= 1, "eval.completion_tokens must be >= 1"),
        (cfg.eval.membership_passage_tokens >= 8, "eval.membership_passage_tokens must be at least 8"),
        (cfg.eval.membership_max_passages >= 1, "eval.membership_max_passages must be >= 1"),
        (cfg.eval.verbatim_excerpts >= 0, "eval.verbatim_excerpts must be >= 0 (0 skips verbatim memorisation)"),
        (cfg.eval.verbatim_prompt_tokens >= 1, "eval.verbatim_prompt_tokens must be >= 1"),
        (cfg.eval.verbatim_continuation_tokens >= 1, "eval.verbatim_continuation_tokens must be >= 1"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (cfg.eval.completion_samples >= 1, "eval.completion_samples must be >= 1"),
        (cfg.eval.sample_temperature > 0, "eval.sample_temperature must be > 0"),
        (cfg.eval.qa_tokens >= 1, "eval.qa_tokens must be >= 1"),
        (cfg.eval.fewshot >= 0, "eval.fewshot must be >= 0 (0 skips few-shot)"),
        (cfg.eval.relearn_steps >= 1, "eval.relearn_steps must be >= 1"),
        (cfg.eval.relearn_eval_every >= 1, "eval.relearn_eval_every must be >= 1"),
        (cfg.eval.relearn_blocks >= 1, "eval.relearn_blocks must be >= 1"),
        (cfg.eval.relearn_learning_rate > 0, "eval.relearn_learning_rate must be > 0"),
        (cfg.eval.max_samples is None or cfg.eval.max_samples >= 1, "eval.max_samples must be >= 1"),
        (cfg.eval.lm_eval_limit is None or cfg.eval.lm_eval_limit >= 1, "eval.lm_eval_limit must be >= 1"),
        (cfg.eval.block_length >= 8, "eval.block_length must be at least 8 tokens"),
        (cfg.forget.method in METHODS, f"forget.method must be one of {', '.join(METHODS)}"),
        (cfg.forget.npo_beta > 0, "forget.npo_beta must be > 0"),
        (cfg.forget.retain_weight >= 0, "forget.retain_weight must be >= 0"),
        (cfg.anchors.top >= 1, "anchors.top must be >= 1"),
        (cfg.anchors.min_count >= 1, "anchors.min_count must be >= 1"),
        (cfg.anchors.max_words >= 1, "anchors.max_words must be >= 1"),
        (cfg.anchors.alternatives >= 1, "anchors.alternatives must be >= 1"),
        (cfg.anchors.contexts >= 1, "anchors.contexts must be >= 1"),
        (cfg.anchors.batch_size >= 1, "anchors.batch_size must be >= 1"),
        (cfg.anchors.llm_passage_chars >= 200, "anchors.llm_passage_chars must be >= 200"),
    ]
    for name in ("reinforce", "unlearn"):
        train: TrainConfig = getattr(cfg, name)
        checks += [
            (train.learning_rate > 0, f"{name}.learning_rate must be > 0"),
            (train.epochs > 0, f"{name}.epochs must be > 0"),
            (train.batch_size >= 1, f"{name}.batch_size must be >= 1"),
            (train.grad_accum >= 1, f"{name}.grad_accum must be >= 1"),
            (0 <= train.warmup_ratio < 1, f"{name}.warmup_ratio must be in [0, 1)"),
            (train.weight_decay >= 0, f"{name}.weight_decay must be >= 0"),
            (train.max_grad_norm >= 0, f"{name}.max_grad_norm must be >= 0 (0 turns clipping off)"),
            (train.max_steps is None or train.max_steps >= 1, f"{name}.max_steps must be >= 1"),
            (train.save_every >= 0, f"{name}.save_every must be >= 0"),
            (train.keep_checkpoints >= 1, f"{name}.keep_checkpoints must be >= 1"),
            (train.lora_rank >= 0, f"{name}.lora_rank must be >= 0 (0 fine-tunes every weight)"),
            (train.lora_alpha > 0, f"{name}.lora_alpha must be > 0"),
            (0 <= train.lora_dropout < 1, f"{name}.lora_dropout must be in [0, 1)"),
            (bool(train.lora_target_modules), f"{name}.lora_target_modules must name at least one module"),
        ]
    for name, precision in (
        ("reinforce", cfg.reinforce.precision),
        ("unlearn", cfg.unlearn.precision),
        ("labels", cfg.labels.precision),
        ("eval", cfg.eval.precision),
    ):
        checks.append((precision in PRECISIONS, f"{name}.precision must be one of {', '.join(PRECISIONS)}"))
    checks.append((cfg.model.inference_dtype in PRECISIONS[1:],
                   f"model.inference_dtype must be one of {', '.join(PRECISIONS[1:])}"))
    unknown = [part for part in cfg.eval.parts if part not in EVAL_PARTS]
    checks.append((not unknown, f"eval.parts: unknown part {', '.join(map(repr, unknown))}; "
                                f"valid parts: {', '.join(EVAL_PARTS)}"))
    for ok, message in checks:
        if not ok:
            raise WhoharryError(message)


def to_dict(obj: Any) -> Any:
    """The config as plain YAML-able data (paths as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list):
        return [to_dict(item) for item in obj]
    return obj


def model_key(model: ModelConfig, *, reading: bool) -> dict[str, Any]:
    """The model settings a stage's result depends on: where the read-only models sit never matters,
    and their weight dtype only to the stages that read them (`reading`)."""
    skipped = {"device_map"} if reading else {"device_map", "inference_dtype"}
    return {key: value for key, value in to_dict(model).items() if key not in skipped}


def fingerprint(data: Any) -> str:
    """A stable hash of plain data, used to tell whether a stage's settings changed."""
    blob = json.dumps(to_dict(data), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
