"""Per-layer, per-sample visual token budgets: a ratio of each sample's visual tokens or a fixed count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import Setting

if TYPE_CHECKING:
    import torch

# floor(r * N) with r = 1/9 and N = 576 is 63.99999999999999 in floating point; the paper means 64.
_FLOOR_EPS = 1e-6

KEEP = Setting(float, "share of each sample's visual tokens kept per layer", above=0, high=1)
KEEP_TOKENS = Setting(int, "visual tokens kept per sample and layer", low=1)


def check_keep(value: float) -> float:
    """A keep ratio in (0, 1], or a ValueError that says what keep means and how to ask for a count instead."""
    try:
        return KEEP.check("keep", value)
    except ValueError:
        raise ValueError(
            f"keep must be a ratio in (0, 1] (0.25 keeps a quarter of each sample's visual tokens), got {value!r}. "
            "For a fixed number of tokens use keep_tokens=."
        ) from None


@dataclass(frozen=True)
class KeepSchedule:
    """Budget of each decoder layer: `ratios[i]` (k = max(1, floor(r * N))) or `counts[i]` (k = min(c, N))."""

    ratios: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None

    @classmethod
    def build(
        cls,
        num_layers: int,
        keep: float | Sequence[float] | None = None,
        keep_tokens: int | Sequence[int] | None = None,
    ) -> KeepSchedule:
        """Validate a user budget; a scalar applies to every layer, a sequence gives one value per layer."""
        if (keep is None) == (keep_tokens is None):
            raise ValueError("Give exactly one budget: `keep` (a ratio in (0, 1]) or `keep_tokens` (a count >= 1).")
        if keep is not None:
            return cls(ratios=tuple(check_keep(v) for v in _per_layer(keep, num_layers, "keep")))
        return cls(
            counts=tuple(
                KEEP_TOKENS.check("keep_tokens", v) for v in _per_layer(keep_tokens, num_layers, "keep_tokens")
            )
        )

    def mean_keep(self) -> float | None:
        """The schedule's average ratio over layers (the effective budget), or None for token counts."""
        return None if self.ratios is None else sum(self.ratios) / len(self.ratios)

    def num_layers(self) -> int:
        return len(self.ratios if self.ratios is not None else self.counts)

    def is_dense(self, layer_idx: int) -> bool:
        """True when the layer keeps every visual token whatever the image (ratio 1.0)."""
        return self.ratios is not None and self.ratios[layer_idx] >= 1.0

    def budget(self, layer_idx: int, n_visual: torch.Tensor) -> torch.Tensor:
        """`(batch,)` visual tokens kept by each sample at one layer, given its `(batch,)` visual token counts."""
        return self.budgets(n_visual)[layer_idx]

    def budgets(self, n_visual: torch.Tensor) -> torch.Tensor:
        """`(layers, batch)` visual tokens kept by each sample at every layer, in one pass over the schedule."""
        import torch

        if self.ratios is not None:
            ratios = torch.tensor(self.ratios, dtype=torch.float64, device=n_visual.device)[:, None]
            k = torch.floor(n_visual.double() * ratios + _FLOOR_EPS).long().clamp(min=1)
        else:
            k = torch.tensor(self.counts, device=n_visual.device)[:, None].expand(-1, len(n_visual))
        return torch.minimum(k, n_visual)


def _per_layer(value, num_layers: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"{name} has {len(value)} entries but the model has {num_layers} decoder layers.")
        return list(value)
    return [value] * num_layers
