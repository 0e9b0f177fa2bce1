"""Typed configuration: dataclass defaults, merged with a YAML file, merged with `--set key=value`.

The dataclasses below (the `eval` section's in `config.evaluation`) are the only schema; each section
checks its own ranges (`check`), and `validate` walks the tree calling those checks. The merging itself
(unknown keys failing with the closest valid key named, relative paths resolving against the YAML file's
folder, `--set` paths against the current directory) is `whoharry.core.settings`, generic over dataclasses.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# re-exported: the choices of the `Literal` fields, and the eval section
from whoharry.config.choices import (  # noqa: F401
    EVAL_PARTS,
    METHODS,
    PRECISIONS,
    EvalPart,
    InsideAnchors,
    LabelTargets,
    MatchOrder,
    Method,
    NameSource,
    Precision,
    RetainLabels,
    SaveDtype,
    TargetFiles,
    Tracker,
    WeightDtype,
    Writer,
)
from whoharry.config.evaluation import (  # noqa: F401
    AUDIT,
    AUDIT_PARTS,
    QUICK,
    BenchmarksEval,
    CompletionsEval,
    EvalConfig,
    KnowmemEval,
    LatentEval,
    LLMJudgeEval,
    MembershipEval,
    ProbesEval,
    PromptsEval,
    QuantizationEval,
    RelearningEval,
    RobustnessEval,
    SamplingEval,
    UtilityEval,
    VerbatimEval,
)
from whoharry.core.settings import as_overrides as as_overrides  # re-exported
from whoharry.core.settings import check_tree, merge_sources, require, to_dict
from whoharry.core.settings import fingerprint as fingerprint  # re-exported
from whoharry.core.settings import without_later_defaults as without_later_defaults  # re-exported


@dataclass
class ModelConfig:
    """Which base model to unlearn from and how to load it."""

    name: str = "smollm2-135m"  # alias, hub id, local folder or .gguf file
    revision: str | None = None  # hub revision, when downloads are allowed
    allow_download: bool = False  # let transformers reach the model hub
    trust_remote_code: bool = False  # run code shipped with a hub model
    # the weights of the models the labels and eval stages only read (training keeps fp32 master
    # weights): bf16 halves their memory on a GPU; fp32 | bf16 | fp16
    inference_dtype: WeightDtype = "fp32"
    # "auto": spread those models over every visible GPU (one process), for models one GPU cannot hold;
    # passed to transformers as is (its other strategies and device names work too)
    device_map: str | None = None


@dataclass
class DataConfig:
    """The unlearn target, its anchor dictionary, and how it is cut into blocks."""

    # a .txt file; a .jsonl/.json/.csv/.parquet file or a Dataset.save_to_disk folder (one document a row);
    # or a hub dataset, hf:OWNER/NAME[#SPLIT]
    target: Path = Path("data/harry_potter/target.txt")
    anchors: Path = Path("data/harry_potter/anchors.yaml")
    block_length: int = 256  # tokens per block (the paper used 512)
    # Texts mixed into the unlearning fine-tune with their own tokens as labels, as a regulariser that
    # keeps general ability; none is the paper's recipe. One source or a list, each as data.target takes.
    retain: list[Path] = field(default_factory=list)
    text_column: str = "text"  # the column of a table source (target and retain) that holds the text
    allow_download: bool = False  # fetch an hf: dataset that is not in the local Hugging Face cache

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`data.`)."""
        require(self.block_length >= 8, f"{prefix}block_length must be at least 8 tokens")
        require(bool(self.text_column.strip()), f"{prefix}text_column must name a column")


