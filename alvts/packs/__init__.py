"""Selector packs: the on-disk format (JSON config + safetensors + card), the Hub, and the model fingerprint that
refuses a pack on a model it was not fitted on. Attributes load on first use (the Hub lookup needs no torch)."""

from .._lazy import lazy_attributes

_WHERE = {
    **dict.fromkeys(["model_fingerprint", "qk_norm_digest"], ".fingerprint"),
    **dict.fromkeys(["CARD_NAME", "CONFIG_NAME", "WEIGHTS_NAME", "SelectorConfig", "SelectorPack"], ".format"),
    **dict.fromkeys(["HubError", "hub_snapshot"], ".hub"),
}
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
__all__ = list(_WHERE)
