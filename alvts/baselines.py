"""Published token-reduction methods as policies of the same router, for comparisons at equal budget.

Budgets compare the average number of visual tokens processed per layer, so each method spreads the user's `keep`
over the layers its own way (`layer_keeps`): dense early layers first, then what is left. A method that drops tokens
for good ranks only the tokens that went through the previous layer (`previous`), so once a layer's budget is spent
its tokens never come back. Attention-based scores come from the layer's own q/k projections, so no method needs the
model in eager attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .policies import POLICIES, LayerInputs, Policy, RandomPolicy, get_policy, rotated_queries_keys


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


def kept_before(scores: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Scores of the tokens that went through the previous layer; -inf for those already dropped."""
    return scores.float().masked_fill(~previous, float("-inf"))


@torch.no_grad()
def last_token_attention(inputs: LayerInputs) -> torch.Tensor:
    """`(batch, seq)` attention that each row's last valid token pays every token at this layer, head-averaged."""
    batch, seq = inputs.valid.shape
    rows = torch.arange(batch, device=inputs.valid.device)
    last = seq - 1 - inputs.valid.flip(1).int().argmax(1)
    q, k = rotated_queries_keys(inputs.attention, inputs.normed, inputs.position_embeddings)
    q = q[rows, :, last][:, :, None]  # (batch, heads, 1, head_dim)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * inputs.attention.scaling  # (batch, heads, seq)
    visible = inputs.valid & (torch.arange(seq, device=rows.device)[None] <= last[:, None])
    return torch.softmax(logits.masked_fill(~visible[:, None], float("-inf")), -1).mean(1)


def max_min_order(features: torch.Tensor) -> torch.Tensor:
    """Greedy max-min diversity order of `(n, dim)` features under cosine distance: each next token is the one
    farthest from all chosen so far (the first: farthest from the mean). Returns each token's rank, 0 = first."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    distance = 1 - x @ x.T
    nearest = 1 - x @ torch.nn.functional.normalize(x.mean(0), dim=0)  # to the mean, for the first pick only
    rank = torch.empty(len(x), dtype=torch.long, device=x.device)
    chosen = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for step in range(len(x)):
        pick = int(nearest.masked_fill(chosen, -1.0).argmax())
        rank[pick], chosen[pick] = step, True
        nearest = distance[pick] if step == 0 else torch.minimum(nearest, distance[pick])
    return rank


class FastVPolicy(Policy):
    """FastV (Chen et al., ECCV 2024, arXiv 2403.06764): dense for K layers, then drop once the visual tokens the
    last token attends to least."""

    name = "fastv"

    def __init__(self, k: int = 2):
        self.k = k

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        return staged_keeps(keep, [int(i >= self.k) for i in range(num_layers)], "FastV", f"lower K (={self.k})")

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        return kept_before(last_token_attention(inputs), inputs.previous)

    def __repr__(self) -> str:
        return f"FastVPolicy(k={self.k})"


class PyramidDropPolicy(Policy):
    """PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): equal stages of layers, each keeping the same share of
    the last stage's tokens, ranked by the last instruction token's attention; the first stage is dense."""

    name = "pdrop"

    def __init__(self, stages: int = 4):
        self.stages = stages

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [i * self.stages // num_layers for i in range(num_layers)]
        return staged_keeps(keep, stages, "PyramidDrop", f"use more stages than {self.stages}")

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        return kept_before(last_token_attention(inputs), inputs.previous)

    def __repr__(self) -> str:
        return f"PyramidDropPolicy(stages={self.stages})"


class V2DropPolicy(Policy):
    """V2Drop-style (variation-aware dropping, 2025): after dense early layers, progressively drop the visual tokens
    whose hidden state changed least across the previous layer."""

    name = "v2drop"
    needs_previous_hidden = True

    def __init__(self, dense_layers: int = 1):
        self.dense_layers = max(1, dense_layers)  # the change needs one layer to look back on

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [max(0, i - self.dense_layers + 1) for i in range(num_layers)]
        return staged_keeps(keep, stages, "V2Drop", f"lower dense_layers (={self.dense_layers})")

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        change = (inputs.hidden_states.float() - inputs.previous_hidden.float()).norm(dim=-1)
        return kept_before(change, inputs.previous)

    def __repr__(self) -> str:
        return f"V2DropPolicy(dense_layers={self.dense_layers})"


class DenseEarlyRandomPolicy(RandomPolicy):
    """Random selection, redrawn in every layer after dense early layers: the layer-wise random baseline of
    information-horizon analyses (how much does *which* token matter once early layers have mixed the image in)."""

    name = "random-dense"

    def __init__(self, dense_layers: int = 2, seed: int = 0):
        super().__init__(seed)
        self.dense_layers = dense_layers

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        stages = [int(i >= self.dense_layers) for i in range(num_layers)]
        return staged_keeps(keep, stages, "Dense-early random", f"lower dense_layers (={self.dense_layers})")

    def __repr__(self) -> str:
        return f"DenseEarlyRandomPolicy(dense_layers={self.dense_layers}, seed={self.seed})"


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

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
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
        scores = torch.full(inputs.visual.shape, float("-inf"), device=inputs.visual.device)
        for row in range(len(scores)):
            visual = inputs.visual[row]
            scores[row, visual] = -max_min_order(inputs.hidden_states[row, visual]).float()
        return scores


class DivPrunePolicy(SelectOncePolicy):
    """DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): before the language model, keep the most diverse visual
    tokens (greedy max-min cosine distance of their embeddings); later layers keep the same set, or its most diverse
    part under a shrinking schedule."""

    name = "divprune"

    def __init__(self):
        super().__init__(MaxMinDiversity())

    def __repr__(self) -> str:
        return "DivPrunePolicy()"


BASELINES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (FastVPolicy, PyramidDropPolicy, V2DropPolicy, DivPrunePolicy, DenseEarlyRandomPolicy)
}
POLICIES.update(BASELINES)
