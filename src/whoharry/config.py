"""Typed configuration: dataclass defaults, merged with a YAML file, merged with `--set key=value`.

The dataclasses below are the only schema; each section checks its own ranges (`check`), and
`validate` walks the tree calling those checks. The merging itself (unknown keys failing with the
closest valid key named, relative paths resolving against the YAML file's folder, `--set` paths
against the current directory) is `whoharry.core.settings`, generic over dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from whoharry.core.settings import as_overrides as as_overrides  # re-exported
from whoharry.core.settings import check_tree, merge_sources, require, to_dict
from whoharry.core.settings import fingerprint as fingerprint  # re-exported

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # mixed precision of a stage; "auto": bf16 where fast
WeightDtype = Literal["fp32", "bf16", "fp16"]  # the dtype of read-only model weights
Method = Literal["whp", "ga", "npo"]  # how the unlearn stage forgets
# The parts of the evaluation, in the order they run; `eval.parts` picks some of them.
EvalPart = Literal["probes", "completions", "sampling", "knowmem", "robustness", "verbatim", "membership", "utility",
                   "benchmarks", "relearning"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
METHODS: tuple[str, ...] = get_args(Method)
EVAL_PARTS: tuple[str, ...] = get_args(EvalPart)


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

    target: Path = Path("data/harry_potter/target.txt")
    anchors: Path = Path("data/harry_potter/anchors.yaml")
    block_length: int = 256  # tokens per block (the paper used 512)
    # Texts mixed into the unlearning fine-tune with their own tokens as labels, as a regulariser that
    # keeps general ability; none is the paper's recipe. One path or a list of paths.
    retain: list[Path] = field(default_factory=list)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`data.`)."""
        require(self.block_length >= 8, f"{prefix}block_length must be at least 8 tokens")


@dataclass
class TrainConfig:
    """One fine-tuning stage (reinforce or unlearn); both run the same loop."""

    epochs: float = 2.0
    learning_rate: float = 3e-5
    batch_size: int = 4  # blocks per optimizer micro-batch, per process
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # caps the number of optimizer steps
    save_every: int = 0  # steps between checkpoints; 0 keeps no intermediate checkpoints
    keep_checkpoints: int = 2
    precision: Precision = "auto"  # mixed precision; master weights stay fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    compile: bool = False  # torch.compile the model before training
    # LoRA through peft (0: full fine-tuning); the adapters are merged into a plain model at the end
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def check(self, prefix: str) -> None:
        """Range checks of the stage found at `prefix` (`reinforce.` or `unlearn.`)."""
        require(self.learning_rate > 0, f"{prefix}learning_rate must be > 0")
        require(self.epochs > 0, f"{prefix}epochs must be > 0")
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        require(self.grad_accum >= 1, f"{prefix}grad_accum must be >= 1")
        require(0 <= self.warmup_ratio < 1, f"{prefix}warmup_ratio must be in [0, 1)")
        require(self.weight_decay >= 0, f"{prefix}weight_decay must be >= 0")
        require(self.max_grad_norm >= 0, f"{prefix}max_grad_norm must be >= 0 (0 turns clipping off)")
        require(self.max_steps is None or self.max_steps >= 1, f"{prefix}max_steps must be >= 1")
        require(self.save_every >= 0, f"{prefix}save_every must be >= 0")
        require(self.keep_checkpoints >= 1, f"{prefix}keep_checkpoints must be >= 1")
        require(self.lora_rank >= 0, f"{prefix}lora_rank must be >= 0 (0 fine-tunes every weight)")
        require(self.lora_alpha > 0, f"{prefix}lora_alpha must be > 0")
        require(0 <= self.lora_dropout < 1, f"{prefix}lora_dropout must be in [0, 1)")
        require(bool(self.lora_target_modules), f"{prefix}lora_target_modules must name at least one module")