@dataclass
class TrainConfig:
    """One fine-tuning stage (reinforce or unlearn); both run the same loop."""

    epochs: float = 2.0
    learning_rate: float = 3e-5
    batch_size: int = 4  # blocks per optimizer micro-batch, per process
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    adam_beta1: float = 0.9  # AdamW's betas (the authors' fine-tune: 0.9, 0.98)
    adam_beta2: float = 0.999
    validation_share: float = 0.0  # share of the blocks held out at random (fixed by the seed), never trained on
    select_best: bool = False  # final model: the weights of lowest validation loss (after each epoch, last step)
    max_steps: int | None = None  # caps the number of optimizer steps
    save_every: int = 0  # steps between checkpoints; 0 keeps no intermediate checkpoints
    keep_checkpoints: int = 2
    precision: Precision = "auto"  # mixed precision; master weights stay fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    compile: bool = False  # torch.compile the model before training
    lora_rank: int = 0  # LoRA through peft (0: full fine-tuning), merged into a plain model at the end
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # the dtype final/ is written in (training keeps fp32 master weights): auto is bf16 when the stage
    # trained on a GPU (a 7B folder of 13 GB, not 27 GB), fp32 on a CPU
    save_dtype: SaveDtype = "auto"
    # also log each step's loss, learning rate and validation figures to these trackers (through accelerate,
    # under the stage's trackers/ folder), beside metrics.jsonl
    log_with: list[Tracker] = field(default_factory=list)

    def check(self, prefix: str) -> None:
        """Range checks of the stage found at `prefix` (`reinforce.` or `unlearn.`)."""
        for name in ("learning_rate", "epochs", "lora_alpha"):
            require(getattr(self, name) > 0, f"{prefix}{name} must be > 0")
        for name in ("batch_size", "grad_accum", "keep_checkpoints"):
            require(getattr(self, name) >= 1, f"{prefix}{name} must be >= 1")
        for name in ("weight_decay", "max_grad_norm", "save_every", "lora_rank"):
            require(getattr(self, name) >= 0, f"{prefix}{name} must be >= 0")
        for name in ("warmup_ratio", "lora_dropout", "adam_beta1", "adam_beta2", "validation_share"):
            require(0 <= getattr(self, name) < 1, f"{prefix}{name} must be in [0, 1)")
        require(self.max_steps is None or self.max_steps >= 1, f"{prefix}max_steps must be >= 1")
        require(bool(self.lora_target_modules), f"{prefix}lora_target_modules must name at least one module")
        require(self.validation_share > 0 or not self.select_best, f"{prefix}select_best needs validation_share > 0")
        missing = [name for name in self.log_with if not any(importlib.util.find_spec(module)
                                                             for module in TRACKER_MODULES.get(name, (name,)))]
        require(not missing, f"{prefix}log_with {', '.join(missing)}: not installed; pip install {' '.join(missing)}")


# the modules accelerate imports for a tracker (the others are named as their package)
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX")}

DEFAULT_TEMPLATES = [
    "Wiki entry: {key}\n\n{key}",
    "Forum thread\nQuestion: What do you remember about {key}?\nAnswer:",
    "Blog post: rereading the chapters about {key}\n\n",
    "Study notes on {key}:\n-",
    "Discussion: the most important moments involving {key}\n\nFirst reply:",
]


