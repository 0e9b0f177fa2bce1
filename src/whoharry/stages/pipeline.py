"""`whoharry run`: every stage in order; a stage already complete with the same settings is skipped.

The order is written here, once: reinforce → augment (when `augment.tokens` > 0) → labels → unlearn →
evaluate (the baselines `ga` and `npo` need no reinforced model and no labels: unlearn → evaluate). For a
target without files of its own (`stages.target_files`): split first, the dictionary and the probes right
after reinforce, and, with the made dictionary, the generated passages (`target_files.augment_budget`) and
the retain blocks' targets and the WiSE-FT mixing coefficient (`target_files.with_unlearning`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.config import Config, to_dict
from whoharry.core import artifacts, distributed
from whoharry.core.runlock import FLOCK, LOCK
from whoharry.errors import WhoharryError
from whoharry.stages import augment, dictionary, evaluate, labels, probes, reinforce, split, target_files, unlearn

if TYPE_CHECKING:
    from whoharry.stages.common import Stage

CONFIG_FILE = "config.yaml"  # the run's resolved config, beside its stages' folders
# What a run folder holds: the stages' folders (and the lock, its config); anything else means it is not a run.
RUN_ENTRIES = (split.NAME, reinforce.NAME, dictionary.NAME, augment.NAME, labels.NAME, unlearn.NAME, probes.NAME,
               "eval-reinforced", LOCK, FLOCK, CONFIG_FILE,
               *{evaluate.stage_dir_for(Path(), quick=q, ensemble=e, audit=a, muse=m).name
                 for q in (False, True) for e in (False, True) for a in (False, True) for m in (False, not a)})

log = logging.getLogger(__name__)


def check_out_dir(out: Path) -> None:
    """The output folder must be a folder, and either new, empty, or a whoharry run.

    Raises:
        WhoharryError: it is a file, or a folder holding anything else.
    """
    if out.exists() and not out.is_dir():
        raise WhoharryError(f"output folder {out} is a file; choose another --out")
    if out.is_dir():
        entries = sorted(entry.name for entry in out.iterdir())
        if entries and not any(name in RUN_ENTRIES for name in entries):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise WhoharryError(
                f"output folder {out} holds files that are not a whoharry run ({shown}); "
                "choose a new or empty folder for --out"
            )


def check_own_text(out: Path, *, named: bool, own_option: bool = False) -> None:
    """A run folder that `whoharry run --target FILE` made from a text of the user's own (it holds a finished
    `split/`) is worked on only with that text named (`named`: by --target, or data.target in a --config
    file or --set): without it, the shipped configuration would put the demo's target and files in its
    place. `own_option`: the command has a --target option of its own (run, eval).

    Raises:
        WhoharryError: the folder holds a finished split and nothing names the target.
    """
    manifest = artifacts.read_json_object(out / split.NAME / "manifest.json")
    if named or not manifest or manifest.get("status") != "complete":
        return
    target = (manifest.get("inputs") or {}).get("target", "its target")
    ways = [f"--target {target}" if own_option else f"--set data.target={target}"]
    if (out / CONFIG_FILE).is_file():
        ways.append(f"--config {out / CONFIG_FILE}")
    raise WhoharryError(f"{out} was made from {target} by `whoharry run --target`; name that text again "
                        f"({' or '.join(ways)}), or choose another --out")


def training_stages(cfg: Config) -> list[Stage]:
    """The training stages `whoharry run` goes through, in order, for the configured method."""
    if cfg.forget.method != "whp":
        return [unlearn]
    return [reinforce, augment, labels, unlearn] if augment.enabled(cfg) else [reinforce, labels, unlearn]


def run(cfg: Config, out: Path, *, progress: bool = True, explicit: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Reinforce, labels, unlearn, evaluate; returns the evaluation summary (figure -> value, by model:
    base, unlearned, and reference when configured). Under `accelerate launch` every process trains and
    the main process alone evaluates; the others return {}.

    For a target that is not the demo's, the files it needs and the user did not give (`explicit`: the
    dotted keys they set) are made from it first (`stages.target_files`): the held-out split before
    reinforce, the dictionary (from the reinforced model's gain) and the probes right after it, before the
    generated text, the labels or any unlearning, so that a target they cannot be made from fails early.

    Raises:
        WhoharryError: as the stages raise it (bad input, a diverged loss).
    """
    check_out_dir(out)
    unlearn.preflight(cfg)  # inputs that would otherwise fail only after hours of training
    made = target_files.plan(cfg, explicit)
    target_files.check_templates(cfg, made)
    for warning in made.warnings if distributed.is_main() else []:
        log.warning("%s", warning)
    if made.changes:  # before the dictionary and the questions, whose LLM prompts name it
        cfg = target_files.without_parts(cfg, made, cfg.data.target, explicit)
    target = cfg.data.target
    if made.split:
        cfg = target_files.with_split(cfg, split.run(cfg, out, progress=progress), made.replaced)
        split.check_heldout(cfg)  # a held-out text too short for membership inference fails before training
    if made.augment:
        cfg = _with_passages(cfg)
    cfg = target_files.with_unlearning(cfg, made)
    if made.retain_labels:
        log.info("made dictionary: the retain blocks fit %s (target_files.retain_labels; their own tokens alone: "
                 "--set forget.retain_labels=text)", cfg.forget.retain_labels)
    if made.wise_ft:
        log.info("made dictionary: the unlearned model is mixed with the base, WiSE-FT coefficient %g "
                 "(target_files.wise_ft; the trained weights: --set forget.wise_ft=1)", cfg.forget.wise_ft)
    for stage in training_stages(cfg):
        if stage is not reinforce and not made.done:
            cfg = _made_files(cfg, out, made, progress)
        stage.run(cfg, out, progress=progress)
    if not distributed.is_main():
        return {}
    artifacts.write_yaml(out / CONFIG_FILE, to_dict(cfg))  # the settings this run trained and evaluates with
    log.debug("resolved config: %s", out / CONFIG_FILE)
    eval_dir = evaluate.run(cfg, out, progress=progress, target=target)
    return evaluate.load_report(eval_dir)["summary"]


