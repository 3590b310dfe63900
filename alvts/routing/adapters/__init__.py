"""Registry of model-family adapters, keyed by `config.model_type` and filled by `@register_adapter` where each
adapter is defined. Adding a family is one small file here."""

from __future__ import annotations

from typing import Any

from .base import FamilyAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {}
REFUSED: dict[str, str] = {}  # model_type -> why alvts cannot route that family (see `refuse_family`)


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: register a family adapter for its model types; a model type can be registered once."""
    for model_type in cls.model_types:
        if model_type in ADAPTERS:
            raise ValueError(f"model_type {model_type!r} already has an adapter: {ADAPTERS[model_type].__name__}")
        ADAPTERS[model_type] = cls
    return cls


def refuse_family(model_types: tuple[str, ...], reason: str) -> None:
    """Record families alvts knows and cannot route: `get_adapter` raises `reason` for them (before any hook)."""
    for model_type in model_types:
        REFUSED[model_type] = reason


# each module registers its family (or its refusal) on import
from . import gemma3, internvl, llava, llava_next, llava_onevision, qwen2_vl, qwen3_vl  # noqa: E402, F401


def supported_model_classes() -> list[str]:
    """Every model class some registered adapter serves, sorted."""
    return sorted({name for cls in ADAPTERS.values() for name in cls.model_classes})


def adapter_for_config(config: Any, what: str | None = None) -> FamilyAdapter:
    """The adapter for a model config, or a ValueError that names `what` and lists the supported model classes."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise ValueError(
            f"alvts does not route {what or 'this model'} (model_type={model_type!r}): {REFUSED[model_type]}"
        )
    if model_type not in ADAPTERS:
        raise ValueError(
            f"alvts does not support {what or 'this model'} (model_type={model_type!r}). Supported model classes: "
            f"{', '.join(supported_model_classes())}."
        )
    return ADAPTERS[model_type]()


def get_adapter(model: Any) -> FamilyAdapter:
    """The adapter for `model`, or a ValueError that names its class and lists the supported model classes."""
    return adapter_for_config(getattr(model, "config", None), type(model).__name__)


__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "adapter_for_config",
    "get_adapter",
    "refuse_family",
    "register_adapter",
    "supported_model_classes",
]
