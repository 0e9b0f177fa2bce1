"""The evaluation stage: the parts of `eval.parts` (see `evaluation.suite`) for the base model, the evaluated
(unlearned) model and a reference model when given, written to `report.json`, `report.md` and PNG plots.

The base model is evaluated first and stays loaded as the judge of the others' fluency; each other
model is loaded in turn; the benchmarks and relearning run last for each model, as relearning changes
the weights. Finished parts are reused from the cache unless `overwrite`.
"""

from __future__ import annotations

import dataclasses
import logging
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch

from whoharry.anchors.dictionary import load_anchors
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.config.choices import RELEARN_SOURCES
from whoharry.core import artifacts, corpus, models
from whoharry.core.text import read_target
from whoharry.evaluation import audit, benchmarks, card, intervals, judges, membership, plots, relearning, report
from whoharry.evaluation.report import load_report, render_markdown
from whoharry.evaluation.suite import Context, evaluate_model, finish_model, value_key, wanted
from whoharry.method.inference import InferenceTimeWHP
from whoharry.stages.common import Outcome, run_stage

log = logging.getLogger(__name__)

NAME = "eval"
__all__ = ["NAME", "load_report", "render_markdown", "run", "stage_dir_for"]


# A target probe is *specific* when replacing the target terms in its prompt by their generic
# translations at least halves the base model's probability of the answer: the answer then rests on
# knowledge of the target, not on the wording around it (as in "the Chosen" -> " One").
SPECIFIC_RATIO = 0.5


def add_specific_familiarity(results: dict[str, dict]) -> None:
    """Mark the target probes the base model answers from target knowledge, and add every model's mean
    P(answer) over them (`target_specific_p_answer`)."""
    base_records = results["base"]["samples"]["target"]
    specific = [r["p_control"] < SPECIFIC_RATIO * r["p_answer"] for r in base_records]
    if not any(specific):
        return
    for result in results.values():
        records = result["samples"]["target"]
        for record, flag in zip(records, specific, strict=True):
            record["specific"] = flag
        chosen = [r["p_answer"] for r, flag in zip(records, specific, strict=True) if flag]
        result["summary"]["target_specific_p_answer"] = sum(chosen) / len(chosen)
        result["summary"]["target_specific_probes"] = len(chosen)


def add_privleak(results: dict[str, dict]) -> None:
    """MUSE's PrivLeak of the unlearned model: (AUC − reference AUC) / reference AUC for each membership
    score; 0 is the reference's behaviour, negative is over-unlearning, positive is leakage."""
    unlearned, reference = results["unlearned"]["summary"], results["reference"]["summary"]
    for score in membership.SCORES:
        key = f"membership_auc_{score}"
        if key in unlearned and reference.get(key):
            unlearned[f"privleak_{score}"] = (unlearned[key] - reference[key]) / reference[key]


def relearning_summary(results: dict[str, dict], kind: str = "relearning") -> dict[str, Any] | None:
    """Every model's mean target P(answer) at each measurement of one relearning source (its sample `kind`,
    `evaluation.relearning.sample_kind`), with bootstrap intervals; None when no model has it."""
    curves = {name: r["samples"][kind] for name, r in results.items() if kind in r["samples"]}
    if not curves:
        return None
    first = next(iter(curves.values()))
    return {
        "steps": [point["step"] for point in first],
        "target_p_answer": {name: [sum(p["p_answer"]) / len(p["p_answer"]) for p in curve]
                            for name, curve in curves.items()},
        "intervals": {name: [list(intervals.interval(intervals.mean_parts(p["p_answer"]))) for p in curve]
                      for name, curve in curves.items()},
    }


def model_identity(path: Path) -> str:
    """What identifies a model folder's weights: its stage fingerprint, else the weight files' sizes and times."""
    manifest = artifacts.read_manifest(path.parent) or {}
    if manifest.get("fingerprint"):
        return f"{path}:{manifest['fingerprint']}"
    return f"{path}:{fingerprint(_file_stats(path))}"