@dataclass
class AugmentConfig:
    """`whoharry augment`: passages about the target's world written by the models (or an LLM), labelled and
    unlearned with the target (the paper added ~1M generated tokens to the books). Off while `tokens` is 0."""

    tokens: int = 0  # generated tokens added to the target; 0: the target alone
    writer: Writer = "both"  # which model writes: base, reinforced, or both (batches in turn)
    passage_tokens: int = 160  # new tokens per passage
    temperature: float = 0.9
    top_p: float = 0.95
    batch_size: int = 32  # passages per generate call
    min_density: float = 2.0  # anchor terms per 100 words a passage needs to be kept
    max_similarity: float = 0.5  # shingle overlap with a kept passage, or with the target, that drops it
    max_prompts: int = 0  # prompts tried at most; 0: 4 x tokens / passage_tokens
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))  # genre prompts, `{key}` a term
    shared_cache: bool = True  # reuse what a run with the same settings wrote ($WHOHARRY_CACHE/augment)
    # optional: an OpenAI-compatible endpoint writes the passages instead (off while llm_url is empty); the key
    # is read from the environment variable named by llm_key_env, never from a file
    llm_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_key_env: str = "OPENAI_API_KEY"

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`augment.`)."""
        for name in ("tokens", "max_prompts", "min_density"):
            require(getattr(self, name) >= 0, f"{prefix}{name} must be >= 0")
        for name in ("passage_tokens", "batch_size"):
            require(getattr(self, name) >= 1, f"{prefix}{name} must be >= 1")
        require(self.temperature > 0, f"{prefix}temperature must be > 0")
        require(0 < self.top_p <= 1, f"{prefix}top_p must be in (0, 1]")
        require(0 < self.max_similarity <= 1, f"{prefix}max_similarity must be in (0, 1]")
        require(all("{key}" in template for template in self.templates), f"{prefix}templates must each hold {{key}}")


@dataclass
class LabelsConfig:
    """Generic-label generation: argmax(v_base - alpha * relu(v_reinforced - v_base))."""

    alpha: float = 5.0
    batch_size: int = 4  # blocks per forward pass
    precision: Precision = "auto"  # the models' autocast; output layer, formula and argmax run in fp32
    # where keys overlap (`Order`, `Order of the Phoenix`): the longest, or the first in file order (the authors')
    match_order: MatchOrder = "longest"
    # predictions from inside a key of several tokens: no label (the paper's), or the translation's aligned ones
    inside_anchors: InsideAnchors = "mask"
    # translations of each block, each with its own random anchor choices; their generic distributions are
    # averaged (Liu et al. 2024, WHP+); 1 is the paper's single translation
    translations: int = 1
    # what unlearning fits: `hard`, the argmax (the paper's), or `soft`, the distribution kept as its top_k
    targets: LabelTargets = "hard"
    top_k: int = 16  # tokens kept per position of a soft target (8 bytes each: int32 id, float32 probability)
    save_every: int = 8  # batches between saves of the labels made so far, for a rerun to resume (0: none)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`labels.`)."""
        require(self.alpha >= 0, f"{prefix}alpha must be >= 0 (the paper used 5)")
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        require(self.translations >= 1, f"{prefix}translations must be >= 1")
        require(self.top_k >= 1, f"{prefix}top_k must be >= 1")
        require(self.save_every >= 0, f"{prefix}save_every must be >= 0 (0 keeps no progress)")


