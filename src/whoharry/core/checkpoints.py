"""What a rerun of a training stage resumes from: `checkpoints/step-N/` every `save_every` steps, and with
`select_best` the weights of the lowest validation loss so far.

A checkpoint is accelerate's state (weights, optimizer, RNG of every process), then `state.json` with the
scheduler, written last. The best weights live on disk, never only in memory: `checkpoints/best.safetensors`,
replaced (never rewritten in place) whenever the validation loss falls. Each checkpoint holds a hard link
to the best file of its time (a copy where links are not supported) and the best step and loss in its
`state.json`, so a resumed run continues from the best its checkpoint knew, and ends with the weights an
uninterrupted run picks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from whoharry.core import artifacts, distributed, fsdp

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)

BEST_FILE = "best.safetensors"
Trained = tuple[torch.nn.Module, torch.optim.Optimizer]  # what torch's own FSDP checkpoints: model, optimizer


@dataclass
class BestWeights:
    """The weights of the lowest validation loss so far, kept in `root/best.safetensors`: the trainable
    parameters of the unwrapped model (with LoRA, the adapters), or with sharded weights the gathered
    state dict. `step` is None until a loss is offered."""

    root: Path
    step: int | None = None
    loss: float = math.inf

    @property
    def path(self) -> Path:
        return self.root / BEST_FILE

    def offer(self, step: int, loss: float, acc: Accelerator, wrapped: torch.nn.Module) -> bool:
        """Keep the weights of `step` when `loss` is below every earlier one (a tie keeps the earlier; nan
        never wins). Every process takes part: sharded weights are gathered. Returns whether they were kept."""
        if not loss < self.loss:
            return False
        if distributed.sharded():
            state = fsdp.gathered(acc, wrapped)  # gathered into the main process
        elif acc.is_main_process:  # the others hold the same weights: one copy is written
            model = acc.unwrap_model(wrapped)
            state = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
        if acc.is_main_process:
            with artifacts.atomic_path(self.path) as tmp:  # a new file: a checkpoint's link keeps the old one
                save_file(_distinct(state), str(tmp))
        acc.wait_for_everyone()
        self.step, self.loss = step, loss
        return True

    def record(self, folder: Path) -> dict[str, Any] | None:
        """Link the best file into a checkpoint being written (main process) and return what its
        `state.json` says of it: {"step", "loss"}, or None before any."""
        if self.step is None:
            return None
        _link(self.path, folder / BEST_FILE)
        return {"step": self.step, "loss": self.loss}

    def restore(self, folder: Path, record: dict[str, Any] | None, acc: Accelerator) -> bool:
        """Take the best of a checkpoint being resumed (its file linked back into place by the main
        process); False, changing nothing, when the checkpoint lacks its file."""
        if record is None:
            self.clear(acc)
            return True
        if not (folder / BEST_FILE).is_file():
            return False
        if acc.is_main_process:
            _link(folder / BEST_FILE, self.path)
        self.step, self.loss = int(record["step"]), float(record["loss"])
        return True

    def clear(self, acc: Accelerator) -> None:
        """Forget the best (a fresh start): its file is deleted, checkpoints keep their own."""
        if acc.is_main_process:
            self.path.unlink(missing_ok=True)
        self.step, self.loss = None, math.inf

    def load_into(self, acc: Accelerator, wrapped: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Bring the best weights back: copied into the model one tensor at a time, or with sharded weights
        returned (main process; None in the others) for the final folder to be written from, the model in
        memory keeping the last step's weights."""
        acc.wait_for_everyone()
        if distributed.sharded():
            return load_file(str(self.path)) if acc.is_main_process else None
        params = dict(acc.unwrap_model(wrapped).named_parameters())
        with safe_open(str(self.path), "pt") as stored, torch.no_grad():
            for name in stored.keys():  # noqa: SIM118 (a safetensors file, not a dict)
                params[name].copy_(stored.get_tensor(name))
        return None


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One entry per tensor: tied weights of a gathered state dict share one, which safetensors stores once."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        if tensor.numel() == 0 or tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[name] = tensor
    return kept


def _link(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` (a copy where the file system has no links), replacing it."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def save(root: Path, step: int, run_key: str, acc: Accelerator, scheduler: LRScheduler, keep: int,
         best: BestWeights | None = None, trained: Trained | None = None) -> None:
    """`root/step-N/`: accelerate's state (weights, optimizer, RNG of every process), or with torch's own
    FSDP (`trained` given only then) the shards of the model and optimizer it names (`fsdp.save`); the
    best weights' link, then `state.json` with the scheduler last; every process takes part (sharded
    weights save in shards). The oldest checkpoints beyond `keep` are deleted."""
    final = root / f"step-{step}"
    tmp = artifacts.temporary_name(final)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if trained is not None:
        fsdp.save(tmp, *trained)
    else:
        acc.save_state(str(tmp), safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"step": step, "run_key": run_key, "processes": acc.num_processes, "scheduler": scheduler.state_dict(),
                 "torch_fsdp": trained is not None}
        if best is not None:
            state["best"] = best.record(tmp)
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        artifacts.publish(tmp, final)
        kept = sorted(complete(root), key=lambda item: item[0])
        for _, old in kept[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def complete(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of each `step-N` checkpoint whose `state.json` was written."""
    found = []
    if root.is_dir():
        for path in root.glob("step-*"):
            if (path / "state.json").is_file() and path.name.removeprefix("step-").isdigit():
                found.append((int(path.name.removeprefix("step-")), path))
    return found


def resume(root: Path, run_key: str, acc: Accelerator, scheduler: LRScheduler, best: BestWeights | None = None,
           trained: Trained | None = None) -> int:
    """Load the newest complete checkpoint made with the same settings and number of processes (with
    torch's own FSDP, into the model and optimizer `trained` names), and with `best` the best weights it
    knew; return its step (0 if none: then `best` starts empty)."""
    for step, path in sorted(complete(root), reverse=True):
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("run_key") != run_key or state.get("processes", 1) != acc.num_processes:
            log.info("ignoring %s: made with other settings or another number of processes", path)
            continue
        if state.get("torch_fsdp", False) != (trained is not None):  # shards of torch's FSDP, or accelerate's state
            log.info("ignoring %s: written by another kind of launch (torch's FSDP or not)", path)
            continue
        if best is not None and not best.restore(path, state.get("best"), acc):
            log.info("ignoring %s: the best weights it names are missing", path)
            continue
        if trained is not None:
            fsdp.load(path, *trained)
        else:
            acc.load_state(str(path))
        scheduler.load_state_dict(state["scheduler"])
        return step
    if best is not None:
        best.clear(acc)
    return 0


def clear(stage_dir: Path) -> None:
    """Delete `stage_dir/checkpoints` (errors ignored), once a stage's manifest is written."""
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
