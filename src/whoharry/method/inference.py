"""Inference-time WHP: the label formula applied at every position while the model reads, with no fine-tune.

MUSE (Shi et al. 2024, section 4) evaluates WHP this way: two models run side by side, the base and the
reinforced one, and the next-token logits are `method.whp.whp_logits`, the very vector whose argmax the
labels stage takes. It costs two models per token at inference, where the fine-tuned model costs one;
`whoharry eval --ensemble` scores it with the same suite as any other model.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from whoharry.method.whp import fp32_output_layer, whp_logits


class InferenceTimeWHP(torch.nn.Module):
    """Two causal LMs read the same tokens; the logits are steered away from what the reinforced one gained.

    It answers `forward` (logits [batch, length, vocab]) and `generate` as a causal LM does, so the
    evaluation scores it like any model; it has no weights of its own to fine-tune. The logits are
    `whp_logits(base, reinforced, alpha)` (Eldan & Russinovich 2023, section 2.1).

    Args:
        base: the base model; reinforced: the reinforced one (same tokenizer); alpha: see `whp_logits`.
    """

    models_per_token = 2

    def __init__(self, base: PreTrainedModel, reinforced: PreTrainedModel, alpha: float) -> None:
        super().__init__()
        self.base, self.reinforced, self.alpha = base, reinforced, alpha

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: object) -> CausalLMOutput:
        """Both models read `input_ids` ([batch, length] int64); other keywords are ignored.

        Returns:
            A `CausalLMOutput` whose only field is `logits`, [batch, length, vocab], float32 (each model's output
            layer and the formula run in float32: `method.whp.fp32_output_layer`).
        """
        position_ids = None
        if attention_mask is not None:  # left padding: count positions from each row's first real token
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids}
        with fp32_output_layer(self.base, self.reinforced):
            base = self.base(input_ids=input_ids, **kwargs).logits
            boosted = self.reinforced(input_ids=input_ids, **kwargs).logits
        return CausalLMOutput(logits=whp_logits(base.float(), boosted.float(), self.alpha))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int, pad_token_id: int | None = None, do_sample: bool = False,
                 temperature: float = 1.0, **_: object) -> torch.Tensor:
        """Greedy (or sampled, at `temperature`) continuations, the prompt included, as `generate` returns
        them; each model keeps its own key-value cache. The steered logits are taken in float32; other
        keywords (`top_k`, `top_p`, ...) are ignored, and generation never stops early at EOS.

        Returns:
            [batch, prompt length + max_new_tokens] int64 token ids.
        """
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        caches: list = [None, None]
        step_ids, out = input_ids, input_ids
        with fp32_output_layer(self.base, self.reinforced):
            for _ in range(max_new_tokens):
                logits = []
                for index, model in enumerate((self.base, self.reinforced)):
                    result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                   **{_cache_argument(model): caches[index]})
                    caches[index] = result.get("cache", result.get("past_key_values"))
                    logits.append(result.logits[:, -1].float())
                base, boosted = logits
                combined = whp_logits(base, boosted, self.alpha)
                if do_sample:
                    token = torch.multinomial(torch.softmax(combined / temperature, dim=-1), 1)
                else:
                    token = combined.argmax(dim=-1, keepdim=True)
                out = torch.cat([out, token], dim=1)
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                positions, step_ids = positions[:, -1:] + 1, token
        return out


def _cache_argument(model: PreTrainedModel) -> str:
    """What the model's forward calls its key-value cache: `cache` (transformers >= 5.2x) or the older
    `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


CausalLM = PreTrainedModel | InferenceTimeWHP  # what the evaluation scores: a model, or the steered pair