@dataclass
class LabelsConfig:
    """Generic-label generation: argmax(v_base - alpha * relu(v_reinforced - v_base))."""

    alpha: float = 5.0
    batch_size: int = 4  # blocks per forward pass
    precision: Precision = "auto"
    save_every: int = 8  # batches between saves of the labels made so far, for a rerun to resume (0: none)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`labels.`)."""
        require(self.alpha >= 0, f"{prefix}alpha must be >= 0 (the paper used 5)")
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        require(self.save_every >= 0, f"{prefix}save_every must be >= 0 (0 keeps no progress)")


@dataclass
class ForgetConfig:
    """How the unlearn stage forgets. `whp` is this project's method (the generic labels); `ga` (gradient
    ascent on the target) and `npo` (negative preference optimisation) are the usual baselines, for
    comparison. With `data.retain` set, ga and npo add a retain term: the cross-entropy on retain
    blocks paired with each batch, weighted by `retain_weight` (whp mixes retain blocks into its data)."""

    method: Method = "whp"
    npo_beta: float = 0.1  # NPO's inverse temperature
    retain_weight: float = 1.0  # ga and npo: weight of the retain term

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`forget.`)."""
        require(self.npo_beta > 0, f"{prefix}npo_beta must be > 0")
        require(self.retain_weight >= 0, f"{prefix}retain_weight must be >= 0")


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
    llm_passage_chars: int = 6000  # characters of target text per LLM request

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`anchors.`)."""
        for name in ("top", "min_count", "max_words", "alternatives", "contexts", "batch_size"):
            require(getattr(self, name) >= 1, f"{prefix}{name} must be >= 1")
        require(self.llm_passage_chars >= 200, f"{prefix}llm_passage_chars must be >= 200")


@dataclass
class ProbesEval:
    """`eval.probes`: familiarity by token probability, from probe files (JSONL prompt/answer); None skips a set."""

    target: Path | None = Path("data/harry_potter/probes_test.jsonl")  # facts of the target
    general: Path | None = Path("data/general/probes_test.jsonl")  # general knowledge, to keep
    related: Path | None = Path("data/related/probes_test.jsonl")  # knowledge of neighbouring domains, to keep
    max_new_tokens: int = 12  # greedy tokens after each probe (also read by the robustness part)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.probes.`)."""
        require(self.max_new_tokens >= 1, f"{prefix}max_new_tokens must be >= 1")


@dataclass
class CompletionsEval:
    """`eval.completions`: greedy completions of prompts about the target, graded by the offline judge."""

    prompts: Path | None = Path("data/harry_potter/completions_test.jsonl")  # JSONL prompt/references; None skips
    tokens: int = 24  # tokens after each completion prompt
    judge_terms: list[str] = field(default_factory=list)  # extra target terms for the offline judge

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.completions.`)."""
        require(self.tokens >= 1, f"{prefix}tokens must be >= 1")


@dataclass
class LLMJudgeEval:
    """`eval.llm_judge`: an optional LLM judge of the greedy completions, through an OpenAI-compatible
    endpoint (off while `url` is empty); the key is read from the environment variable named by
    `key_env`, never from a file."""

    url: str | None = None  # the API root
    model: str = "gpt-4o-mini"
    key_env: str = "OPENAI_API_KEY"  # the *name* of the variable holding the API key
    rubric: Path = Path("data/judge/rubric.md")  # the prompt template


@dataclass
class SamplingEval:
    """`eval.sampling`: sampled completions of the `eval.completions` prompts."""

    samples: int = 2  # sampled completions per prompt
    temperature: float = 0.8

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.sampling.`)."""
        require(self.samples >= 1, f"{prefix}samples must be >= 1")
        require(self.temperature > 0, f"{prefix}temperature must be > 0")


@dataclass
class KnowmemEval:
    """`eval.knowmem`: knowledge memorisation (MUSE's KnowMem), questions about the target."""

    qa: Path | None = Path("data/harry_potter/qa_test.jsonl")  # JSONL question/answer; None skips
    tokens: int = 16  # greedy answer tokens

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.knowmem.`)."""
        require(self.tokens >= 1, f"{prefix}tokens must be >= 1")


@dataclass
class RobustnessEval:
    """`eval.robustness` (Lynch et al.): the target facts asked indirectly, after a hint, and few-shot."""

    paraphrased: Path | None = Path("data/harry_potter/probes_paraphrased_test.jsonl")  # a probe file; None skips
    hint: Path | None = Path("data/harry_potter/hint.txt")  # text placed before each target probe; None skips
    fewshot: int = 3  # solved target probes placed before each probe (0 skips few-shot)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.robustness.`)."""
        require(self.fewshot >= 0, f"{prefix}fewshot must be >= 0 (0 skips few-shot)")


@dataclass
class VerbatimEval:
    """`eval.verbatim`: verbatim memorisation, greedy continuations of target excerpts against the true text."""

    excerpts: int = 32  # excerpts of the target, evenly spread (0 skips the part)
    prompt_tokens: int = 64
    continuation_tokens: int = 32

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.verbatim.`)."""
        require(self.excerpts >= 0, f"{prefix}excerpts must be >= 0 (0 skips verbatim memorisation)")
        require(self.prompt_tokens >= 1, f"{prefix}prompt_tokens must be >= 1")
        require(self.continuation_tokens >= 1, f"{prefix}continuation_tokens must be >= 1")


