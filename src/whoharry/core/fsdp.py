"""FSDP 2 where accelerate drops it: sharded training on processes without a GPU, through torch itself.

`accelerate launch --use_fsdp` on a machine without a GPU starts its processes as plain multi-CPU ones:
accelerate 1.x switches to FSDP only from a GPU-like distributed type, and keeps the plugin without a word
(`--cpu` with `--use_fsdp` it refuses outright). PyTorch's own FSDP 2 (`fully_shard`) runs over gloo, so
when the launcher asked for FSDP and accelerate did not take it up (`distributed.torch_fsdp`), the training loop shards
the model here: each decoder layer (the model's `_no_split_modules`) and then the whole model, on a
one-dimensional device mesh of every process. Its checkpoints are `torch.distributed.checkpoint` folders
(each process writes its shards; `load` reads them back in the same layout), and the final folder is
written from the weights gathered into the main process (`full_state`).

The gradient of a step is the same as under DDP: FSDP 2 reduce-scatters gradients as their mean over the
processes, which the training loop multiplies back as it does for DDP.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from whoharry.core import distributed

SHARDS_DIR = "fsdp"  # inside a checkpoint: torch.distributed.checkpoint's files
RNG_FILE = "rng-{rank}.safetensors"


def shard(model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Shard `model` in place with `fully_shard`: every module of a class in its `_no_split_modules` (the
    decoder layers), then the model itself; parameters become DTensors split on dim 0 over the processes.
    With `compute_dtype` (bf16 autocast asked for), FSDP's mixed precision computes in it and reduces
    gradients in fp32; the sharded master weights stay fp32.

    Returns:
        The model (now an `FSDPModule`).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _from_main(model)
    mesh = init_device_mesh("cpu", (distributed.world(),))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    options = {"mesh": mesh, "reshard_after_forward": os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true") != "false",
               **({"mp_policy": policy} if policy else {})}
    layers = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, **options)
    fully_shard(model, **options)
    return model


def _from_main(model: torch.nn.Module) -> None:
    """Give every process the main process's weights and buffers. Under `fsdp_cpu_ram_efficient_loading`
    (accelerate's default) transformers loads the weights in the main process only and leaves the others'
    on the meta device; those get real storage first, and tied weights are tied again."""
    import torch.distributed as dist

    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device="cpu")
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            dist.broadcast(tensor.data, src=0)


def save(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model's and optimizer's shards (`folder/fsdp/`, every process its own) and each process's
    random state (`folder/rng-R.safetensors`). Every process must call it; `folder` must exist."""
    import torch.distributed.checkpoint as dcp

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds torch's
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(folder / SHARDS_DIR))
    save_file({"cpu": torch.get_rng_state()}, str(folder / RNG_FILE.format(rank=distributed.rank())))


def load(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read back what `save` wrote, in place, with the same number of processes (every process calls it)."""
    import torch.distributed.checkpoint as dcp

    optimizer = getattr(optimizer, "optimizer", optimizer)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder / SHARDS_DIR))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    torch.set_rng_state(load_file(str(folder / RNG_FILE.format(rank=distributed.rank())))["cpu"])


def gathered(acc: Accelerator, wrapped: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's sharded weights, gathered into the main process on the CPU (the others may get an
    empty dict): through torch here, or through accelerate for its own FSDP and DeepSpeed. Every process
    must call it."""
    if not distributed.torch_fsdp():
        return acc.get_state_dict(wrapped)
    state = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    shared: dict[int, list[str]] = {}  # tied weights (embeddings and output head) come back as two copies
    for name, param in wrapped.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    for names in shared.values():
        present = [name for name in names if name in state]
        for name in present[1:]:
            state[name] = state[present[0]]  # one tensor again, so the folder holds it once
    return state
