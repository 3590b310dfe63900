"""The low-rank selector (alvts-method.md §3.1): per layer, one fused GEMM x @ [P_q | P_k] on the input-normed
hidden states, causal softmax attention in rank space at temperature exp(t), score S = S_V2V * S_T2V in log space
(or S_T2V alone, an ablation)."""

from __future__ import annotations

import torch

from .policies import LayerInputs, Policy, check_score, received_attention_log_scores


class LowRankSelector(Policy):
    """A fitted selector: `factors[layer]` is `(hidden, 2 * rank)` = [P_q | P_k], `log_temps[layer]` a scalar."""

    name = "alvts"

    def __init__(
        self,
        factors: dict[int, torch.Tensor],
        log_temps: dict[int, torch.Tensor] | None = None,
        score: str = "v2v*t2v",
    ):
        check_score(score)
        self.factors, self.score = factors, score
        self.log_temps = log_temps or {i: torch.zeros(()) for i in factors}
        self._placed: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (layer, device, dtype) -> weight, scale

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values())).shape[1] // 2

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        if inputs.layer_idx not in self.factors:
            raise KeyError(
                f"The selector has no factors for layer {inputs.layer_idx} (it has {sorted(self.factors)}); "
                "give that layer keep 1.0 in the schedule."
            )
        x = inputs.normed
        weight, scale = self._on(inputs.layer_idx, x)
        q, k = (x @ weight).float().split(self.rank, dim=-1)
        return received_attention_log_scores(
            q[:, None], k[:, None], scale, inputs.visual, inputs.valid, score=self.score
        )

    def _on(self, layer_idx: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's factors in x's dtype and its temperature, moved to x's device once (not at every forward)."""
        key = (layer_idx, x.device, x.dtype)
        if key not in self._placed:
            weight = self.factors[layer_idx].to(device=x.device, dtype=x.dtype)
            self._placed[key] = weight, self.log_temps[layer_idx].to(x.device).float().exp()
        return self._placed[key]

    def __repr__(self) -> str:
        return f"LowRankSelector(layers={len(self.factors)}, rank={self.rank})"
