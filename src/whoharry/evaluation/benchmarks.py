"""Standard benchmarks (ARC, BoolQ, HellaSwag, PIQA, WinoGrande, ...) through lm-eval's Python API, run on
the model already loaded for the evaluation. lm-eval is optional: install it with `pip install lm-eval`;
its tasks fetch their data from the Hugging Face hub on first use."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from whoharry.errors import WhoharryError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# The figures taken from each task's results, best first: the length-normalised accuracy where a task
# has it, as the paper's benchmarks are usually reported.
METRICS = ("acc_norm,none", "acc,none", "exact_match,none")


def require_lm_eval() -> None:
    """Stop with one clear line when lm-eval is not installed (checked before any model work).

    Raises:
        WhoharryError: `lm_eval` cannot be imported.
    """
    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise WhoharryError(
            "eval.benchmarks.tasks needs lm-eval, which is not installed: run "
            "`.venv/bin/pip install lm-eval` (its tasks download their data from the Hugging Face hub)"
        ) from None


def run_tasks(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[str], limit: int | None,
              batch_size: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each task's main figure (`lmeval_{task}_{metric}`) and its 95% interval (± 1.96 standard errors).

    The model runs through lm-eval's `HFLM` wrapper; the figure is the first of `METRICS` the task reports
    (a score from 0 to 1 for accuracies), and the interval is given only when lm-eval reports its standard
    error.

    Args:
        limit: the most examples per task (None: all); batch_size: lm-eval's batch size.

    Returns:
        (figure name -> value, figure name -> [low, high]).

    Raises:
        WhoharryError: lm-eval is not installed, fails on a task (an unknown name, its data unreachable),
            returns no results for a task, or reports none of `METRICS` for it.
    """
    require_lm_eval()
    lm_eval = importlib.import_module("lm_eval")
    huggingface = importlib.import_module("lm_eval.models.huggingface")
    wrapped = huggingface.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        output = lm_eval.simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit, log_samples=False)
    except Exception as exc:  # lm-eval raises many kinds when a task's data cannot be fetched
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise WhoharryError(
            f"lm-eval could not run {', '.join(tasks)}: {type(exc).__name__}: {first_line} "
            "(an unknown task name, or its data not reachable from this machine)"
        ) from None
    figures: dict[str, float] = {}
    spans: dict[str, list[float]] = {}
    for task in tasks:
        results = output.get("results", {}).get(task)
        if not results:
            raise WhoharryError(f"lm-eval returned no results for task {task!r}")
        metric = next((m for m in METRICS if isinstance(results.get(m), int | float)), None)
        if metric is None:
            raise WhoharryError(f"lm-eval task {task!r} reported none of {', '.join(METRICS)}")
        name = metric.split(",")[0]
        key = f"lmeval_{task}_{name}"
        value = float(results[metric])
        figures[key] = value
        stderr = results.get(f"{name}_stderr,none")
        if isinstance(stderr, int | float):
            spans[key] = [value - 1.96 * stderr, value + 1.96 * stderr]
        log.info("lm-eval %s: %s = %.4f", task, name, value)
    return figures, spans
