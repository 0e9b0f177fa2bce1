"""The logit lens on the target probes (nostalgebraist 2020, "interpreting GPT: the logit lens"; used on
unlearned models by Lynch et al. 2024, *Eight Methods to Evaluate Robust Unlearning in LLMs*, section 4):
the hidden state after each layer, at the last prompt position, read through the model's final norm and
output head as if it were the last layer.

A model that removed a fact should not rank its answer high at any depth; one that only suppresses it near
the output still ranks it high in the middle layers. Per probe the part records the answer's first-token
probability and rank at every layer, and their best over the layers: the figures are the mean best
probability (`latent_p_first`) and the share of probes whose answer reaches the top `eval.latent.top` at
some layer (`latent_top_rate`).

The final norm is found where Llama-, Mistral-, Qwen- and Gemma-style models (`model.norm`), GPT-2
(`transformer.ln_f`) and GPT-NeoX (`gpt_neox.final_layer_norm`) keep it; a final-logit soft-cap in the
config is applied as the model applies it. The last entry of `hidden_states` already holds the final norm
in these models, so the last layer is read from the logits themselves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from whoharry.core import models
from whoharry.core.text import pad
from whoharry.errors import WhoharryError
from whoharry.evaluation.probes import answer_ids
from whoharry.method.objectives import token_log_probs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["final_norm", "lens_logits", "lens_records", "summarize"]

NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


def final_norm(model: PreTrainedModel) -> torch.nn.Module:
    """The norm applied before the output head.

    Raises:
        WhoharryError: the architecture keeps it elsewhere (the latent part cannot read it).
    """
    for path in NORM_PATHS:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.Module):
            return module
    raise WhoharryError(f"the logit lens cannot find the final norm of {type(model).__name__} "
                        f"(looked for {', '.join(NORM_PATHS)}); leave `latent` out of eval.parts")


def lens_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of hidden states [..., hidden] read through the final norm and the output head: [..., vocab]
    float32, soft-capped as the model caps its own (`final_logit_softcapping`)."""
    logits = model.get_output_embeddings()(final_norm(model)(hidden)).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def lens_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, probes: list[dict[str, str]], *,
                 top: int, precision: str, batch_size: int, desc: str, progress: bool = False) -> list[dict]:
    """Per probe: `p_layers` and `rank_layers`, the answer's first-token probability (0-1) and rank (1: the
    likeliest) after each layer (the last one from the model's own logits); `p_best`, their highest (nan when
    a layer's is nan); `best_layer`, where (1-based); `found`, whether the rank is within `top` at some layer;
    `p_last`, the last layer's probability."""
    device = next(model.parameters()).device
    model.eval()
    records: list[dict] = []
    bar = tqdm(total=len(probes), desc=desc, unit="probe", leave=False, disable=not progress)
    for start in range(0, len(probes), batch_size):
        batch = probes[start : start + batch_size]
        pairs = [answer_ids(tokenizer, probe["prompt"], probe["answer"]) for probe in batch]
        ids, mask = pad([prompt for prompt, _ in pairs], tokenizer.pad_token_id)
        with models.autocast(precision, device):
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        ends = torch.tensor([len(prompt) - 1 for prompt, _ in pairs], device=device)
        rows = torch.arange(len(batch), device=device)
        firsts = torch.tensor([answer[0] for _, answer in pairs], device=device)
        with models.autocast(precision, device):
            layers = [lens_logits(model, hidden[rows, ends]) for hidden in out.hidden_states[1:-1]]
        layers.append(out.logits[rows, ends].float())
        picked, ranks = token_log_probs(torch.stack(layers, dim=1), firsts.unsqueeze(1).expand(-1, len(layers)),
                                        ranks=True)
        for probe, p_layers, rank_layers in zip(batch, picked.exp().tolist(), ranks.tolist(), strict=True):
            records.append(_record(probe, p_layers, rank_layers, top))
        bar.update(len(batch))
    bar.close()
    return records


def _record(probe: dict[str, str], p_layers: list[float], rank_layers: list[int], top: int) -> dict:
    """One probe's record; a layer whose probability is not a number (overflowing logits) has no rank (nan,
    not the 1 that no comparison with nan beats), and makes the best layer's probability nan too."""
    ranks = [rank if math.isfinite(p) else float("nan") for p, rank in zip(p_layers, rank_layers, strict=True)]
    finite = [layer for layer, p in enumerate(p_layers) if math.isfinite(p)]
    best = max(finite, key=lambda layer: (p_layers[layer], -layer)) if finite else len(p_layers) - 1
    return {"prompt": probe["prompt"], "answer": probe["answer"], "p_layers": p_layers, "rank_layers": ranks,
            "p_best": p_layers[best] if len(finite) == len(p_layers) else float("nan"), "best_layer": best + 1,
            "found": any(rank <= top for rank in ranks if math.isfinite(rank)), "p_last": p_layers[-1]}


def summarize(records: list[dict]) -> dict[str, float]:
    """`latent_p_first`: the mean best-layer probability; `latent_top_rate`: the share of probes found."""
    return {"latent_p_first": sum(r["p_best"] for r in records) / len(records),
            "latent_top_rate": sum(bool(r["found"]) for r in records) / len(records)}
