"""One registry of policies by name, filled by `@register_policy` where each class is defined, and policies built
from names and `key=value` options (checked by each policy's declared settings)."""

from __future__ import annotations

from typing import Any

from ..options import settings_of
from ..routing.policy import Policy

POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: register `cls` under `cls.name`; a name can be registered once."""
    if cls.name in POLICIES:
        raise ValueError(f"policy name {cls.name!r} is already taken by {POLICIES[cls.name].__name__}")
    POLICIES[cls.name] = cls
    return cls


def get_policy(policy: Policy | str) -> Policy:
    """A policy object from itself or its name; a clear error for anything else (packs: `alvts.resolve_policy`)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]()
    raise ValueError(
        f"Unknown policy {policy!r}. Use one of the names {sorted(POLICIES)}, a `alvts.Policy` instance, a "
        "SelectorPack, or the path / Hub id of a selector pack."
    )


def policy_options(name: str) -> dict[str, str]:
    """`option: what it takes` for a registered policy, for help texts and messages."""
    return {key: spec.describe() for key, spec in settings_of(POLICIES[name]).items()}


def build_policy(name: str, options: dict[str, str | Any], **context: Any) -> Policy:
    """The policy `name` with `options` (command-line text or values), each checked against its declared setting.

    `context` holds values offered to every policy that has such a setting (e.g. a run's `seed`); `options` win.
    Raises ValueError naming the method, the option and what it takes."""
    if name not in POLICIES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(POLICIES)}")
    specs = settings_of(POLICIES[name])
    values = {key: value for key, value in context.items() if key in specs}
    for key, raw in options.items():
        if key not in specs:
            accepted = ", ".join(f"{k} ({v})" for k, v in policy_options(name).items()) or "none"
            raise ValueError(f"method {name!r} has no option {key!r}; its options: {accepted}")
        try:
            values[key] = specs[key].parse(key, raw) if isinstance(raw, str) else specs[key].check(key, raw)
        except ValueError as err:
            raise ValueError(f"method {name!r}: {err}") from None
    return POLICIES[name](**values)
