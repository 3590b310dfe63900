"""Token-selection policies: the built-in ones, published baselines and the fitted low-rank selector, in one
registry (`POLICIES`, filled by `@register_policy`). Importing this package does not import torch: the scoring
math (`importance`) loads when a policy first scores."""

from .baselines import (
    DenseEarlyRandomPolicy,
    DivPrunePolicy,
    FastVPolicy,
    PyramidDropPolicy,
    SelectOncePolicy,
    V2DropPolicy,
)
from .builtin import SCORES, FullPolicy, OraclePolicy, RandomPolicy
from .registry import POLICIES, build_policy, get_policy, policy_options, register_policy
from .selector import FORMS, LowRankSelector

__all__ = [
    "FORMS",
    "POLICIES",
    "SCORES",
    "DenseEarlyRandomPolicy",
    "DivPrunePolicy",
    "FastVPolicy",
    "FullPolicy",
    "LowRankSelector",
    "OraclePolicy",
    "PyramidDropPolicy",
    "RandomPolicy",
    "SelectOncePolicy",
    "V2DropPolicy",
    "build_policy",
    "get_policy",
    "policy_options",
    "register_policy",
]
