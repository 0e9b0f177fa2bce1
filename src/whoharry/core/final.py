"""The end of a training stage: the trained model written as an ordinary save_pretrained folder (`train.train`'s
`final`), with LoRA merged in, sharded weights gathered and, with WiSE-FT, the weights mixed with the base's."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from whoharry.core import distributed, fsdp, models
from whoharry.errors import WhoharryError
from whoharry.method.wise_ft import mix_state

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def save_final(acc: Accelerator, wrapped: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path,
                save_dtype: str, best_state: dict[str, torch.Tensor] | None = None, chosen: bool = False,
                wise_ft: tuple[float, Callable[[], dict[str, torch.Tensor]]] | None = None, desc: str = "") -> None:
    """The trained model as an ordinary save_pretrained folder in `save_dtype` (`models.save_folder`),
    written by the main process; with sharded weights and `chosen`, from `best_state` (the best weights,
    main process) instead of the model's; with `wise_ft`, mixed with the base first (`train.train`)."""
    if chosen and distributed.sharded():
        state_dict = best_state
    else:
        state_dict = fsdp.gathered(acc, wrapped) if distributed.sharded() else None  # every process gathers
    model = acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the weights
        untie_adapted(model)
        model = model.merge_and_unload()
    model = getattr(model, "_orig_mod", model)
    if acc.is_main_process:
        if wise_ft is not None:
            alpha, base_weights = wise_ft
            try:
                state_dict = mix_state(base_weights(), model.state_dict() if state_dict is None else state_dict,
                                       alpha)
            except ValueError as error:
                raise WhoharryError(f"{desc}: WiSE-FT: {error}") from None
            log.info("%s: mixed with the base, base + %g * (trained - base) (WiSE-FT)", desc, alpha)
        dtype = models.save_dtype(save_dtype, acc.device)
        models.save_folder(model, tokenizer, folder, dtype, state_dict)
    acc.wait_for_everyone()


def untie_adapted(model: torch.nn.Module) -> None:
    """Give every LoRA-adapted layer whose weight is shared with another layer (an embedding tied to the
    output head) its own copy, and mark the config untied: merging into a shared weight would change the
    layer that was never adapted too. The frozen weights are equal, so the model computes the same."""
    owners = Counter(id(param) for _, param in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        layer = getattr(module, "base_layer", None)
        if layer is not None and owners[id(layer.weight)] > 1:
            owners[id(layer.weight)] -= 1
            layer.weight = torch.nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
            config = model.get_base_model().config
            config.tie_word_embeddings = config.get_text_config().tie_word_embeddings = False
            log.info("LoRA adapts a tied layer: the saved model has untied input and output embeddings")
