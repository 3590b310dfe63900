"""The low-rank selector: per layer, one fused GEMM x @ [P_q | P_k] on the input-normed hidden states, causal
softmax attention in rank space at temperature exp(t) (one head, or several averaged as the layer's own heads are),
score S = S_V2V * S_T2V in log space (or one factor alone, an ablation). In the rotary form each pair of rank
dimensions (i, i + half) of a head is rotated like a RoPE pair, at the frequency of the head dimension
`frequencies[layer][i]`, with the layer's own rotary table: positions cost O(L R). A selector fitted on some layers
only routes those; the others stay dense, or are routed by the `uncovered` policy when one is named."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.policy import LayerInputs, Policy
from .builtin import SCORES
from .registry import get_policy

if TYPE_CHECKING:
    import torch


FORMS = ("rotary", "merged")  # RoPE applied in rank space; no positions (the paper's form)


class LowRankSelector(Policy):
    """A fitted selector: `factors[layer]` is `(hidden, 2 * rank)` = [P_q | P_k], `log_temps[layer]` a scalar and,
    in the rotary form, `frequencies[layer]` the `(rank / 2,)` head-dimension index of each rank pair's frequency.
    With `heads` > 1 the rank space is split into that many heads (columns head by head), each its own softmax."""

    name = "alvts"

    def __init__(
        self,
        factors: dict[int, torch.Tensor],
        log_temps: dict[int, torch.Tensor] | None = None,
        score: str = "v2v*t2v",
        uncovered: Policy | str | None = None,
        default_keep: float | None = None,
        frequencies: dict[int, torch.Tensor] | None = None,
        heads: int = 1,
    ):
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(map(repr, SCORES))}, got {score!r}")
        ranks = {int(f.shape[1]) for f in factors.values()}
        if not factors or len(ranks) != 1 or ranks.pop() % 2:
            raise ValueError("A selector needs factors of one shape (hidden, 2 * rank) for at least one layer.")
        self.factors, self.score, self.default_keep, self.heads = factors, score, default_keep, heads
        if heads < 1 or self.rank % (heads * (2 if frequencies else 1)):
            raise ValueError(
                f"A selector of rank {self.rank} cannot have {heads} heads: the rank must be a positive multiple of "
                "the heads (of twice the heads in the rotary form)."
            )
        self.frequencies = frequencies or {}
        shapes = {tuple(f.shape) for f in self.frequencies.values()}
        if self.frequencies and (set(self.frequencies) != set(factors) or shapes != {(self.rank // 2,)}):
            raise ValueError("A rotary selector needs a (rank / 2,) frequency index for each layer it has factors for.")
        if log_temps is None:
            import torch

            log_temps = {i: torch.zeros(()) for i in factors}
        self.log_temps = log_temps
        self.uncovered = None if uncovered is None else get_policy(uncovered)
        if self.uncovered is not None:
            self.needs_previous_hidden = self.uncovered.needs_previous_hidden
        self._placed: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (layer, device, dtype) -> weight, scale

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values())).shape[1] // 2

    @property
    def form(self) -> str:
        """The selector's form: "rotary" (RoPE applied in rank space) or "merged" (no positions, the paper's)."""
        return "rotary" if self.frequencies else "merged"

    def with_uncovered(self, policy: Policy | str | None) -> LowRankSelector:
        """The same fitted factors, with `policy` routing the layers they do not cover."""
        return LowRankSelector(
            self.factors, self.log_temps, self.score, policy, self.default_keep, self.frequencies, self.heads
        )

    def uncovered_layers(self, num_layers: int) -> list[int]:
        if self.uncovered is not None:
            return []
        return [i for i in range(num_layers) if i not in self.factors]

    def check_layers(self, num_layers: int) -> None:
        outside = sorted(i for i in self.factors if i >= num_layers)
        if outside:
            raise ValueError(f"the selector has factors for layers {outside}; this decoder has {num_layers} layers.")
        if self.uncovered is not None:
            self.uncovered.check_layers(num_layers)

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        """`keep` where the selector (or the `uncovered` policy) scores, 1.0 at layers nobody scores."""
        if self.uncovered is not None:
            inner = self.uncovered.layer_keeps(keep, num_layers)
            return tuple(keep if i in self.factors else inner[i] for i in range(num_layers))
        return tuple(keep if i in self.factors else 1.0 for i in range(num_layers))

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        if inputs.layer_idx not in self.factors:
            if self.uncovered is None:
                raise KeyError(
                    f"The selector has no factors for layer {inputs.layer_idx} (it has {sorted(self.factors)}); "
                    "give that layer keep 1.0, or name a policy for the layers it does not cover."
                )
            return self.uncovered.scores(inputs)
        from .importance import rank_space_rotary, received_attention_log_scores, selector_queries_keys

        x = inputs.normed
        weight, scale, frequencies = self._on(inputs.layer_idx, x)
        rotary = None
        if frequencies is not None:
            rotary = rank_space_rotary(inputs.position_embeddings, inputs.attention, frequencies, self.heads)
        q, k = selector_queries_keys(x, weight, rotary, self.heads)
        return received_attention_log_scores(q, k, scale, inputs.visual, inputs.valid, score=self.score)

    def _on(self, layer_idx: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The layer's factors in x's dtype, its temperature and frequencies, moved to x's device once (not at
        every forward)."""
        key = (layer_idx, x.device, x.dtype)
        if key not in self._placed:
            weight = self.factors[layer_idx].to(device=x.device, dtype=x.dtype)
            frequencies = self.frequencies.get(layer_idx)
            self._placed[key] = (
                weight,
                self.log_temps[layer_idx].to(x.device).float().exp(),
                None if frequencies is None else frequencies.to(x.device),
            )
        return self._placed[key]

    def __repr__(self) -> str:
        extra = "" if self.uncovered is None else f", uncovered={self.uncovered!r}"
        heads = "" if self.heads == 1 else f", heads={self.heads}"
        return f"LowRankSelector(layers={sorted(self.factors)}, rank={self.rank}, form={self.form!r}{heads}{extra})"
