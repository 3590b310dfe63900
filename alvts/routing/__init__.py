"""Per-layer visual token routing inside stock transformers models: the router, its caches and budgets, the policy
contract, and the family adapters (everything a model family needs to say)."""

from .._lazy import lazy_attributes
from .policy import LayerInputs, Policy

_WHERE = {
    "FamilyAdapter": ".adapters",
    "get_adapter": ".adapters",
    "register_adapter": ".adapters",
    "supported_model_classes": ".adapters",
    "KeepSchedule": ".budget",
    "check_keep": ".budget",
    "RoutedCache": ".cache",
    "RoutedStaticCache": ".cache",
    "Router": ".core",
    "RoutingState": ".core",
    "select_slots": ".core",
}
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
__all__ = ["LayerInputs", "Policy", *_WHERE]
