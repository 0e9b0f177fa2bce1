"""Which files a run makes from its target, and which configured files it warns about (`target_files.make`).

The shipped configuration names the demo's files (`data/harry_potter/`): its anchor dictionary, probes,
completion prompts, questions and held-out text. A run whose target is another text must not apply them
to it. With `make: auto`, each of those settings that still names a demo file is replaced by a file the
run makes from the target: the held-out split (`stages.split`, and the target then trains on the rest),
the dictionary (`stages.dictionary`), the probes and completion prompts (`stages.probes`). A demo file
the user named explicitly (in their own config file or with `--set`) is kept, with one warning line that
it is about another target. The questions (KnowMem) are made too when an LLM endpoint is configured
(`target_files.llm_url`); without one, and for the robustness probes, which have no generated
counterpart, those parts are left out instead (or kept, with the warning, when named). Made probes need
the split, which is then made even when the held-out text is the user's own. With a made dictionary the
models also write passages about the target's world (`augment_budget`), unless `augment.tokens` is set,
the retain blocks fit `target_files.retain_labels`, unless `forget.retain_labels` is set, and the unlearned
model is moved back toward the base by `target_files.wise_ft`, unless `forget.wise_ft` is set
(`with_unlearning`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from whoharry.config import Config

log = logging.getLogger(__name__)

# where the demo's files lie: the checkout's data/harry_potter/ (absent from an installed wheel)
DEMO_DIR = Path(__file__).resolve().parents[3] / "data" / "harry_potter"
# the settings that name a file of the target's, with what a run makes in their place
DICTIONARY_KEYS = ("data.anchors",)
PROBE_KEYS = ("eval.probes.target", "eval.completions.prompts")
HELDOUT_KEYS = ("eval.membership.heldout",)
CLEARED_KEYS = ("eval.prompts.summary",)  # demo files nothing is made in place of: left out for another target
DROPPED_PARTS = {"knowmem": ("eval.knowmem.qa",), "robustness": ("eval.robustness.paraphrased", "eval.robustness.hint")}


def is_demo(path: Path | None) -> bool:
    """Whether `path` is one of the demo's files."""
    return path is not None and path.resolve().is_relative_to(DEMO_DIR.resolve())


@dataclass
class Plan:
    """What the run makes (`split`, `dictionary`, `probes`), the eval parts it leaves out, and warnings."""

    split: bool = False
    dictionary: bool = False
    probes: bool = False
    replaced: set[str] = field(default_factory=set)  # the dotted settings that take the made files
    dropped_parts: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # dotted settings set to None: a demo file nothing replaces
    warnings: list[str] = field(default_factory=list)
    augment: bool = False  # the models write passages about the target's world (`augment_budget`)
    retain_labels: bool = False  # the retain blocks fit `target_files.retain_labels` (`with_unlearning`)
    wise_ft: bool = False  # the unlearned model is mixed with the base by `target_files.wise_ft` (`with_unlearning`)
    done: bool = False  # the dictionary and probes are made (set by the pipeline)

    @property
    def any(self) -> bool:
        return self.split or self.dictionary or self.probes

    @property
    def changes(self) -> bool:
        """Whether the config changes at all: files made, parts dropped or settings cleared."""
        return self.any or bool(self.dropped_parts) or bool(self.cleared)


def plan(cfg: Config, explicit: set[str] | frozenset[str] = frozenset()) -> Plan:
    """The plan for `cfg`: with `make: auto`, a file is made for each group of settings that names a demo
    file the user did not name (`explicit`: the dotted keys set in their own config file or by `--set`),
    when the target is not the demo's; `always` makes them all; `never` none. A demo file named explicitly
    for another target gives a warning."""
    out = Plan()
    mode = cfg.target_files.make
    if not is_demo(cfg.data.target):  # nothing is made from a text in the demo summary's place
        out.warnings += _mismatches(cfg, [key for key in CLEARED_KEYS if key in explicit or mode == "never"])
        out.cleared = [key for key in CLEARED_KEYS if key not in explicit and mode != "never"
                       and is_demo(attrgetter(key)(cfg))]
    if mode == "never" or (mode == "auto" and is_demo(cfg.data.target)):
        if mode == "never" and not is_demo(cfg.data.target):
            out.warnings += _mismatches(cfg, [*DICTIONARY_KEYS, *PROBE_KEYS, *HELDOUT_KEYS])
        return out

    def replaced(keys: tuple[str, ...]) -> bool:
        """Whether to make the files of `keys`; the keys whose setting takes them go to `out.replaced`."""
        if mode == "always":
            out.replaced.update(keys)
            return True
        demo = [key for key in keys if is_demo(attrgetter(key)(cfg))]
        named = [key for key in demo if key in explicit]
        out.warnings += _mismatches(cfg, named)
        out.replaced.update(key for key in demo if key not in explicit)
        return any(key not in explicit for key in demo)

    out.dictionary = replaced(DICTIONARY_KEYS)
    out.augment = (out.dictionary and cfg.forget.method == "whp" and cfg.target_files.augment_share > 0
                   and "augment.tokens" not in explicit and cfg.augment.tokens == 0)
    # as augment.tokens: a value other than the shipped `text` is the user's own, wherever it was set
    out.retain_labels = (out.dictionary and cfg.forget.method == "whp" and bool(cfg.data.retain)
                         and "forget.retain_labels" not in explicit and cfg.forget.retain_labels == "text"
                         and cfg.target_files.retain_labels != "text")
    out.wise_ft = (out.dictionary and cfg.forget.method == "whp" and "forget.wise_ft" not in explicit
                   and cfg.forget.wise_ft == 1 and cfg.target_files.wise_ft != 1)
    out.probes = replaced(PROBE_KEYS)
    # the probes are cut from the split's texts too, and the target then trains on the split's training part
    out.split = replaced(HELDOUT_KEYS) or out.probes
    for part, keys in DROPPED_PARTS.items():
        if part not in cfg.eval.parts or not replaced(keys):
            continue
        if part == "knowmem" and cfg.target_files.llm_url:  # the endpoint writes the questions, beside the probes
            out.probes = out.split = True
        else:  # no generated file to take the demo's place
            out.dropped_parts.append(part)
            out.replaced -= set(keys)
    return out


