"""WHP variants of the retrain-gap experiment: WHP with other labels, unlearn or augment settings, each
unlearning from whp's reinforced model (`ExperimentConfig.variants`, the method `whp+NAME`)."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

from whoharry.config import Config, validate
from whoharry.core import artifacts
from whoharry.core.settings import leaves, merge_mapping
from whoharry.errors import WhoharryError


def share_reinforced(whp: Path, folder: Path) -> None:
    """Give `folder` a copy of whp's finished reinforced model (replacing a stale one)."""
    if not (folder / "reinforce").is_dir() or \
            artifacts.stage_fingerprint(folder / "reinforce") != artifacts.stage_fingerprint(whp / "reinforce"):
        shutil.rmtree(folder / "reinforce", ignore_errors=True)
        # hard links where the file system has them: a stage replaces its files by rename, never in place
        shutil.copytree(whp / "reinforce", folder / "reinforce", copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _nested(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """Settings with dotted keys (`labels.alpha: 2`) as nested mappings (`labels: {alpha: 2}`).

    Raises:
        WhoharryError: a setting given twice (`labels: {alpha: 1}` beside `labels.alpha: 2`).
    """
    out: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        *sections, last = dotted.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise WhoharryError(f"variants.{name}: {section!r} is given as a value and as a section")
        if last in node:
            raise WhoharryError(f"variants.{name}: {dotted} is given twice")
        node[last] = value

    for dotted, value in leaves(settings):
        put(dotted, value)
    return out


VARIANT_SECTIONS = ("labels", "unlearn", "augment")  # what a variant may change: not whp's reinforced model
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def variant_config(cfg: Config, name: str, settings: Any) -> Config:
    """A copy of `cfg` with a variant's settings (nested or dotted keys of `VARIANT_SECTIONS`) merged in,
    checked.

    Raises:
        WhoharryError: a setting outside labels, unlearn and augment, an unknown key or a bad value.
    """
    if not VARIANT_NAME.fullmatch(name):
        raise WhoharryError(f"variants: the name {name!r} must be letters, digits, '_', '.' or '-' (a folder name)")
    if not isinstance(settings, dict) or not settings:
        raise WhoharryError(f"variants.{name}: give a mapping of run settings, got {settings!r}")
    nested = _nested(settings, name)
    outside = [key for key in nested if key not in VARIANT_SECTIONS]
    if outside:
        raise WhoharryError(f"variants.{name}: give settings of {', '.join(VARIANT_SECTIONS)} only, "
                            f"not {', '.join(outside)}")
    out = copy.deepcopy(cfg)
    try:
        merge_mapping(out, nested, Path.cwd())
        validate(out)
    except WhoharryError as exc:
        raise WhoharryError(f"variants.{name}: {exc}") from None
    return out
