"""`whoharry experiment retrain-gap`: how close does each unlearning method come to retraining?

The method's stated objective is to approximate the model retrained without the target. At small
scale that model can be built, and every method measured against it:

- X = R ∪ Y: Y is the forget text (a slice of one book), R the retain text (a slice of another);
- the *subject* is the base model fine-tuned on X; the *gold* model is the base fine-tuned on R alone,
  with the same recipe: what unlearning Y from the subject should ideally give;
- each method unlearns Y from the subject: WHP with a hand-written dictionary and with one from
  `whoharry anchors suggest`, gradient ascent and NPO (each with and without a retain term on R), and
  inference-time WHP (the two-model ensemble, no fine-tune);
- every model is measured, per seed, against the gold model (whoharry.experiments.gap_report).

A run folder holds `texts/`, then per seed `seed-S/{subject,gold,<method>}/` (ordinary whoharry stage
folders, skipped when complete), `seed-S/eval/` (the evaluation cache), `seed-S/costs.json` (CPU-seconds
per stage), and at the end `results.json`, `results.md`, `retrain_gap.png`, `config.yaml` and
`manifest.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whoharry.anchors import suggest
from whoharry.anchors.dictionary import load_anchors
from whoharry.config import Config, TrainConfig, as_overrides, fingerprint, merge_sources, to_dict, validate
from whoharry.core import artifacts, models, runlock
from whoharry.core.text import read_text
from whoharry.errors import WhoharryError
from whoharry.evaluation import suite
from whoharry.experiments import divergence, gap_report, variants
from whoharry.method.inference import InferenceTimeWHP
from whoharry.stages import augment, evaluate, labels, reinforce, unlearn

log = logging.getLogger(__name__)

METHODS = ("whp", "whp-generated", "ga", "ga-retain", "npo", "npo-retain", "ensemble")
MEASURED_PARTS = ["probes", "knowmem", "verbatim", "membership", "utility"]


@dataclass
class ExperimentConfig:
    """The retrain-gap experiment: the texts, the methods, the seeds, and the settings of every stage."""

    corpora: Path = Path("data/corpora")  # the books' folder (scripts/get_corpora.sh fills it)
    forget_book: str = "sherlock_holmes_adventures_pg1661.txt"
    forget_chars: int = 16_000  # Y: the forget book's first characters, whole paragraphs
    heldout_offset: int = 96_000  # held-out passages of the forget book: never trained on by any model
    heldout_chars: int = 8_000
    retain_book: str = "pride_and_prejudice_pg1342.txt"
    retain_chars: int = 16_000  # R: the retain book's first characters
    anchors: Path = Path("data/sherlock/anchors.yaml")  # the hand-written dictionary for WHP
    probes: Path = Path("data/sherlock/probes_test.jsonl")  # familiarity with the forget book
    qa: Path = Path("data/sherlock/qa_test.jsonl")  # KnowMem questions
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # WHP with other settings, each measured as the method `whp+NAME` on whp's reinforced model: NAME maps
    # to the `run` settings it changes (labels.*, unlearn.*, augment.*; nested or dotted keys)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    kl_passages: int = 8  # passages per text for the KL divergence to the gold model
    kl_passage_tokens: int = 128
    learn: TrainConfig = field(default_factory=TrainConfig)  # the subject's and the gold model's fine-tune
    run: Config = field(default_factory=Config)  # every other stage's settings (reinforce, labels, unlearn, eval)


# `--quick`: one seed on small slices, every method, short fine-tunes: a few minutes on a laptop CPU
QUICK = {
    "forget_chars": 3000,
    "heldout_chars": 2000,
    "retain_chars": 3000,
    "seeds": [0],
    "kl_passages": 3,
    "learn.epochs": 1,
    "run.unlearn.epochs": 1,
    "run.anchors.top": 20,
    "run.anchors.contexts": 1,
    "run.eval.max_samples": 4,
    "run.eval.membership.max_passages": 4,
    "run.eval.verbatim.excerpts": 3,
}


def load_experiment(path: Path | None, overrides: list[str] | None = None, *, quick: bool = False,
                    corpora: Path | None = None) -> ExperimentConfig:
    """Defaults < YAML file < the quick settings < `--set` overrides < `--corpora`."""
    exp = merge_sources(ExperimentConfig(), path, [*(as_overrides(QUICK) if quick else []), *(overrides or [])])
    if corpora is not None:
        exp.corpora = corpora.resolve()
    unknown = [m for m in exp.methods if m not in METHODS]
    checks = [
        (not unknown, f"methods: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(METHODS)}"),
        (bool(exp.methods), "methods must name at least one method"),
        (bool(exp.seeds), "seeds must name at least one seed"),
        (min(exp.forget_chars, exp.retain_chars, exp.heldout_chars) >= 1000,
         "forget_chars, retain_chars and heldout_chars must be at least 1000"),
        (exp.heldout_offset >= exp.forget_chars, "heldout_offset must lie past the forget slice (>= forget_chars)"),
        (exp.kl_passages >= 1 and exp.kl_passage_tokens >= 8, "kl_passages must be >= 1, kl_passage_tokens >= 8"),
        ("ensemble" not in exp.methods or "whp" in exp.methods or "whp-generated" in exp.methods,
         "the ensemble method needs whp's reinforced model: add whp to methods"),
    ]
    for ok, message in checks:
        if not ok:
            raise WhoharryError(message)
    for book in (exp.forget_book, exp.retain_book):
        if not (exp.corpora / book).is_file():
            raise WhoharryError(f"book not found: {exp.corpora / book}; run scripts/get_corpora.sh, or pass "
                                "--corpora with the folder that holds it")
    for path, what in ((exp.anchors, "anchor dictionary"), (exp.probes, "probe file"), (exp.qa, "question file")):
        if not path.is_file():
            raise WhoharryError(f"{what} not found: {path}")
    validate(exp.run)
    validate(dataclasses.replace(exp.run, reinforce=exp.learn))
    for name in exp.variants:
        variants.variant_config(exp.run, name, exp.variants[name])
    return exp


@dataclass
class Texts:
    """The experiment's text files, written once per run folder by `prepare_texts`."""

    forget: Path  # Y
    heldout: Path  # passages of the forget book outside Y
    retain: Path  # R
    union: Path  # X = R ∪ Y


