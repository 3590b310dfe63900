"""Selector packs: the on-disk format (JSON config + safetensors + card), the Hub, and the model fingerprint that
refuses a pack on a model it was not fitted on."""

from .fingerprint import model_fingerprint
from .format import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, SelectorConfig, SelectorPack
from .hub import HubError, hub_snapshot

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "HubError",
    "SelectorConfig",
    "SelectorPack",
    "hub_snapshot",
    "model_fingerprint",
]