@dataclass
class MembershipEval:
    """`eval.membership`: membership inference, target passages against held-out text of its domain."""

    heldout: Path | None = Path("data/harry_potter/heldout.txt")  # never trained on: the non-members; None skips
    passage_tokens: int = 128
    max_passages: int = 48  # target passages scored (evenly spread); held-out ones all

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.membership.`)."""
        require(self.passage_tokens >= 8, f"{prefix}passage_tokens must be at least 8")
        require(self.max_passages >= 1, f"{prefix}max_passages must be >= 1")


@dataclass
class UtilityEval:
    """`eval.utility`: general ability as perplexity on general text, in blocks of `eval.block_length`."""

    general_text: Path | None = Path("data/general/heldout.txt")  # never trained on; None skips


@dataclass
class BenchmarksEval:
    """`eval.benchmarks`: standard benchmarks through lm-eval (installed separately)."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names, e.g. [arc_easy, boolq]
    limit: int | None = None  # examples per task (None: all)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.benchmarks.`)."""
        require(self.limit is None or self.limit >= 1, f"{prefix}limit must be >= 1")


@dataclass
class RelearningEval:
    """`eval.relearning`: fine-tune each model on a few target blocks (of `eval.block_length` tokens) and
    watch familiarity with the target probes come back."""

    steps: int = 8  # optimizer steps (batch 4 blocks)
    eval_every: int = 2  # steps between measurements
    blocks: int = 8  # target blocks, evenly spread
    learning_rate: float = 1e-4

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.relearning.`)."""
        require(self.steps >= 1, f"{prefix}steps must be >= 1")
        require(self.eval_every >= 1, f"{prefix}eval_every must be >= 1")
        require(self.blocks >= 1, f"{prefix}blocks must be >= 1")
        require(self.learning_rate > 0, f"{prefix}learning_rate must be > 0")


