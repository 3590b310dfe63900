"""What the routing core needs to know about a model family, with the defaults the supported families share."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class FamilyAdapter:
    """Locates the decoder stack and the visual tokens of one model family; knows nothing about routing.

    Subclasses set `model_types` (the `config.model_type` values they serve) and override only what differs.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    model_classes: ClassVar[tuple[str, ...]] = ()  # for error messages
    visual_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs")
    visual_token_id_attrs: ClassVar[tuple[str, ...]] = ("image_token_id",)
    # processor outputs that hold images: a batch concatenates them in sample order instead of padding them like text
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def base_model(self, model: nn.Module) -> nn.Module:
        """The multimodal model that embeds images and runs the language model (`model.model` for the top class)."""
        inner = getattr(model, "model", None)
        return inner if isinstance(inner, nn.Module) and hasattr(inner, "language_model") else model

    def language_model(self, model: nn.Module) -> nn.Module:
        return self.base_model(model).language_model

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers

    def text_config(self, model: nn.Module) -> Any:
        return self.language_model(model).config

    def input_norm(self, layer: nn.Module) -> nn.Module:
        """The norm whose output the layer's q/k projections read (what selectors score)."""
        return layer.input_layernorm

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def batch_images(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """One batch's `key` input from its samples' values (each sample's images, in order)."""
        return torch.cat(values)

    def visual_token_ids(self, config: Any) -> list[int]:
        ids = (getattr(config, attr, None) for attr in self.visual_token_id_attrs)
        return [i for i in ids if i is not None]

    def visual_mask(self, model: nn.Module, call: dict[str, Any]) -> torch.Tensor | None:
        """`(batch, seq)` bool of visual placeholders in this call's `input_ids`, or None for a text-only call.

        Only calls that carry visual inputs have visual tokens: a generated token may equal `image_token_id`.
        """
        if all(call.get(key) is None for key in self.visual_input_keys):
            return None
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise ValueError(
                "alvts routing locates visual tokens by their placeholder ids, so the call needs `input_ids`; "
                "got only `inputs_embeds`. Pass `input_ids` (as the model's processor returns them)."
            )
        ids = torch.tensor(self.visual_token_ids(self.base_model(model).config), device=input_ids.device)
        return torch.isin(input_ids, ids)
