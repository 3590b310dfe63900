"""alvts: adaptive layer-wise visual token selection for vision-language models in transformers.

Layers, each importing only from those below it: `routing` (the router, caches, budgets, the policy contract and the
family adapters), `policies`, `packs`, `api` (apply / remove), `calibration`, `evaluation`, `integrations`, then the
demo workbench (`alvts.demo`) and the command lines (`alvts.cli`). Attributes load on first use, so `import alvts`
is cheap and does not import the demo.
"""

from ._lazy import lazy_attributes
from ._version import __version__
from .policies import __all__ as _policy_names  # the registry and policy classes import no torch

_WHERE = {
    **dict.fromkeys(["apply", "remove", "routed", "routing_state", "get_router", "resolve_policy"], ".api"),
    **dict.fromkeys(["get_policy", "register_policy", *(n for n in _policy_names if n[0].isupper())], ".policies"),
    "attention_importance": ".policies.importance",
    **dict.fromkeys(["SelectorConfig", "SelectorPack"], ".packs"),
    **dict.fromkeys(
        ["KeepSchedule", "LayerInputs", "Policy", "RoutedCache", "RoutedStaticCache", "supported_model_classes"],
        ".routing",
    ),
    "register_adapter": ".routing.adapters",
    "load_processor": ".evaluation.processor",
}
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
__all__ = ["__version__", *_WHERE]