def _file_stats(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, modification time in ns) of every file in `folder`, sorted."""
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())


# the settings naming a file a run may make from its target (stages.target_files), as the report names them
MADE = {"the held-out split's training text": "data.target", "the anchor dictionary": "data.anchors",
        "the familiarity probes": "eval.probes.target", "the completion prompts": "eval.completions.prompts",
        "the held-out text": "eval.membership.heldout", "the question/answer pairs": "eval.knowmem.qa"}


def target_record(cfg: Config, out: Path, target: Path | None = None) -> dict[str, Any]:
    """What the report says of the target: its file and size (`target`, the user's file, when the run trained
    on a split of it; else `data.target`), and each file the run folder `out` made from it, by what it is."""
    made = {}
    for what, dotted in MADE.items():
        value = attrgetter(dotted)(cfg)
        if value is not None and value.resolve().is_relative_to(out.resolve()):
            made[what] = str(value)
    generated = out / "augment" / "generated.txt"
    if cfg.augment.tokens > 0 and generated.is_file():
        made["the generated passages about the target's world"] = str(generated)
    target = target or cfg.data.target
    record = {"file": str(target), "bytes": corpus.source_bytes(target), "made": made}
    labels_stats = artifacts.read_json_object(out / "labels" / "stats.json") or {}
    if labels_stats.get("dictionary_mismatch"):
        record["dictionary_mismatch"] = (f"only {labels_stats['anchor_keys_found']} of the dictionary's keys "
                                         f"({labels_stats['anchor_keys_found_share']:.0%}) occur in the target")
    return record


def weights_identity(folder: Path) -> str:
    """A local model folder's weights by content, cheaply: its resolved path and every file's name, size and
    modification time (a converted GGUF folder's name holds the file's hash as well)."""
    return fingerprint([str(folder.resolve()), _file_stats(folder)])


def shared_identity(cfg: Config, folder: Path) -> str:
    """What the base model's parts kept across run folders depend on besides their settings: its weights
    (`weights_identity`), where and how it runs (device, GPU name, the dtype `eval.precision` resolves to
    there, `model.device_map`)."""
    device = models.default_device()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    dtype = models.autocast_dtype(cfg.eval.precision, device)
    return fingerprint([weights_identity(folder), device.type, gpu, str(dtype), cfg.model.device_map])


def eval_fingerprint(cfg: Config, model_path: Path, ensemble: bool = False) -> str:
    """The eval stage's fingerprint: every `eval` setting (input files by content), the seed, the
    anchors, the target, the baseline model's settings and the evaluated model's identity."""
    model = model_identity(model_path)
    return fingerprint({"eval": value_key(dataclasses.replace(cfg.eval, shared_cache=True)),  # a cache, not a setting
                        "seed": cfg.seed, "anchors": value_key(cfg.data.anchors),
                        "target": value_key(cfg.data.target), "baseline": model_key(cfg.model, reading=True),
                        "model": f"ensemble:{model}:{cfg.labels.alpha}" if ensemble else model})


def stage_dir_for(out: Path, *, quick: bool = False, ensemble: bool = False, audit: bool = False,
                  muse: bool = False) -> Path:
    """The folder an evaluation writes: `eval`, then `-muse` with `muse`, `-audit` with `audit`, `-quick` with
    `quick` and `-ensemble` with `ensemble` (`eval-quick`, `eval-muse-quick`, `eval-audit-quick-ensemble`)."""
    return out / (NAME + "-muse" * muse + "-audit" * audit + "-quick" * quick + "-ensemble" * ensemble)


def run(cfg: Config, out: Path, model_path: Path | None = None, *, progress: bool = True,
        stage_dir: Path | None = None, overwrite: bool = False, ensemble: bool = False,
        target: Path | None = None) -> Path:
    """Write `out/eval/` (or `stage_dir`): report.json, report.md and the plots, for the evaluated model
    (default: the unlearned one) beside the base model and the reference model when configured.
    With `ensemble`, `model_path` is a reinforced model and the evaluated model is inference-time WHP:
    the base and it combined by the label formula at every token (`method.inference`). Parts already
    computed with the same model and settings are read from `parts/` unless `overwrite`. `target` is the
    user's target file, for the report, when the run trains on a part of it (`stages.split`).

    Raises:
        WhoharryError: a missing model or evaluation file, lm-eval asked for but not installed, an
            unreadable LLM-judge rubric.
    """
    model_path = model_path or out / ("reinforce" if ensemble else "unlearn") / "final"
    stage_dir = stage_dir or out / NAME

    def body() -> Outcome:
        if wanted(cfg.eval, "benchmarks", None):  # fail before any model work
            benchmarks.require_lm_eval()
        if cfg.eval.llm_judge.url and wanted(cfg.eval, "completions", None):
            judges.read_rubric(cfg.eval.llm_judge.rubric)
        written = _evaluate(cfg, model_path, stage_dir, overwrite=overwrite, ensemble=ensemble, progress=progress,
                            target=target)
        return Outcome(inputs={"model": str(model_path), "baseline": written["models"]["base"],
                               **({"base_parts_read": written["base_parts_read"]} if "base_parts_read" in written
                                  else {})},
                       outputs=["report.json", "report.md", *written["plots"]], summary=written["summary"])

    done = run_stage(NAME, cfg, stage_dir, eval_fingerprint(cfg, model_path, ensemble), body,
                     overwrite=overwrite, collective=False)
    if not ensemble and model_path.resolve() == (out / "unlearn" / "final").resolve() and model_path.is_dir():
        card.write_card(model_path, cfg, out)  # the card's evaluation table and limits, as now measured
    return done


def _evaluate(cfg: Config, model_path: Path, stage_dir: Path, *, overwrite: bool, ensemble: bool,
              progress: bool, target: Path | None = None) -> dict[str, Any]:
    """Every model through the suite; report.json, report.md, the plots and metrics.jsonl written."""
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    uses_target = any(part in cfg.eval.parts for part in ("verbatim", "membership", "relearning"))
    base_id = f"{source.description}:{fingerprint(model_key(cfg.model, reading=True))}"
    ctx = Context(
        config=cfg, folder=stage_dir, overwrite=overwrite,
        control=load_anchors(cfg.data.anchors) if cfg.data.anchors.is_file() else None,
        member_text=read_target(cfg.data) if uses_target else None, progress=progress, base_id=base_id,
        shared_id=shared_identity(cfg, Path(source.path)) if cfg.eval.shared_cache and source.local else None,
    )
    base = models.load_model(source, cfg.model, inference=True)
    # the base model is the reference of like-with-like fluency: its completions of the translated prompts
    results = {"base": evaluate_model(base, tokenizer, ctx, "base", base_id, reference=True)}
    # the base model stays loaded as the judge of the other models' fluency
    if ensemble:
        others = [("unlearned", f"ensemble:{model_identity(model_path)}:{cfg.labels.alpha}",
                   lambda base=base: InferenceTimeWHP(base, models.load_folder(model_path, cfg=cfg.model),
                                                   cfg.labels.alpha))]
    else:
        others = [("unlearned", model_identity(model_path),
                   lambda: models.load_folder(model_path, cfg=cfg.model))]
    if cfg.eval.reference is not None:
        reference_cfg = dataclasses.replace(cfg.model, name=cfg.eval.reference, revision=None)
        others.append(("reference", f"{cfg.eval.reference}:{fingerprint(to_dict(reference_cfg))}",
                       lambda: models.load_model(models.resolve(reference_cfg), reference_cfg, inference=True)))
    for name, model_id, load in others:
        model = load()
        results[name] = evaluate_model(model, tokenizer, ctx, name, model_id, judge_model=base)
        finish_model(model, tokenizer, ctx, name, model_id, results[name])
        del model
    finish_model(base, tokenizer, ctx, "base", base_id, results["base"])
    del base
    if "reference" in results:
        add_privleak(results)
    if ctx.control is not None and "target" in results["base"]["samples"]:
        add_specific_familiarity(results)
    ratio_intervals = intervals.add_intervals(results)
    for result in results.values():
        result["intervals"].update(result.pop("benchmark_intervals", {}))
    written = {
        "models": {"base": source.description,
                   "unlearned": f"ensemble of the base and {model_path}" if ensemble else str(model_path),
                   **({"reference": cfg.eval.reference} if cfg.eval.reference else {})},
        "summary": {name: result["summary"] for name, result in results.items()},
        "intervals": {name: result["intervals"] for name, result in results.items()},
        "ratio_intervals": ratio_intervals,
        "samples": {name: result["samples"] for name, result in results.items()},
    }
    written["target"] = target_record(cfg, stage_dir.parent, target)
    if ctx.shared_reads:  # the base's parts measured by an earlier run in another folder
        written["base_parts_read"] = dict(ctx.shared_reads)
    for source in RELEARN_SOURCES:
        curves = relearning_summary(results, relearning.sample_kind(source))
        if curves:
            written[relearning.sample_kind(source)] = curves
    table = audit.audit_table(written)
    if table:
        written["audit"] = table
    collapse = report.utility_collapse(written["summary"])
    if collapse:  # report.md says so too, and leaves the privacy verdicts unread
        written["utility_collapse"] = collapse
        log.warning("eval: utility collapsed: %s; the membership AUC and PrivLeak verdicts are not read",
                    "; ".join(collapse))
    written["plots"] = [path.name for path in plots.write_plots(written, stage_dir)]
    artifacts.write_json(stage_dir / "report.json", written)
    artifacts.atomic_write_text(stage_dir / "report.md", report.render_markdown(written))
    artifacts.MetricsLog(stage_dir / "metrics.jsonl").log(**{
        f"{name}/{k}": v for name, result in results.items() for k, v in result["summary"].items()
    })
    return written