def check_templates(cfg: Config, made: Plan) -> None:
    """Read the prompt templates of the files an endpoint will write (the dictionary with `anchors.llm_url`,
    the questions with `target_files.llm_url`), so that a bad one fails before any training.

    Raises:
        WhoharryError: a template missing or without its `{passage}` placeholder.
    """
    from whoharry.core.http import read_template
    from whoharry.stages import probes

    if made.dictionary and cfg.anchors.llm_url:
        read_template(cfg.anchors.llm_prompt, ("passage",))
    if made.probes and cfg.target_files.llm_url and "eval.knowmem.qa" in made.replaced:
        probes.qa_template(cfg)


def _mismatches(cfg: Config, keys: list[str]) -> list[str]:
    return [f"{key}: {attrgetter(key)(cfg)} is the demo's file, about another text than the target {cfg.data.target}"
            for key in keys if is_demo(attrgetter(key)(cfg))]


def with_split(cfg: Config, split_dir: Path, replaced: set[str]) -> Config:
    """`cfg` training on the split's training text, with its held-out text for membership inference where
    `replaced` says so (a held-out text of the user's own stays)."""
    from whoharry.stages import split

    out = copy.deepcopy(cfg)
    out.data.target = split_dir / split.TRAIN_FILE
    if "eval.membership.heldout" in replaced:
        out.eval.membership.heldout = split_dir / split.HELDOUT_FILE
    return out


def augment_budget(cfg: Config, text_tokens: int) -> int:
    """The generated tokens a run with a made dictionary adds to its training text of `text_tokens` tokens:
    `target_files.augment_share` of them, rounded. The paper added about a million generated tokens to the
    books (Eldan & Russinovich 2023, section 3); a dictionary made from a text holds only what the text names,
    and the models' passages carry the target's world beyond it."""
    return round(cfg.target_files.augment_share * text_tokens)


def with_augment(cfg: Config, tokens: int) -> Config:
    """`cfg` writing `tokens` tokens of passages about the target's world (`augment.tokens`)."""
    out = copy.deepcopy(cfg)
    out.augment.tokens = tokens
    return out


def with_unlearning(cfg: Config, made: Plan) -> Config:
    """`cfg` with the unlearning settings `made` says a run with a made dictionary takes: the retain blocks fit
    `target_files.retain_labels` (`forget.retain_labels`) and the unlearned model is mixed with the base by
    `target_files.wise_ft` (`forget.wise_ft`). On the Sherlock development prompts the retain texts' own
    tokens alone (`text`) let the completions of general prompts drift from the base model's; fitting the
    base model's distribution on them as well (`both`) drifts less and forgets more, and a quarter of the
    way back to the base in weight space then undoes about a third to a half of the drift left and keeps
    three quarters of the forgetting (docs/OWN_TEXT.md, "Fluency on general prompts")."""
    if not (made.retain_labels or made.wise_ft):
        return cfg
    out = copy.deepcopy(cfg)
    if made.retain_labels:
        out.forget.retain_labels = cfg.target_files.retain_labels
    if made.wise_ft:
        out.forget.wise_ft = cfg.target_files.wise_ft
    return out


def with_dictionary(cfg: Config, dictionary_dir: Path) -> Config:
    """`cfg` with the made dictionary."""
    from whoharry.stages import dictionary

    out = copy.deepcopy(cfg)
    out.data.anchors = dictionary_dir / dictionary.DICTIONARY_FILE
    return out


def with_probes(cfg: Config, out_dir: Path, replaced: set[str]) -> Config:
    """`cfg` evaluated on the made test probes and completion prompts, where `replaced` says so (a probe file
    of the user's own stays)."""
    from whoharry.stages import probes

    out = copy.deepcopy(cfg)
    if "eval.probes.target" in replaced:
        out.eval.probes.target = probes.path(out_dir, "probes", "test")
    if "eval.completions.prompts" in replaced:
        out.eval.completions.prompts = probes.path(out_dir, "completions", "test")
    if "eval.knowmem.qa" in replaced:
        out.eval.knowmem.qa = probes.path(out_dir, "qa", "test")
    return out


def without_parts(cfg: Config, made: Plan, target: Path, explicit: frozenset[str]) -> Config:
    """`cfg` without the eval parts `made` drops and the settings it clears (the demo's summary as a prompt
    attack: nothing makes one from a text), its LLM prompts naming the text `target` (`eval.target_name`)
    unless the user named it."""
    out = copy.deepcopy(cfg)
    out.eval.parts = [part for part in cfg.eval.parts if part not in made.dropped_parts]
    for key in made.cleared:
        section, _, name = key.rpartition(".")
        setattr(attrgetter(section)(out), name, None)
    if "eval.target_name" not in explicit:
        out.eval.target_name = f"the text {target.name}"
    return out
