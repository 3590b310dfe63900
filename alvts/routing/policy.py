"""The policy contract: per layer, a policy scores the visual tokens and the router keeps each sample's top-k.

A policy sees a `LayerInputs` (the layer, its input hidden states and their input-normed form, which tokens are
visual and valid, the rotary cos/sin) and returns a `(batch, seq)` float score; higher means "goes through".
Budgets, top-k and gather/scatter belong to the router, so a fitted selector plugs in as one more policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..options import check_settings

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class LayerInputs:
    """What a policy may look at when one decoder layer routes its tokens."""

    layer_idx: int
    layer: nn.Module
    attention: nn.Module  # the layer's self-attention (q_proj, k_proj, head_dim, scaling)
    norm: nn.Module  # the layer's input norm
    hidden_states: torch.Tensor  # (batch, seq, hidden) residual stream entering the layer
    visual: torch.Tensor  # (batch, seq) bool: valid visual tokens of this call
    valid: torch.Tensor  # (batch, seq) bool: not padding
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (batch, seq, head_dim)
    selected: Mapping[int, torch.Tensor] = field(default_factory=dict)  # layer -> visual tokens that went through
    previous_hidden: torch.Tensor | None = None  # the previous layer's input, for policies that ask for it
    _normed: torch.Tensor | None = field(default=None, repr=False)

    @property
    def normed(self) -> torch.Tensor:
        """`input_norm(hidden_states)`: exactly what the layer's q/k projections read. Computed once, on demand."""
        if self._normed is None:
            self._normed = self.norm(self.hidden_states)
        return self._normed

    @property
    def previous(self) -> torch.Tensor:
        """`(batch, seq)` bool: the visual tokens that went through the previous layer (all of them before any)."""
        return self.selected.get(self.layer_idx - 1, self.visual)


class Policy:
    """Base class: subclasses set `name` and implement `scores`. Policies with options are dataclasses whose fields
    are `alvts.options.setting`s, checked on construction."""

    name: ClassVar[str] = "policy"
    default_keep: ClassVar[float | None] = None  # used when `alvts.apply` gets no budget
    needs_previous_hidden: ClassVar[bool] = False  # the router then keeps each layer's input for the next layer

    def __post_init__(self) -> None:
        check_settings(self, self.name)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        """`(batch, seq)` float scores; only the entries at visual tokens are read."""
        raise NotImplementedError

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        """Per-layer keep ratios for a scalar `keep` (budgets compare visual tokens processed per layer); raise
        ValueError when `keep` is out of this policy's reach."""
        return (keep,) * num_layers

    def check_layers(self, num_layers: int) -> None:
        """Raise ValueError when this policy cannot route a decoder of `num_layers` layers at any budget."""

    def uncovered_layers(self, num_layers: int) -> list[int]:
        """Layers this policy cannot score (a selector fitted on some layers only); they must stay dense."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