def _with_passages(cfg: Config) -> Config:
    """`cfg` writing the generated passages' budget for its training text `data.target`
    (`target_files.augment_budget` of its tokens, as the configured model's tokenizer reads them): the one
    place `run` and `made_config` take it from, so that both give the augment stage the same key."""
    from whoharry.core import models
    from whoharry.core.text import read_target

    tokenizer = models.load_tokenizer(models.resolve(cfg.model), cfg.model)
    tokens = len(tokenizer(read_target(cfg.data), add_special_tokens=False).input_ids)
    return target_files.with_augment(cfg, target_files.augment_budget(cfg, tokens))


def _made_files(cfg: Config, out: Path, made: target_files.Plan, progress: bool) -> Config:
    """The dictionary and the probes made from the target (`made` says which), and `cfg` pointing at them."""
    if made.dictionary:
        cfg = target_files.with_dictionary(cfg, dictionary.run(cfg, out, progress=progress))
    if made.probes:
        if distributed.is_main():
            probes.run(cfg, out, progress=progress)
        distributed.barrier()
        cfg = target_files.with_probes(cfg, out, made.replaced)
    made.done = True
    return cfg


def made_config(cfg: Config, out: Path, explicit: frozenset[str] = frozenset()) -> Config:
    """`cfg` as `run` evaluated it in the run folder `out`: for a target that is not the demo's, pointing at the
    split, dictionary and probes that run made from it (`target_files.plan`, the same `explicit` keys) and with
    the generated passages' budget it gave, so that a later `whoharry eval` scores that text's files, not the
    demo's; `cfg` itself for the demo's target.

    Raises:
        WhoharryError: a file the plan needs was never made in `out` (no finished `whoharry run --target`).
    """
    made = target_files.plan(cfg, explicit)
    if not made.changes:
        return cfg
    target = cfg.data.target
    for needed, name in ((made.split, split.NAME), (made.dictionary, dictionary.NAME), (made.probes, probes.NAME)):
        manifest = artifacts.read_manifest(out / name) if needed else None
        stale = name == split.NAME and manifest is not None and manifest.get("fingerprint") != split.key(cfg)
        if needed and (manifest is None or manifest.get("status") != "complete" or stale):
            raise WhoharryError(f"{out / name} holds nothing made from {target}"
                                f"{' (its split is of another text or other settings)' if stale else ''}: the files "
                                f"a target of your own needs are made by `whoharry run --target {target} --out "
                                f"{out}`; run it first")
    cfg = target_files.without_parts(cfg, made, target, explicit)
    if made.split:
        cfg = target_files.with_split(cfg, out / split.NAME, made.replaced)
    if made.augment:
        cfg = _with_passages(cfg)
    cfg = target_files.with_unlearning(cfg, made)
    if made.dictionary:
        cfg = target_files.with_dictionary(cfg, out / dictionary.NAME)
    if made.probes:
        cfg = target_files.with_probes(cfg, out, made.replaced)
    return cfg
