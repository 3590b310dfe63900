"""Qwen2.5-VL in vLLM, routed: vLLM's `Qwen2_5_VLForConditionalGeneration` with its language model's decoder loop
run by `VllmRouter`. Family knowledge only: where the decoder stack, its attention and norms are, and how its
fused q/k/v projection is cut."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.sequence import IntermediateTensors

from .config import check_engine
from .routing import VllmRouter, check_pack_weights, fused_qk


class RoutedQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL whose decoder layers route visual tokens (architecture "AlvtsQwen2_5_VLForConditionalGeneration").
    The multimodal processor, vision tower and weights are vLLM's own (inherited)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        resolved = check_engine(vllm_config)  # again in this process: the model may be built where no hook ran
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.alvts_pack = resolved.pack
        self.alvts_router = VllmRouter(
            resolved,
            self.language_model.model.layers,
            attention=lambda layer: layer.self_attn.attn,
            input_norm=lambda layer: layer.input_layernorm,
        )

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *, is_multimodal=None):
        self.alvts_router.see_visual(is_multimodal)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        num_tokens = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
        plan = self.alvts_router.plan(num_tokens)
        if plan is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        model = self.language_model.model
        hidden = inputs_embeds if inputs_embeds is not None else model.embed_input_ids(input_ids)
        hidden, residual = self.alvts_router.run_layers(plan, positions, hidden)
        hidden, _ = model.norm(hidden, residual)
        return hidden

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        if self.alvts_pack is not None:
            weights = self.alvts_router.layer_weights(lambda layer: fused_qk(layer.self_attn))
            check_pack_weights(self.alvts_pack, weights)
        return loaded

    def alvts_records(self) -> list[dict]:
        """What each routed step selected and each layer's KV lengths (with the `record` setting)."""
        return list(self.alvts_router.records)
