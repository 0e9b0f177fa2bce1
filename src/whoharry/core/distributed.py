"""Several processes at once (`accelerate launch` or `torchrun`): who does what, and how they agree.

Every process runs the same command. The training stages run data-parallel through accelerate (DDP,
FSDP or DeepSpeed ZeRO-3, as the accelerate config file says); the labels stage gives each process
every N-th batch of blocks and the main process merges the shards in block order. Only the main
process writes a stage's folder and holds the run lock; the others wait at a barrier. In a single
process every function here is a plain call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list

from whoharry.errors import WhoharryError

# how long a process waits at a barrier: the main process alone makes a run's split, dictionary and generated
# passages while the others wait, which on a long text passes NCCL's default of 10 minutes
TIMEOUT = timedelta(hours=6)


def state() -> PartialState:
    """The process group (started on first use, waiting up to `TIMEOUT` at a barrier); on a machine without a
    GPU, processes talk over gloo."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)


def world() -> int:
    """The number of processes (1 without a launcher)."""
    return state().num_processes


def rank() -> int:
    """This process's index, 0 to `world() - 1` (0 is the main process)."""
    return state().process_index


def is_main() -> bool:
    """Whether this is the main process (the one that writes stage folders)."""
    return state().is_main_process


def device() -> torch.device:
    """This process's device: its own GPU under a launcher, else the GPU if any, else the CPU."""
    return state().device


def sharded() -> bool:
    """Whether the weights are split across processes (FSDP or DeepSpeed ZeRO), not copied (DDP)."""
    return state().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) or torch_fsdp()


def torch_fsdp() -> bool:
    """Whether the training loop shards the model itself with torch's FSDP 2 (`core.fsdp`): the launcher
    asked for FSDP (`ACCELERATE_USE_FSDP`, which `accelerate launch --use_fsdp` sets) and accelerate runs
    the processes as plain multi-CPU ones, as it does on a machine without a GPU."""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return asked and world() > 1 and state().distributed_type == DistributedType.MULTI_CPU


def barrier() -> None:
    """Wait until every process reaches this point (a no-op in one process)."""
    if world() > 1:
        state().wait_for_everyone()


def share(value: Any) -> Any:
    """The main process's `value`, in every process (it must pickle; returned as is in one process)."""
    if world() == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


@contextlib.contextmanager
def main_holds(make: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
    """Enter a context in the main process only (the run lock); the others go on once it is held, and
    stop with the main process's message when it cannot be. Each stage ends at a barrier, so the main
    process leaves the context only after the others are done.

    Raises:
        WhoharryError: `make()` or entering its context raised one in the main process; every process
            raises it, with the same message.
    """
    if world() == 1:
        with make():
            yield
        return
    with contextlib.ExitStack() as stack:
        problem = None
        if is_main():
            try:
                stack.enter_context(make())
            except WhoharryError as exc:
                problem = str(exc)
        problem = share(problem)
        if problem is not None:
            raise WhoharryError(problem)
        yield