def unwrap(text: str) -> str:
    """One line per paragraph: the books are hard-wrapped, and names must not break across lines."""
    return re.sub(r"[ \t]*(?<!\n)\n(?!\n)[ \t]*", " ", text.replace("\r\n", "\n"))


def cut(text: str, start: int, chars: int) -> str:
    """About `chars` characters of whole paragraphs from `start` on."""
    if start:
        start = text.find("\n\n", start) + 2 if text.find("\n\n", start) >= 0 else start
    piece = text[start : start + chars]
    end = piece.rfind("\n\n")
    return (piece[:end] if end > chars // 2 else piece).strip() + "\n"


def prepare_texts(exp: ExperimentConfig, folder: Path) -> Texts:
    """Cut Y, R, X = R ∪ Y and the held-out passages from the books into `folder` (an unchanged file is
    not rewritten, so the stages that read it stay complete).

    Raises:
        WhoharryError: a book is unreadable or too short for `heldout_offset`.
    """
    forget_book = unwrap(read_text(exp.corpora / exp.forget_book, "forget book"))
    retain_book = unwrap(read_text(exp.corpora / exp.retain_book, "retain book"))
    if exp.heldout_offset + exp.heldout_chars > len(forget_book):
        raise WhoharryError(f"the forget book has {len(forget_book)} characters; lower heldout_offset")
    texts = Texts(*(folder / f"{name}.txt" for name in ("forget", "heldout", "retain", "union")))
    forget, retain = cut(forget_book, 0, exp.forget_chars), cut(retain_book, 0, exp.retain_chars)
    for path, text in ((texts.forget, forget), (texts.heldout, cut(forget_book, exp.heldout_offset, exp.heldout_chars)),
                       (texts.retain, retain), (texts.union, f"{retain}\n{forget}")):
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged files keep their stages
            artifacts.atomic_write_text(path, text)
    return texts


class Costs:
    """CPU-seconds per stage, kept in a JSON file with the key of the settings that produced them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stored: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def measure(self, name: str, key: str, action: Callable[[], Any]) -> Any:
        """Run `action`; record its CPU time under `name` unless already recorded with this `key`
        (a stage that was complete is skipped by `action`, and keeps the time it took when it ran)."""
        began, wall = time.process_time(), time.perf_counter()
        result = action()
        if self.stored.get(name, {}).get("key") != key:
            self.stored[name] = {"key": key, "cpu_seconds": round(time.process_time() - began, 2),
                                 "wall_seconds": round(time.perf_counter() - wall, 2)}
            artifacts.write_json(self.path, self.stored)
        return result

    def of(self, *names: str) -> float:
        return sum(self.stored[name]["cpu_seconds"] for name in names)


def stage_config(exp: ExperimentConfig, texts: Texts, seed: int) -> Config:
    """The run settings for unlearning Y: seed, texts and dictionary set; the model is set per use."""
    cfg = copy.deepcopy(exp.run)
    cfg.seed = seed
    cfg.data.target = texts.forget
    cfg.data.anchors = exp.anchors
    cfg.data.retain = [texts.retain]
    cfg.eval.parts = list(MEASURED_PARTS)
    cfg.eval.probes.target, cfg.eval.knowmem.qa, cfg.eval.membership.heldout = exp.probes, exp.qa, texts.heldout
    cfg.eval.probes.related = None
    cfg.eval.reference = None
    return cfg


def with_model(cfg: Config, model: Path, **data: Any) -> Config:
    """A copy of `cfg` whose base model is the folder `model`, with `data.*` fields replaced."""
    out = copy.deepcopy(cfg)
    out.model = dataclasses.replace(cfg.model, name=str(model), revision=None)
    for key, value in data.items():
        setattr(out.data, key, value)
    return out


def train_models(exp: ExperimentConfig, cfg: Config, texts: Texts, folder: Path, costs: Costs,
                 progress: bool) -> dict[str, Path]:
    """The subject (base + X) and gold (base + R) models, fine-tuned with the same recipe."""
    trained = {}
    for name, text in (("subject", texts.union), ("gold", texts.retain)):
        learn = copy.deepcopy(cfg)
        learn.data.target = text
        learn.reinforce = exp.learn
        key = reinforce.key(learn)
        costs.measure(name, key, lambda learn=learn, name=name: reinforce.run(learn, folder / name, progress=progress))
        trained[name] = folder / name / "reinforce" / "final"
    return trained


def unlearn_all(exp: ExperimentConfig, cfg: Config, subject: Path, folder: Path, costs: Costs,
                progress: bool) -> dict[str, dict[str, Any]]:
    """Every method's model, with the stages whose CPU time it cost."""
    on_subject = with_model(cfg, subject)
    made: dict[str, dict[str, Any]] = {}
    needs_whp = bool(exp.variants) or any(m in exp.methods for m in ("whp", "whp-generated", "ensemble"))
    if needs_whp:
        whp = folder / "whp"
        costs.measure("whp/reinforce", reinforce.key(on_subject),
                      lambda: reinforce.run(on_subject, whp, progress=progress))
    if "whp" in exp.methods:
        made["whp"] = _whp(on_subject, folder / "whp", "whp", costs, progress)
    if "whp-generated" in exp.methods:
        generated = folder / "whp-generated"
        dictionary = generated / "anchors-suggested.yaml"
        key = fingerprint({"reinforce": artifacts.stage_fingerprint(whp / "reinforce"),
                           "anchors": to_dict(cfg.anchors), "model": str(subject)})
        if costs.stored.get("whp-generated/suggest", {}).get("key") != key or not dictionary.is_file():
            generated.mkdir(parents=True, exist_ok=True)
            costs.stored.pop("whp-generated/suggest", None)
            costs.measure("whp-generated/suggest", key, lambda: suggest.suggest_file(
                on_subject, whp / "reinforce" / "final", dictionary, general=[cfg.data.retain[0]], progress=progress))
        variants.share_reinforced(whp, generated)
        entry = _whp(with_model(cfg, subject, anchors=dictionary), generated, "whp-generated", costs, progress)
        entry["stages"] = ["whp/reinforce", "whp-generated/suggest", *entry["stages"][1:]]
        made["whp-generated"] = entry
    for name in exp.variants:
        method, run_cfg = f"whp+{name}", variants.variant_config(on_subject, name, exp.variants[name])
        variants.share_reinforced(whp, folder / method)
        extra = []
        if augment.enabled(run_cfg):
            costs.measure(f"{method}/augment", augment.key(run_cfg, folder / method),
                          lambda c=run_cfg, m=method: augment.run(c, folder / m, progress=progress))
            extra = [f"{method}/augment"]
        entry = _whp(run_cfg, folder / method, method, costs, progress)
        entry["stages"] = ["whp/reinforce", *extra, *entry["stages"][1:]]
        made[method] = entry
    for method in ("ga", "ga-retain", "npo", "npo-retain"):
        if method not in exp.methods:
            continue
        run_cfg = copy.deepcopy(on_subject)
        run_cfg.forget.method = method.split("-")[0]
        run_cfg.unlearn.select_best = False  # the lowest held-out cross-entropy is what ga and npo move away from
        if not method.endswith("-retain"):
            run_cfg.data.retain = []
        key = unlearn.key(run_cfg, folder / method)
        costs.measure(f"{method}/unlearn", key,
                      lambda c=run_cfg, m=method: unlearn.run(c, folder / m, progress=progress))
        made[method] = {"model": folder / method / "unlearn" / "final", "stages": [f"{method}/unlearn"]}
    if "ensemble" in exp.methods:
        made["ensemble"] = {"model": whp / "reinforce" / "final", "stages": ["whp/reinforce"], "ensemble": True}
    return made


def _whp(cfg: Config, out: Path, name: str, costs: Costs, progress: bool) -> dict[str, Any]:
    costs.measure(f"{name}/labels", labels.key(cfg, out),
                  lambda: labels.run(cfg, out, progress=progress))
    costs.measure(f"{name}/unlearn", unlearn.key(cfg, out),
                  lambda: unlearn.run(cfg, out, progress=progress))
    return {"model": out / "unlearn" / "final", "stages": ["whp/reinforce", f"{name}/labels", f"{name}/unlearn"]}


def measure_seed(exp: ExperimentConfig, cfg: Config, trained: dict[str, Path], made: dict[str, dict[str, Any]],
                 texts: Texts, folder: Path, progress: bool) -> dict[str, dict[str, float]]:
    """Every model's figures: the suite's parts, and the KL divergence to the gold model on Y, on held-out
    passages of Y's book and on R."""
    eval_cfg = with_model(cfg, trained["subject"])
    source = models.resolve(eval_cfg.model)
    tokenizer = models.load_tokenizer(source, eval_cfg.model)
    ctx = suite.Context(config=eval_cfg, folder=folder / "eval", overwrite=False, control=load_anchors(exp.anchors),
                        member_text=read_text(texts.forget), progress=progress)
    kl_sets = {name: divergence.passages(read_text(path), tokenizer, exp.kl_passage_tokens, exp.kl_passages)
               for name, path in (("forget", texts.forget), ("heldout", texts.heldout), ("retain", texts.retain))}
    gold = models.load_folder(trained["gold"], cfg=eval_cfg.model).requires_grad_(False)
    gold_id = evaluate.model_identity(trained["gold"])
    subject_model = None
    figures: dict[str, dict[str, float]] = {}
    entries = [("gold", {"model": trained["gold"]}), ("subject", {"model": trained["subject"]}), *made.items()]
    for name, entry in entries:
        model_id = evaluate.model_identity(entry["model"])
        if entry.get("ensemble"):
            subject_model = subject_model or models.load_folder(trained["subject"], cfg=eval_cfg.model)
            model = InferenceTimeWHP(subject_model, models.load_folder(entry["model"], cfg=eval_cfg.model),
                                     cfg.labels.alpha).requires_grad_(False)
            model_id = f"ensemble:{model_id}:{evaluate.model_identity(trained['subject'])}:{cfg.labels.alpha}"
        else:
            model = gold if name == "gold" else models.load_folder(entry["model"], cfg=eval_cfg.model)
            model.requires_grad_(False)
        result = suite.evaluate_model(model, tokenizer, ctx, name, model_id)
        summary = dict(result["summary"])
        kl_key = fingerprint({"model": model_id, "gold": gold_id, "passages": kl_sets, "precision": cfg.eval.precision})
        summary.update(_cached(folder / "eval" / "kl" / f"{name}.json", kl_key, lambda m=model, name=name: {
            f"kl_{set_name}": divergence.mean_kl(m, gold, ids, cfg.eval.precision, cfg.eval.batch_size,
                                                 desc=f"{name} KL on {set_name}", progress=ctx.progress)
            for set_name, ids in kl_sets.items()}))
        summary["models_per_token"] = getattr(model, "models_per_token", 1)
        figures[name] = summary
        if model is not gold:
            del model
    return figures


def _cached(path: Path, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    stored = artifacts.read_cached(path, key)
    if stored is not None:
        return stored["figures"]
    figures = compute()
    artifacts.write_cached(path, key, {"figures": figures})
    return figures


def run(exp: ExperimentConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """The whole experiment into `out`; finished stages and measurements are reused."""
    began = time.perf_counter()
    texts = prepare_texts(exp, out / "texts")
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in exp.seeds:
        folder = out / f"seed-{seed}"
        costs = Costs(folder / "costs.json")
        cfg = stage_config(exp, texts, seed)
        log.info("experiment: seed %d: subject and gold models", seed)
        trained = train_models(exp, cfg, texts, folder, costs, progress)
        log.info("experiment: seed %d: unlearning with %s", seed, ", ".join(exp.methods))
        made = unlearn_all(exp, cfg, trained["subject"], folder, costs, progress)
        figures = measure_seed(exp, cfg, trained, made, texts, folder, progress)
        spent = {"gold": costs.of("gold"), "subject": costs.of("subject"),
                 **{name: costs.of(*entry["stages"]) for name, entry in made.items()}}
        for name, seconds in spent.items():
            figures[name]["cpu_seconds"] = seconds
        per_seed[seed] = figures
    results = gap_report.summarise(per_seed, exp)
    artifacts.write_json(out / "results.json", results)
    artifacts.atomic_write_text(out / "results.md", gap_report.render(results))
    gap_report.plot(results, out / "retrain_gap.png")
    record = artifacts.StageRecord(
        stage="experiment", fingerprint=fingerprint(to_dict(exp)),
        inputs={"forget": str(exp.corpora / exp.forget_book), "retain": str(exp.corpora / exp.retain_book)},
        outputs=["results.json", "results.md", "retrain_gap.png"], seed=exp.seeds[0],
        seconds=time.perf_counter() - began,
        summary={"seeds": exp.seeds, "methods": [*exp.methods, *(f"whp+{v}" for v in exp.variants)]},
    )
    artifacts.write_stage(out, record, to_dict(exp))
    return results


def run_in(exp: ExperimentConfig, folder: Path, *, progress: bool = True) -> Path:
    """`run` in `folder` (created), holding its lock; returns the path of results.md.

    Raises:
        WhoharryError: `folder` is a file, another process holds it, or a stage fails on bad input.
    """
    if folder.is_file():
        raise WhoharryError(f"output folder {folder} is a file; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    with runlock.hold(folder):
        run(exp, folder, progress=progress)
    return folder / "results.md"
