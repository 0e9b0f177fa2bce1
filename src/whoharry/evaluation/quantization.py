"""The quantization attack (Zhang et al. 2025, "Does your LLM truly unlearn? An embarrassingly simple
approach", ICLR 2025): unlearning by fine-tuning moves the weights little, and rounding them to a coarse
grid can undo the move, bringing forgotten knowledge back (after 4-bit quantization their unlearned models
kept 83% of it on average, against 21% in full precision).

Each type of `eval.quantization.types` rounds a copy of the model exactly as `whoharry export` writes its
GGUF file (`core.export.encode`: the `gguf` package's quantizer, norms kept in F32, a weight whose rows do
not split into blocks in F16), reads it back to float32 (`gguf`'s dequantizer), and the suite scores the
target and general probes on it (`quant_{type}_{target,general}_p_answer`). Compared with the same model's
unquantized figures, and with the base model's, they say how much of the forgetting survives the format
a user is likely to run it in.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from whoharry.core import export

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["PROBE_SETS", "figure_key", "round_trip"]

PROBE_SETS = ("target", "general")  # the probe sets scored on each rounded copy


def figure_key(gguf_type: str, probe_set: str) -> str:
    """The summary key of a probe set's mean P(answer) after rounding to `gguf_type`; its per-probe records
    are kept under the same name without `_p_answer`."""
    return f"quant_{gguf_type}_{probe_set}_p_answer"


def round_trip(model: PreTrainedModel, gguf_type: str) -> PreTrainedModel:
    """A copy of `model` whose weights went through GGUF `gguf_type` and back, float32 on the model's device.

    Every parameter is treated as the export treats it (a tied embedding once, since parameters are
    deduplicated); the rounding is along the last dimension, as in the file, so it does not depend on the
    row permutation the export applies to Llama's query and key.

    Raises:
        WhoharryError: an unknown type.
    """
    import torch
    from gguf import quants

    if gguf_type not in export.TYPES:
        from whoharry.errors import WhoharryError

        raise WhoharryError(f"unknown quantization type {gguf_type!r}; choose one of {', '.join(export.TYPES)}")
    out = copy.deepcopy(model).float()
    with torch.no_grad():
        for name, parameter in out.named_parameters():
            array = parameter.detach().to("cpu").float().numpy()
            data, qtype = export.encode(array, gguf_type, name, [])
            restored = quants.dequantize(data, qtype) if data.dtype == "uint8" else data.astype("float32")
            parameter.copy_(torch.from_numpy(restored.reshape(array.shape)).to(parameter.device))
    return out
