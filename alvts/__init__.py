"""alvts: adaptive layer-wise visual token selection for vision-language models in transformers."""

from . import demo
from ._version import __version__
from .api import apply, get_router, remove, routed, routing_state
from .baselines import (
    DenseEarlyRandomPolicy,
    DivPrunePolicy,
    FastVPolicy,
    PyramidDropPolicy,
    SelectOncePolicy,
    V2DropPolicy,
)
from .pack import SelectorConfig, SelectorPack
from .policies import FullPolicy, LayerInputs, OraclePolicy, Policy, RandomPolicy, attention_importance, get_policy
from .processor import load_processor
from .routing import KeepSchedule, RoutedCache, RoutedStaticCache, supported_model_classes
from .selector import LowRankSelector

__all__ = [
    "DenseEarlyRandomPolicy",
    "DivPrunePolicy",
    "FastVPolicy",
    "PyramidDropPolicy",
    "V2DropPolicy",
    "FullPolicy",
    "KeepSchedule",
    "LayerInputs",
    "LowRankSelector",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "RoutedCache",
    "RoutedStaticCache",
    "SelectOncePolicy",
    "SelectorConfig",
    "SelectorPack",
    "__version__",
    "apply",
    "attention_importance",
    "demo",
    "load_processor",
    "get_policy",
    "get_router",
    "remove",
    "routed",
    "routing_state",
    "supported_model_classes",
]
