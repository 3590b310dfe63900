"""Public entry points: route a model in place, inspect it, restore it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from .pack import SelectorPack
from .policies import POLICIES, FullPolicy, Policy, get_policy
from .routing import KeepSchedule, Router, RoutingState, get_adapter
from .selector import LowRankSelector

_ROUTER_ATTR = "_alvts_router"


def apply(
    model: nn.Module,
    policy: Policy | SelectorPack | str = "full",
    keep: float | Sequence[float] | None = None,
    *,
    keep_tokens: int | Sequence[int] | None = None,
) -> nn.Module:
    """Route `model`'s visual tokens per decoder layer, in place, and return it.

    `policy` scores visual tokens per layer: a `Policy`, one of the names "full", "random", "oracle", a
    `SelectorPack`, or the folder / Hub id of one (checked against the model; its default keep is the default).
    The budget is `keep`, a ratio of each sample's visual tokens (k = max(1, floor(keep * N))), or `keep_tokens`,
    a count; either may be a per-layer list. Everything is checked before the model is touched.
    """
    adapter = get_adapter(model)
    base = adapter.base_model(model)
    if getattr(base, _ROUTER_ATTR, None) is not None:
        raise ValueError("This model is already routed by alvts; call alvts.remove(model) before applying again.")
    num_layers = len(adapter.decoder_layers(model))
    policy, pack_keep = _resolve_pack(model, policy, num_layers)
    if keep is None and keep_tokens is None:
        keep = pack_keep
    policy = get_policy(policy)
    if keep is None and keep_tokens is None:
        if policy.default_keep is None:
            raise ValueError(f"Policy {policy!r} needs a budget: pass keep=<ratio in (0, 1]> or keep_tokens=<count>.")
        keep = policy.default_keep
    if isinstance(keep, (int, float)) and not isinstance(keep, bool) and keep_tokens is None:
        KeepSchedule.build(num_layers, keep)  # the user's ratio is checked before the policy spreads it over layers
        keep = list(policy.layer_keeps(float(keep), num_layers))
    schedule = KeepSchedule.build(num_layers, keep, keep_tokens)
    if isinstance(policy, FullPolicy) and not all(schedule.is_dense(i) for i in range(num_layers)):
        raise ValueError("Policy 'full' keeps every visual token; use keep=1.0, or another policy to drop tokens.")
    fitted = policy.factors if isinstance(policy, LowRankSelector) else range(num_layers)
    unfitted = [i for i in range(num_layers) if not schedule.is_dense(i) and i not in fitted]
    if unfitted:
        raise ValueError(
            f"The selector has no factors for layers {unfitted}; give them keep 1.0 (a per-layer keep list), or leave "
            "keep unset to use the pack's default schedule."
        )
    router = Router(model, adapter, policy, schedule)
    router.install()
    setattr(base, _ROUTER_ATTR, router)
    return model


def _resolve_pack(model: nn.Module, policy, num_layers: int) -> tuple[Policy | str, list[float] | None]:
    """A pack (object, folder or Hub id "org/name") becomes its checked selector and default per-layer keep."""
    is_name = isinstance(policy, (str, os.PathLike)) and str(policy) not in POLICIES
    if is_name and (Path(policy).is_dir() or "/" in str(policy)):
        policy = SelectorPack.from_pretrained(policy)
    if not isinstance(policy, SelectorPack):
        return policy, None
    policy.check_model(model)
    keep = [policy.config.default_keep if i in policy.selector.factors else 1.0 for i in range(num_layers)]
    return policy.selector, keep


def remove(model: nn.Module) -> nn.Module:
    """Undo `apply`: the model computes exactly as the stock model again."""
    base = get_adapter(model).base_model(model)
    router = getattr(base, _ROUTER_ATTR, None)
    if router is None:
        raise ValueError("This model is not routed by alvts; nothing to remove.")
    router.uninstall()
    delattr(base, _ROUTER_ATTR)
    return model


def get_router(model: nn.Module) -> Router | None:
    """The model's `Router`, or None if it is not routed."""
    return getattr(get_adapter(model).base_model(model), _ROUTER_ATTR, None)


def routing_state(model: nn.Module) -> RoutingState:
    """Visual tokens selected per layer and sample by the last call that carried images."""
    router = get_router(model)
    if router is None:
        raise ValueError("This model is not routed by alvts; call alvts.apply(model, ...) first.")
    return router.state


@contextmanager
def routed(
    model: nn.Module,
    policy: Policy | SelectorPack | str = "full",
    keep: float | Sequence[float] | None = None,
    *,
    keep_tokens: int | Sequence[int] | None = None,
) -> Iterator[nn.Module]:
    """`with alvts.routed(model, "oracle", keep=0.25): model.generate(...)` routes inside the block only."""
    apply(model, policy, keep, keep_tokens=keep_tokens)
    try:
        yield model
    finally:
        remove(model)
