"""Published token-reduction methods as policies of the same router, for comparisons at equal budget.

Budgets compare the average number of visual tokens processed per layer, so each method spreads the user's `keep`
over the layers its own way (`layer_keeps`): dense early layers first, then what is left. A method that drops tokens
for good ranks only the tokens that went through the previous layer (`previous`), so once a layer's budget is spent
its tokens never come back. Attention-based scores come from the layer's own q/k projections, so no method needs the
model in eager attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import setting
from ..routing.policy import LayerInputs, Policy
from .builtin import RandomPolicy
from .registry import get_policy, register_policy

if TYPE_CHECKING:
    import torch


def staged_keeps(keep: float, stages: Sequence[int], method: str, fix: str) -> tuple[float, ...]:
    """Per-layer ratios `lam ** stages[i]` whose mean is `keep` (bisection on lam); stage-0 layers stay dense."""
    dense = sum(stage == 0 for stage in stages) / len(stages)
    if keep < 1 and keep <= dense:
        raise ValueError(
            f"{method} keeps every visual token in its first {round(dense * len(stages))} of {len(stages)} layers, so "
            f"its average keep is above {dense:.3f}; keep={keep} is out of its reach. Raise keep or {fix}."
        )
    low, high = 0.0, 1.0
    for _ in range(60):
        lam = (low + high) / 2
        low, high = (lam, high) if sum(lam**s for s in stages) / len(stages) < keep else (low, lam)
    return tuple(high**s for s in stages)


def check_dense_layers(method: str, option: str, dense: int, num_layers: int) -> None:
    """A method whose first `dense` layers keep every token must leave at least one layer to drop in."""
    if dense >= num_layers:
        raise ValueError(
            f"{method}:{option}={dense} keeps every layer of this {num_layers}-layer decoder dense, so it drops no "
            f"token at any budget; use {option} < {num_layers}."
        )


class _LastTokenAttention(Policy):
    """Ranks the visual tokens that went through the previous layer by the last token's attention to them."""

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        from .importance import kept_before, last_token_attention

        return kept_before(last_token_attention(inputs), inputs.previous)


@register_policy
@dataclass(eq=False)
class FastVPolicy(_LastTokenAttention):
    """FastV (Chen et al., ECCV 2024, arXiv 2403.06764): dense for K layers, then drop once the visual tokens the
    last token attends to least."""

    name = "fastv"
    k: int = setting(2, int, "dense layers before the drop", low=0)

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        return staged_keeps(keep, [int(i >= self.k) for i in range(num_layers)], "FastV", f"lower K (={self.k})")

    def check_layers(self, num_layers: int) -> None:
        check_dense_layers("fastv", "k", self.k, num_layers)


@register_policy
@dataclass(eq=False)
class PyramidDropPolicy(_LastTokenAttention):
    """PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): equal stages of layers, each keeping the same share of
    the last stage's tokens, ranked by the last instruction token's attention; the first stage is dense."""

    name = "pdrop"
    stages: int = setting(4, int, "stages of equal length; the first is dense", low=2)

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [i * self.stages // num_layers for i in range(num_layers)]
        return staged_keeps(keep, stages, "PyramidDrop", f"use more stages than {self.stages}")

    def check_layers(self, num_layers: int) -> None:
        if self.stages > num_layers:
            raise ValueError(
                f"pdrop:stages={self.stages} needs at least as many layers; this decoder has {num_layers}."
            )


@register_policy
@dataclass(eq=False)
class V2DropPolicy(Policy):
    """V2Drop-style (variation-aware dropping, 2025): after dense early layers, progressively drop the visual tokens
    whose hidden state changed least across the previous layer."""

    name = "v2drop"
    needs_previous_hidden = True
    dense_layers: int = setting(1, int, "dense layers first (the change needs one to look back on)", low=1)

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [max(0, i - self.dense_layers + 1) for i in range(num_layers)]
        return staged_keeps(keep, stages, "V2Drop", f"lower dense_layers (={self.dense_layers})")

    def check_layers(self, num_layers: int) -> None:
        check_dense_layers("v2drop", "dense_layers", self.dense_layers, num_layers)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        from .importance import kept_before

        change = (inputs.hidden_states.float() - inputs.previous_hidden.float()).norm(dim=-1)
        return kept_before(change, inputs.previous)


@register_policy
@dataclass(eq=False)
class DenseEarlyRandomPolicy(RandomPolicy):
    """Random selection, redrawn in every layer after dense early layers: the layer-wise random baseline of
    information-horizon analyses (how much does *which* token matter once early layers have mixed the image in)."""

    name = "random-dense"
    dense_layers: int = setting(2, int, "dense layers first", low=0)

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [int(i >= self.dense_layers) for i in range(num_layers)]
        return staged_keeps(keep, stages, "Dense-early random", f"lower dense_layers (={self.dense_layers})")

    def check_layers(self, num_layers: int) -> None:
        check_dense_layers("random-dense", "dense_layers", self.dense_layers, num_layers)


class SelectOncePolicy(Policy):
    """Ablation of layer-wise selection: `inner` scores the visual tokens at the first layer that drops any, and the
    later layers keep the best of those by the same scores (static pruning with the same scorer and budget)."""

    name = "once"

    def __init__(self, inner: Policy | str):
        self.inner = get_policy(inner)
        self.needs_previous_hidden = self.inner.needs_previous_hidden
        self._first: torch.Tensor | None = None

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        return self.inner.layer_keeps(keep, num_layers)

    def check_layers(self, num_layers: int) -> None:
        self.inner.check_layers(num_layers)

    def uncovered_layers(self, num_layers: int) -> list[int]:
        return self.inner.uncovered_layers(num_layers)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        from .importance import kept_before

        if inputs.previous.equal(inputs.visual):  # nothing dropped yet: this layer scores
            self._first = self.inner.scores(inputs).float()
            return self._first
        return kept_before(self._first, inputs.previous)

    def __repr__(self) -> str:
        return f"SelectOncePolicy({self.inner!r})"


class MaxMinDiversity(Policy):
    """Each visual token's place in the greedy max-min diversity order of the layer's input states (first = best)."""

    name = "diversity"

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        import torch

        from .importance import max_min_order

        scores = torch.full(inputs.visual.shape, float("-inf"), device=inputs.visual.device)
        for row in range(len(scores)):
            visual = inputs.visual[row]
            scores[row, visual] = -max_min_order(inputs.hidden_states[row, visual]).float()
        return scores


@register_policy
class DivPrunePolicy(SelectOncePolicy):
    """DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): before the language model, keep the most diverse visual
    tokens (greedy max-min cosine distance of their embeddings); later layers keep the same set, or its most diverse
    part under a shrinking schedule."""

    name = "divprune"

    def __init__(self):
        super().__init__(MaxMinDiversity())

    def __repr__(self) -> str:
        return "DivPrunePolicy()"
