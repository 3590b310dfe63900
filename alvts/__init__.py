"""alvts: adaptive layer-wise visual token selection for vision-language models in transformers."""

from .api import apply, get_router, remove, routed, routing_state
from .policies import FullPolicy, LayerInputs, OraclePolicy, Policy, RandomPolicy, attention_importance, get_policy
from .routing import KeepSchedule, RoutedCache, supported_model_classes
from .selector import LowRankSelector

__version__ = "0.1.0"

__all__ = [
    "FullPolicy",
    "KeepSchedule",
    "LayerInputs",
    "LowRankSelector",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "RoutedCache",
    "__version__",
    "apply",
    "attention_importance",
    "get_policy",
    "get_router",
    "remove",
    "routed",
    "routing_state",
    "supported_model_classes",
]
