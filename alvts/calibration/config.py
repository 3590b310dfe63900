"""How a selector pack is fitted: the one schema of calibration settings. It checks itself; `alvts-calibrate`'s
flags and the recipe keys are derived from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_settings, same_as, setting
from ..policies import FORMS, SCORES
from ..routing.budget import KEEP

LOSSES = ("mse+kl", "mse")
INITS = ("whitened", "svd")


def parse_layers(spec: str) -> list[int] | None:
    """Layers as text: "all" (None: every decoder layer) or indices and inclusive ranges such as "0-3,6"."""
    if spec.strip() == "all":
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise ValueError(f"invalid layer spec {spec!r}: use 'all' or indices and ranges, '0-3,6'")
        layers.update(range(int(first), int(last if dash else first) + 1))
    return sorted(layers)


@dataclass
class CalibrationConfig:
    """Settings of one calibration run; recorded in the pack and checked when a run resumes."""

    rank: int = setting(32, int, "selector rank", low=1)
    layers: list[int] | None = setting(
        None, list, "decoder layers to fit: 'all' or e.g. '0-3,6'", parse_text=parse_layers, optional=True
    )
    default_keep: float = same_as(KEEP, 1 / 9, "the pack's default keep ratio")
    stage_b_steps: int = setting(300, int, "refinement steps per layer, 0 to skip", low=0)
    stage_b_lr: float = setting(1e-2, float, "refinement learning rate", above=0)
    loss: str = setting("mse+kl", str, "refinement loss; mse is the paper's alone", choices=LOSSES)
    form: str = setting(
        "rotary",
        str,
        "selector form: merged heads with RoPE in rank space, or without positions (the paper's)",
        choices=FORMS,
    )
    heads: int = setting(
        1, int, "selector heads: the layer's query heads in this many groups, one rank-space softmax each", low=1
    )
    init: str = setting("whitened", str, "Stage A: data-whitened, or the data-free SVD of B", choices=INITS)
    score: str = setting("v2v*t2v", str, "importance score; t2v alone is an ablation", choices=SCORES)
    held_out_fraction: float = setting(0.25, float, "share of samples held out to measure the fit", above=0, high=0.5)
    seed: int = setting(0, int, "held-out split, refinement and local data order", low=0)

    def __post_init__(self) -> None:
        if isinstance(self.layers, (list, tuple)):
            self.layers = sorted(set(self.layers))
        check_settings(self)
        step = self.heads * (2 if self.form == "rotary" else 1)
        if self.rank % step:
            even = " of even size (each rotates pairs of rank dimensions)" if self.form == "rotary" else ""
            raise ValueError(
                f"CalibrationConfig: rank {self.rank} does not split into {self.heads} selector head(s){even}; use a "
                f"rank divisible by {step}" + (", or form 'merged'." if self.form == "rotary" else ".")
            )
