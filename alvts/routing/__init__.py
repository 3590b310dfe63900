"""Per-layer visual token routing inside stock transformers models."""

from .adapters import FamilyAdapter, get_adapter, register_adapter, supported_model_classes
from .budget import KeepSchedule
from .cache import RoutedCache, RoutedStaticCache
from .core import Router, RoutingState, gather_plan, top_k_mask

__all__ = [
    "FamilyAdapter",
    "KeepSchedule",
    "RoutedCache",
    "RoutedStaticCache",
    "Router",
    "RoutingState",
    "gather_plan",
    "get_adapter",
    "register_adapter",
    "supported_model_classes",
    "top_k_mask",
]