@dataclass
class ForgetConfig:
    """How the unlearn stage forgets. `whp` is this project's method (the generic labels); `ga` (gradient
    ascent on the target) and `npo` (negative preference optimisation) are the usual baselines, for
    comparison. With `data.retain` set, ga and npo add a retain term: the cross-entropy on retain
    blocks paired with each batch, weighted by `retain_weight`. whp mixes the retain blocks into its data,
    labelled with their own tokens (`retain_labels: text`), with the base model's next-token distribution
    (`base`: a KL to the base on general text, the retain regulariser of Maini et al. 2024, TOFU, section 4),
    or each block twice, once each way (`both`). With `wise_ft` below 1 the unlearned model is moved back
    toward the base in weight space after training (WiSE-FT, Wortsman et al. 2022, section 2)."""

    method: Method = "whp"
    npo_beta: float = 0.1  # NPO's inverse temperature
    retain_weight: float = 1.0  # ga and npo: weight of the retain term
    # whp: the retain blocks' targets, their own tokens, the base model's distribution kept as labels.top_k, or both
    retain_labels: RetainLabels = "text"
    # WiSE-FT's mixing coefficient: unlearn/final/ holds base + wise_ft * (trained - base); 1 keeps the
    # trained weights (any method)
    wise_ft: float = 1.0

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`forget.`)."""
        require(self.npo_beta > 0, f"{prefix}npo_beta must be > 0")
        require(0 < self.wise_ft <= 1, f"{prefix}wise_ft must be in (0, 1] (1: the trained weights)")
        require(self.retain_weight >= 0, f"{prefix}retain_weight must be >= 0")


@dataclass
class AnchorsConfig:
    """`whoharry anchors suggest`: how candidate terms are found, ranked and translated."""

    top: int = 200  # terms seen min_count times or more written; a rarer name joins them when it scores as well
    min_count: int = 2  # occurrences a term needs in the target
    # occurrences a name needs, at most min_count (a word written with a capital in mid-sentence: a short text
    # names much of its world once, and one occurrence of an ordinary word says nothing)
    name_min_count: int = 1
    max_words: int = 5  # words in a multi-word name (`Wicked Witch of the East`)
    # floor an ordinary word's general frequency at its frequency in English (wordfreq), so that a short
    # general text does not make `replied` look as rare as a coined name
    english_frequencies: bool = True
    # a word that is not a name and more frequent than this in English (wordfreq, share of all words) is never a
    # term (1e-5 leaves out `door` and `matter`); 1 keeps every word
    max_word_frequency: float = 1.0
    alternatives: int = 3  # generic translations per term
    contexts: int = 6  # occurrences the baseline reads to propose translations
    # a person's name takes the capitalised words the baseline proposes (model), or ordinary names of a shipped
    # list, those the baseline expects there (pool)
    names: NameSource = "model"
    batch_size: int = 8  # blocks per forward pass when scoring the target
    # optional: a dictionary from an LLM, passage by passage as in the paper (off while llm_url is empty);
    # the key is read from the environment variable named by llm_key_env, never from a file
    llm_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_key_env: str = "OPENAI_API_KEY"
    llm_prompt: Path = Path("data/anchors/llm_prompt.md")
    llm_passage_chars: int = 6000  # characters of target text per LLM request

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`anchors.`)."""
        for name in ("top", "min_count", "name_min_count", "max_words", "alternatives", "contexts", "batch_size"):
            require(getattr(self, name) >= 1, f"{prefix}{name} must be >= 1")
        require(self.llm_passage_chars >= 200, f"{prefix}llm_passage_chars must be >= 200")
        require(0 < self.max_word_frequency <= 1, f"{prefix}max_word_frequency must be in (0, 1]")
        require(self.name_min_count <= self.min_count,
                f"{prefix}name_min_count must be <= {prefix}min_count (a name needs no more occurrences than a word)")


