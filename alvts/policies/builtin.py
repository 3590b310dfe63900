"""The built-in policies: every token (parity), random tokens, and the exact attention importance (the oracle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import setting
from ..routing.policy import LayerInputs, Policy
from .registry import register_policy

if TYPE_CHECKING:
    import torch

SCORES = ("v2v*t2v", "t2v", "v2v")  # the method's product S_V2V * S_T2V, and each factor alone (ablations)


@register_policy
class FullPolicy(Policy):
    """Every visual token goes through every layer: the stock model (parity reference)."""

    name = "full"
    default_keep = 1.0

    def uncovered_layers(self, num_layers: int) -> list[int]:
        return list(range(num_layers))  # it drops nothing anywhere

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        return inputs.visual.float()


@register_policy
@dataclass(eq=False)
class RandomPolicy(Policy):
    """Uniformly random visual tokens per layer; reproducible for a given seed, layer and input shape."""

    name = "random"
    seed: int = setting(0, int, "random seed", low=0)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        import torch

        device = inputs.hidden_states.device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + inputs.layer_idx)
        return torch.rand(inputs.visual.shape, generator=gen, device=device)


@register_policy
@dataclass(eq=False)
class OraclePolicy(Policy):
    """Exact attention importance of the layer itself: what a fitted selector emulates (an upper bound)."""

    name = "oracle"
    chunk_size: int = setting(512, int, "query rows per chunk of the score", low=1)
    score: str = setting("v2v*t2v", str, "importance score", choices=SCORES)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        from .importance import attention_importance

        return attention_importance(
            inputs.attention,
            inputs.normed,
            inputs.position_embeddings,
            inputs.visual,
            inputs.valid,
            self.chunk_size,
            self.score,
        )