@dataclass
class EvalConfig:
    """What `whoharry eval` measures: one section per part, and the settings every part shares."""

    # the former flat keys, for the error naming an old key's new place
    RENAMED: ClassVar[dict[str, str]] = {
        "target_probes": "probes.target", "general_probes": "probes.general", "related_probes": "probes.related",
        "max_new_tokens": "probes.max_new_tokens", "completion_tokens": "completions.tokens",
        "completions": "completions.prompts",
        "judge_terms": "completions.judge_terms", "completion_samples": "sampling.samples",
        "sample_temperature": "sampling.temperature", "llm_judge_url": "llm_judge.url",
        "llm_judge_model": "llm_judge.model", "llm_judge_key_env": "llm_judge.key_env",
        "llm_judge_rubric": "llm_judge.rubric", "qa": "knowmem.qa", "qa_tokens": "knowmem.tokens",
        "paraphrased_probes": "robustness.paraphrased", "hint": "robustness.hint", "fewshot": "robustness.fewshot",
        "verbatim_excerpts": "verbatim.excerpts", "verbatim_prompt_tokens": "verbatim.prompt_tokens",
        "verbatim_continuation_tokens": "verbatim.continuation_tokens", "heldout_target": "membership.heldout",
        "membership_passage_tokens": "membership.passage_tokens",
        "membership_max_passages": "membership.max_passages", "general_text": "utility.general_text",
        "lm_eval_tasks": "benchmarks.tasks", "lm_eval_limit": "benchmarks.limit",
        "relearn_steps": "relearning.steps", "relearn_eval_every": "relearning.eval_every",
        "relearn_blocks": "relearning.blocks", "relearn_learning_rate": "relearning.learning_rate",
    }

    parts: list[EvalPart] = field(default_factory=lambda: list(EVAL_PARTS))
    # a model that never saw the target (folder, .gguf, alias or hub id; the base model's tokenizer is
    # used), scored beside the others: the mark forgetting should reach, and the PrivLeak reference
    reference: str | None = None
    # how LLM prompts name the target: the LLM judge's rubric and `anchors suggest --llm`
    target_name: str = "the Harry Potter books"
    max_samples: int | None = None  # cap every probe, prompt and question file at N lines (quick mode)
    batch_size: int = 16  # probes, prompts, questions or excerpts per forward pass; lm-eval's batch size
    block_length: int = 256  # tokens per block of the utility and relearning parts
    precision: Precision = "auto"
    probes: ProbesEval = field(default_factory=ProbesEval)
    completions: CompletionsEval = field(default_factory=CompletionsEval)
    llm_judge: LLMJudgeEval = field(default_factory=LLMJudgeEval)
    sampling: SamplingEval = field(default_factory=SamplingEval)
    knowmem: KnowmemEval = field(default_factory=KnowmemEval)
    robustness: RobustnessEval = field(default_factory=RobustnessEval)
    verbatim: VerbatimEval = field(default_factory=VerbatimEval)
    membership: MembershipEval = field(default_factory=MembershipEval)
    utility: UtilityEval = field(default_factory=UtilityEval)
    benchmarks: BenchmarksEval = field(default_factory=BenchmarksEval)
    relearning: RelearningEval = field(default_factory=RelearningEval)

    def check(self, prefix: str) -> None:
        """Range checks of the shared settings at `prefix` (`eval.`); each part's section checks its own."""
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        require(self.max_samples is None or self.max_samples >= 1, f"{prefix}max_samples must be >= 1")
        require(self.block_length >= 8, f"{prefix}block_length must be at least 8 tokens")
        unknown = [part for part in self.parts if part not in EVAL_PARTS]
        require(not unknown, f"{prefix}parts: unknown part {', '.join(map(repr, unknown))}; "
                             f"valid parts: {', '.join(EVAL_PARTS)}")


# `whoharry eval --quick`: every part on small slices, a few minutes on a laptop CPU
QUICK = {"eval.max_samples": 16, "eval.sampling.samples": 1, "eval.membership.max_passages": 16,
         "eval.verbatim.excerpts": 8, "eval.relearning.steps": 4, "eval.relearning.blocks": 4,
         "eval.benchmarks.limit": 20}


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


def model_key(model: ModelConfig, *, reading: bool) -> dict[str, Any]:
    """The model settings a stage's result depends on: where the read-only models sit never matters,
    and their weight dtype only to the stages that read them (`reading`)."""
    skipped = {"device_map"} if reading else {"device_map", "inference_dtype"}
    return {key: value for key, value in to_dict(model).items() if key not in skipped}
