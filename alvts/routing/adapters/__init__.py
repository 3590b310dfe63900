"""Registry of model-family adapters, keyed by `config.model_type`."""

from __future__ import annotations

from torch import nn

from .base import FamilyAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_vl import QwenVLAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {}


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Register a family adapter for its model types; a model type can be registered once."""
    for model_type in cls.model_types:
        if model_type in ADAPTERS:
            raise ValueError(f"model_type {model_type!r} already has an adapter: {ADAPTERS[model_type].__name__}")
        ADAPTERS[model_type] = cls
    return cls


for _cls in (QwenVLAdapter, LlavaAdapter, LlavaNextAdapter):
    register_adapter(_cls)


def supported_model_classes() -> list[str]:
    return sorted({name for cls in ADAPTERS.values() for name in cls.model_classes})


def get_adapter(model: nn.Module) -> FamilyAdapter:
    """The adapter for `model`, or a ValueError that lists the supported model classes."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"alvts does not support {type(model).__name__} (model_type={model_type!r}). Supported model classes: "
            f"{', '.join(supported_model_classes())}."
        )
    return ADAPTERS[model_type]()


__all__ = ["ADAPTERS", "FamilyAdapter", "get_adapter", "register_adapter", "supported_model_classes"]
