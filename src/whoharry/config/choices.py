"""The choices of the configuration's `Literal` fields, shared by its sections."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # mixed precision of a stage; "auto": bf16 where fast
WeightDtype = Literal["fp32", "bf16", "fp16"]  # the dtype of read-only model weights
SaveDtype = Literal["auto", "fp32", "bf16", "fp16"]  # the dtype a stage's final/ is written in; auto: bf16 on a GPU
# experiment trackers a training stage also logs to, through accelerate (its names)
Tracker = Literal["tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio"]
Method = Literal["whp", "ga", "npo"]  # how the unlearn stage forgets
# what whp fits on the retain blocks: their own tokens, the base model's distribution (a KL to the base), or both
RetainLabels = Literal["text", "base", "both"]
InsideAnchors = Literal["mask", "translate"]  # predictions from inside an anchor: no label, or the translation's
LabelTargets = Literal["hard", "soft"]  # the unlearning targets: the generic argmax, or the generic distribution
Writer = Literal["base", "reinforced", "both"]  # which model writes the generated text (both: batches in turn)
# what a run makes from a target that is not the demo's: auto (where the files still point at the demo's),
# always, never
TargetFiles = Literal["auto", "always", "never"]
# the tensor types `whoharry export` writes a GGUF file in (llama.cpp's names)
GGUFType = Literal["f32", "f16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"]
MatchOrder = Literal["longest", "dictionary"]  # which key wins an overlap: the longest, or the first listed
# what a person's name becomes in a suggested dictionary: ordinary names of a pool, or the baseline's own words
NameSource = Literal["pool", "model"]
# The parts of the evaluation, in the order they run; `eval.parts` picks some of them.
EvalPart = Literal["probes", "completions", "sampling", "knowmem", "robustness", "prompts", "verbatim", "membership",
                   "utility", "latent", "quantization", "benchmarks", "relearning"]
# what the relearning attack fine-tunes on: target blocks, held-out text of the target's world never unlearned,
# or half of the target facts (the other half scored)
RelearnSource = Literal["target", "heldout", "facts"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
METHODS: tuple[str, ...] = get_args(Method)
EVAL_PARTS: tuple[str, ...] = get_args(EvalPart)
RELEARN_SOURCES: tuple[str, ...] = get_args(RelearnSource)
