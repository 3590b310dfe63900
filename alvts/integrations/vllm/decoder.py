"""The routed model, for vLLM multimodal models whose forward runs `self.language_model.model(input_ids, positions,
intermediate_tensors, inputs_embeds)` on a decoder of `layer(positions, hidden, residual)` layers with a fused
`self_attn.qkv_proj`, its `self_attn.attn` (vLLM's Attention) and an `input_layernorm` (vLLM's Qwen2, Llama, Mistral
language models). A family's file mixes it into vLLM's own class for that family."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .config import check_engine
from .routing import VllmRouter, check_pack_weights, fused_qk


class RoutedDecoderMixin(nn.Module):
    """Mixed in before vLLM's model class: the multimodal processor, vision tower and weight loading stay vLLM's."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        resolved = check_engine(vllm_config)  # again in this process: the model may be built where no hook ran
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.alvts_pack = resolved.pack
        self.alvts_router = VllmRouter(
            resolved,
            self.decoder().layers,
            attention=lambda layer: layer.self_attn.attn,
            input_norm=lambda layer: layer.input_layernorm,
            rotary_embedding=lambda layer: layer.self_attn.rotary_emb,
        )

    def decoder(self) -> nn.Module:
        """The language model's decoder stack (`layers`, `norm`, `embed_input_ids`)."""
        return self.language_model.model

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *, is_multimodal=None):
        self.alvts_router.see_visual(is_multimodal)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        num_tokens = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
        plan = self.alvts_router.plan(num_tokens)
        if plan is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        decoder = self.decoder()
        hidden = inputs_embeds if inputs_embeds is not None else decoder.embed_input_ids(input_ids)
        additions = self.alvts_stream_additions(inputs_embeds)
        hidden, residual = self.alvts_router.run_layers(plan, positions, hidden, additions=additions)
        self.alvts_after_forward(inputs_embeds)
        hidden, _ = decoder.norm(hidden, residual)
        return hidden

    def alvts_stream_additions(self, inputs_embeds: torch.Tensor | None) -> dict[int, torch.Tensor] | None:
        """`{layer: (tokens, hidden)}` the family adds to the residual stream after that layer (DeepStack)."""
        return None

    def alvts_after_forward(self, inputs_embeds: torch.Tensor | None) -> None:
        """What the family's stock forward does after its decoder loop."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        if self.alvts_pack is not None:
            layer_weights = self.alvts_router.layer_weights(lambda layer: fused_qk(layer.self_attn))
            check_pack_weights(self.alvts_pack, layer_weights)
        return loaded

    def alvts_records(self) -> list[dict]:
        """What each routed step selected and each layer's KV lengths (with the `record` setting)."""
        return list(self.alvts_router.records)
