"""Public entry points: route a model in place, inspect it, restore it; and the one place where a policy, its name,
a selector pack or a pack's folder / Hub id becomes the policy that routes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from .packs import SelectorPack
from .policies import POLICIES, get_policy
from .routing import KeepSchedule, Policy, Router, RoutingState, check_keep, get_adapter

_ROUTER_ATTR = "_alvts_router"


def resolve_policy(policy: Policy | SelectorPack | str | os.PathLike, model: nn.Module | None = None) -> Policy:
    """A `Policy` from itself, a registered name, a `SelectorPack`, or the folder / Hub id of one. A pack is checked
    against `model` when one is given (fitted on these weights, covering only its layers)."""
    is_name = isinstance(policy, (str, os.PathLike)) and str(policy) not in POLICIES
    if is_name and (Path(policy).is_dir() or "/" in str(policy)):  # a pack's folder or Hub id "org/name"
        policy = SelectorPack.from_pretrained(policy)
    if isinstance(policy, SelectorPack):
        if model is not None:
            policy.check_model(model)
        return policy.selector
    return get_policy(policy)


def plan_budget(
    policy: Policy,
    num_layers: int,
    keep: float | Sequence[float] | None = None,
    keep_tokens: int | Sequence[int] | None = None,
) -> KeepSchedule:
    """The per-layer schedule `policy` routes with: a scalar `keep` is checked, then spread over the layers the
    policy's own way (dense early layers, a pack's uncovered layers); lists and token counts are taken as given.
    Raises ValueError for a bad budget, one out of the policy's reach, or a layer the policy cannot score."""
    policy.check_layers(num_layers)
    if keep is None and keep_tokens is None:
        keep = policy.default_keep
        if keep is None:
            raise ValueError(f"Policy {policy!r} needs a budget: pass keep=<ratio in (0, 1]> or keep_tokens=<count>.")
    if isinstance(keep, (int, float)) and not isinstance(keep, bool) and keep_tokens is None:
        keep = list(policy.layer_keeps(check_keep(keep), num_layers))
    schedule = KeepSchedule.build(num_layers, keep, keep_tokens)
    uncovered = [i for i in policy.uncovered_layers(num_layers) if not schedule.is_dense(i)]
    if uncovered:
        raise ValueError(
            f"Policy {policy.name!r} cannot score layers {uncovered}: give them keep 1.0 (a per-layer keep list), "
            "pass a scalar keep (a selector then leaves the layers it does not cover dense), or use another policy."
        )
    return schedule


def apply(
    model: nn.Module,
    policy: Policy | SelectorPack | str = "full",
    keep: float | Sequence[float] | None = None,
    *,
    keep_tokens: int | Sequence[int] | None = None,
) -> nn.Module:
    """Route `model`'s visual tokens per decoder layer, in place, and return it.

    `policy` scores visual tokens per layer: a `Policy`, a registered name ("full", "random", "oracle", "fastv",
    ...), a `SelectorPack`, or the folder / Hub id of one (checked against the model; its default keep is the
    default). The budget is `keep`, a ratio of each sample's visual tokens (k = max(1, floor(keep * N))), or
    `keep_tokens`, a count; either may be a per-layer list. Everything is checked before the model is touched.
    """
    adapter = get_adapter(model)
    base = adapter.base_model(model)
    if getattr(base, _ROUTER_ATTR, None) is not None:
        raise ValueError("This model is already routed by alvts; call alvts.remove(model) before applying again.")
    policy = resolve_policy(policy, model)
    schedule = plan_budget(policy, len(adapter.decoder_layers(model)), keep, keep_tokens)
    router = Router(model, adapter, policy, schedule)
    router.install()
    setattr(base, _ROUTER_ATTR, router)
    return model


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
