"""The `eval` section of the configuration: one dataclass per part of the evaluation, and the settings
every part shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from whoharry.config.choices import (
    EVAL_PARTS,
    GGUF_TYPES,
    RELEARN_SOURCES,
    EvalPart,
    GGUFType,
    Precision,
    RelearnSource,
)
from whoharry.core.settings import require


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
    # prompts of general text (no target terms), whose completions give the general-prompt fluency; None skips
    general_prompts: Path | None = Path("data/general/completions_test.jsonl")
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
    # the file's first N questions, solved, before each other one, and not scored (MUSE's in-context
    # examples); 0: two general-knowledge questions instead
    shots: int = 0

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.knowmem.`)."""
        require(self.tokens >= 1, f"{prefix}tokens must be >= 1")
        require(self.shots >= 0, f"{prefix}shots must be >= 0 (0: two general-knowledge examples)")


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
class PromptsEval:
    """`eval.prompts` (Lynch et al. 2024, section 4; Anil et al. 2024, many-shot jailbreaking): the target probes
    inside adversarial prompts: after a permissive system prompt, after a short summary of the target, and
    after many solved probes."""

    preamble: Path | None = Path("data/attacks/preamble.txt")  # a jailbreak preamble before each probe; None skips
    summary: Path | None = Path("data/harry_potter/summary.txt")  # a summary of the target before each; None skips
    shots: int = 16  # solved target probes before each probe (many-shot; 0 skips)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.prompts.`)."""
        require(self.shots >= 0, f"{prefix}shots must be >= 0 (0 skips the many-shot prompts)")


@dataclass
class LatentEval:
    """`eval.latent` (nostalgebraist 2020, the logit lens; Lynch et al. 2024, section 4): each layer's hidden
    state at the end of a target probe read through the final norm and the output head."""

    top: int = 10  # an answer ranked this high at some layer counts as found there

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.latent.`)."""
        require(self.top >= 1, f"{prefix}top must be >= 1")


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
class QuantizationEval:
    """`eval.quantization` (Zhang et al. 2025): the model's weights round-tripped through GGUF quantization,
    as `whoharry export` writes them, and the target and general probes scored again."""

    types: list[GGUFType] = field(default_factory=lambda: ["q8_0", "q4_0"])  # one round trip each

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.quantization.`)."""
        require(bool(self.types), f"{prefix}types must name at least one of {', '.join(GGUF_TYPES)}")
        require(len(set(self.types)) == len(self.types), f"{prefix}types names a type twice")


@dataclass
class MembershipEval:
    """`eval.membership`: membership inference, target passages against held-out text of its domain."""

    heldout: Path | None = Path("data/harry_potter/heldout.txt")  # never trained on: the non-members; None skips
    passage_tokens: int = 128
    max_passages: int = 48  # target passages scored (evenly spread); held-out ones all
    k_fraction: float = 0.2  # share of a passage's least likely tokens the Min-K% scores average (MUSE: 0.4)

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.membership.`)."""
        require(self.passage_tokens >= 8, f"{prefix}passage_tokens must be at least 8")
        require(self.max_passages >= 1, f"{prefix}max_passages must be >= 1")
        require(0 < self.k_fraction <= 1, f"{prefix}k_fraction must be in (0, 1]")


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
    """`eval.relearning`: fine-tune each model on a few blocks (of `eval.block_length` tokens) and watch
    familiarity with the target probes come back, once per source: `target` blocks of the target text,
    `heldout` blocks of `eval.membership.heldout` (text of the target's world that was never unlearned), or
    `facts`: half the target probes written out as statements, the other half scored."""

    sources: list[RelearnSource] = field(default_factory=lambda: ["target"])  # one fine-tune each
    steps: int = 8  # optimizer steps (batch 4 blocks)
    eval_every: int = 2  # steps between measurements
    blocks: int = 8  # target blocks, evenly spread
    learning_rate: float = 1e-4

    def check(self, prefix: str) -> None:
        """Range checks of the section found at `prefix` (`eval.relearning.`)."""
        require(bool(self.sources), f"{prefix}sources must name at least one of {', '.join(RELEARN_SOURCES)}")
        require(len(set(self.sources)) == len(self.sources), f"{prefix}sources names a source twice")
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
    # keep the base model's parts in $WHOHARRY_CACHE/eval/ and reuse them in any run folder: same model
    # weights, settings, input files and whoharry code
    shared_cache: bool = True
    probes: ProbesEval = field(default_factory=ProbesEval)
    completions: CompletionsEval = field(default_factory=CompletionsEval)
    llm_judge: LLMJudgeEval = field(default_factory=LLMJudgeEval)
    sampling: SamplingEval = field(default_factory=SamplingEval)
    knowmem: KnowmemEval = field(default_factory=KnowmemEval)
    robustness: RobustnessEval = field(default_factory=RobustnessEval)
    prompts: PromptsEval = field(default_factory=PromptsEval)
    latent: LatentEval = field(default_factory=LatentEval)
    verbatim: VerbatimEval = field(default_factory=VerbatimEval)
    membership: MembershipEval = field(default_factory=MembershipEval)
    utility: UtilityEval = field(default_factory=UtilityEval)
    quantization: QuantizationEval = field(default_factory=QuantizationEval)
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
# `whoharry eval --audit`: the parts that attack the unlearned model, and every relearning source
AUDIT_PARTS: tuple[str, ...] = ("probes", "robustness", "prompts", "latent", "quantization", "relearning")
AUDIT = {"eval.parts": list(AUDIT_PARTS), "eval.relearning.sources": list(RELEARN_SOURCES)}
# `whoharry eval --muse`: MUSE's criteria C1-C4 with its lengths and thresholds (Shi et al. 2024; repository
# swj0419/muse_bench, eval.py and metrics/; docs/EVAL.md, "MUSE's figures"): VerbMem on 128-token
# continuations of ~1024-token prompts (its verbmem/forget.json), 100 excerpts; KnowMem with 32 answer tokens
# after 10 solved questions (its knowmem/*_icl.json); PrivLeak by Min-40% over passages of up to 2048 tokens
# (its privleak/*.json), 100 of the target's
MUSE_PARTS: tuple[str, ...] = ("verbatim", "knowmem", "membership", "utility")
MUSE = {"eval.parts": list(MUSE_PARTS), "eval.verbatim.excerpts": 100, "eval.verbatim.prompt_tokens": 1024,
        "eval.verbatim.continuation_tokens": 128, "eval.knowmem.tokens": 32, "eval.knowmem.shots": 10,
        "eval.membership.passage_tokens": 2048, "eval.membership.max_passages": 100,
        "eval.membership.k_fraction": 0.4}