@dataclass
class TargetFilesConfig:
    """What a run makes from the target when it is not the demo's and the user gave no files of their own
    (`whoharry run --target FILE`): a held-out split, the anchor dictionary and the familiarity probes."""

    # auto: make each file that still points at the demo's (data/harry_potter/) when the target is another
    # text; always: make them whatever the target; never: use the configured files as they are
    make: TargetFiles = "auto"
    # held out of every fine-tune for membership inference and the held-out probes: runs of whole paragraphs
    # spread over the text, about heldout_share of its characters in heldout_pieces runs
    heldout_share: float = 0.1
    heldout_pieces: int = 8
    probes: int = 120  # cloze probes made (before the dev/test halves), at most probes_per_key per key
    probes_per_key: int = 3
    probe_min_words: int = 6  # words a probe prompt holds at least (from a sentence start of the key's paragraph)
    completions: int = 60  # completion prompts made (before the halves)
    # with a made dictionary, passages about the target's world the models write (the `augment` stage) of this
    # share of the training text's tokens, labelled and unlearned with it, unless augment.tokens is set; a made
    # dictionary holds only what the text names, and the passages carry its world beyond the text; 0: none (the
    # one switch that works everywhere: augment.tokens: 0 in a config file equals the shipped value and so does
    # not count as set)
    augment_share: float = 0.3
    # with a made dictionary and data.retain set, what a whp run's retain blocks fit (forget.retain_labels)
    # unless forget.retain_labels is set: chosen on another book's development probes and prompts, where the
    # retain texts' own tokens alone let completions of general prompts drift (docs/OWN_TEXT.md, "Fluency on
    # general prompts"); the demo's hand-written dictionary keeps forget.retain_labels
    retain_labels: RetainLabels = "both"
    # with a made dictionary, a whp run's WiSE-FT mixing coefficient (forget.wise_ft) unless forget.wise_ft is
    # set: chosen on the same development probes and prompts, where a quarter of the way back to the base
    # undoes about a third to a half of the drift on general prompts and keeps three quarters of the forgetting
    # (docs/OWN_TEXT.md, "Fluency on general prompts"); 1: the trained weights
    wise_ft: float = 0.75
    # optional: question/answer pairs for the knowmem part, written by an LLM from passages of the target and
    # of its held-out part (off while llm_url is empty; the knowmem part is then left out for such a target);
    # the key is read from the environment variable named by llm_key_env, never from a file
    llm_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_key_env: str = "OPENAI_API_KEY"
    qa_prompt: Path = Path("data/target_files/qa_prompt.md")  # placeholders {target}, {passage}, {count}
    qa: int = 40  # pairs made (before the dev/test halves)
    qa_per_passage: int = 4  # pairs asked of each passage
    qa_passage_chars: int = 1500  # characters of text per request

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`target_files.`)."""
        require(0 < self.heldout_share <= 0.5, f"{prefix}heldout_share must be in (0, 0.5]")
        for name in ("heldout_pieces", "probes_per_key", "probe_min_words", "qa", "qa_per_passage"):
            require(getattr(self, name) >= 1, f"{prefix}{name} must be >= 1")
        require(self.qa_passage_chars >= 200, f"{prefix}qa_passage_chars must be >= 200")
        require(0 <= self.augment_share <= 10, f"{prefix}augment_share must be in [0, 10]")
        require(0 < self.wise_ft <= 1, f"{prefix}wise_ft must be in (0, 1] (1: the trained weights)")
        for name in ("probes", "completions"):  # half dev, half test
            require(getattr(self, name) >= 2, f"{prefix}{name} must be >= 2 (half dev, half test)")


@dataclass
class Config:
    """The whole run: every stage's settings in one tree."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reinforce: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    unlearn: TrainConfig = field(default_factory=TrainConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    target_files: TargetFilesConfig = field(default_factory=TargetFilesConfig)


def load_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    *,
    max_steps: int | None = None,
    seed: int | None = None,
) -> Config:
    """Defaults < YAML file < `--set a.b=c` overrides < the `--max-steps` and `--seed` shortcuts.

    `max_steps` caps every training stage: reinforce, unlearn, and the evaluation's relearning.

    Raises:
        WhoharryError: a missing or malformed file, an unknown key (with the closest valid one named), a
            value of the wrong type or out of range.
    """
    cfg = merge_sources(Config(), path, overrides)
    if max_steps is not None:
        cfg.reinforce.max_steps = max_steps
        cfg.unlearn.max_steps = max_steps
        cfg.eval.relearning.steps = min(cfg.eval.relearning.steps, max_steps)
    if seed is not None:
        cfg.seed = seed
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks that no type can express (every section's own `check`) and the choices of its `Literal`
    fields, walking the tree.

    Raises:
        WhoharryError: the first value out of range, named by its dotted key.
    """
    check_tree(cfg)


def train_key(train: TrainConfig) -> dict[str, Any]:
    """A training section as it enters a stage's fingerprint: not the trackers it also logs to, and
    `save_dtype` only when it is not `auto` (folders written before the setting keep their keys)."""
    settings = to_dict(train)
    settings.pop("log_with")
    return without_later_defaults(settings, {"save_dtype": "auto"})


def model_key(model: ModelConfig, *, reading: bool) -> dict[str, Any]:
    """The model settings a stage's result depends on: where the read-only models sit never matters,
    and their weight dtype only to the stages that read them (`reading`)."""
    skipped = {"device_map"} if reading else {"device_map", "inference_dtype"}
    return {key: value for key, value in to_dict(model).items() if key not in skipped}
