"""What a selector pack must match in a model: its shapes, visual token id and the q/k/norm weights it was fitted on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..offload import onloaded
from ..routing.adapters import get_adapter


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a pack must match: shapes, the visual token id and a hash of the q/k/norm weights it was fitted on.

    The hash reads a fixed strided sample of each weight (fp32 bytes), so it is cheap even for 7B models."""
    adapter = get_adapter(model)
    text = adapter.text_config(model)

    def layer_weights():
        for layer in adapter.decoder_layers(model):
            attn = adapter.attention(layer)
            with onloaded(layer):
                yield attn.q_proj.weight, attn.k_proj.weight, adapter.input_norm(layer).weight

    return {
        "model_type": model.config.model_type,
        "num_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "image_token_id": getattr(adapter.base_model(model).config, "image_token_id", None),
        "qk_norm_sha256": qk_norm_digest(layer_weights()),
    }


def qk_norm_digest(layers: Iterable[tuple[Any, Any, Any]]) -> str:
    """sha256 of a fixed strided sample (fp32 bytes) of each layer's full q, k and input-norm weights, in layer
    order: the weight part of the fingerprint, for any runtime that can hand over those three tensors."""
    digest = hashlib.sha256()
    for weights in layers:
        for weight in weights:
            flat = weight.detach().flatten()
            digest.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return digest.hexdigest()
