"""Every use of transformers behaviour that is private or changed within 5.x, in one place, with its version gate.

- the causal-mask builder (`masking_utils.create_causal_mask`), called per routed layer and in calibration;
- a 4-D "prebuilt" mask stand-in that makes the language model skip building a whole-sequence mask no routed layer
  reads (its mask code passes a 4-D mask through untouched);
- `create_masks_for_generate`, which generate() calls to build 4-D masks sized for a static cache's layer 0;
- `StaticCache` internals: whether it was initialised, and its per-layer `max_cache_len`;
- Qwen's multimodal rotary tables: before 5.17 the rotary embedding hands the layers the three M-RoPE sections
  stacked, `(3, batch, seq, head_dim)`, and the attention merges them; from 5.17 they arrive merged.

The M-RoPE difference is told by the table's shape, not by the version number, so a backport cannot fool it.
Supported: 5.16 to 5.23 (pyproject.toml); CI runs the whole suite on the newest and the routing tests on 5.16.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask, flash_attention_mask


def merged_rotary(table: torch.Tensor, attention: nn.Module) -> torch.Tensor:
    """A rotary table as `(batch, seq, head_dim)`: stacked M-RoPE sections (transformers < 5.17) merged the way
    the attention merges them, any other table unchanged."""
    if table.dim() != 4:
        return table
    sections = attention.config.rope_parameters["mrope_section"] * 2
    return torch.cat([part[i % 3] for i, part in enumerate(table.split(sections, dim=-1))], dim=-1)


def gather_rotary(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rotary rows of the kept tokens `index` `(batch, kept)`, in the layout the layer was given."""
    if table.dim() == 4:  # stacked M-RoPE sections: gather each
        return torch.stack([gather_rotary(section, index) for section in table])
    table = table.expand(index.shape[0], -1, -1)
    return table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]))


def varlen_attention(attn_implementation: str) -> bool:
    """Whether an attention implementation takes a 2-D key-validity mask and unpads it into variable-length
    sequences (flash_attention_2/3/4, Hub flash kernels): transformers gives it `flash_attention_mask`."""
    return ALL_MASK_ATTENTION_FUNCTIONS.get(attn_implementation) is flash_attention_mask


def causal_mask(
    config: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_key_values: Any = None,
    layer_idx: int | None = None,
    allow_is_causal_skip: bool = True,
) -> Any:
    """The mask the stock decoder layer expects for `inputs_embeds` against its cache (None: plain causal sdpa)."""
    kwargs = {"layer_idx": layer_idx} if layer_idx is not None else {}
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        past_key_values=past_key_values,
        position_ids=None,
        allow_is_causal_skip=allow_is_causal_skip,
        **kwargs,
    )


# A 4-D mask is "already built" to transformers' mask code; routed layers ignore the stock mask and build their own
PREBUILT_MASK = torch.empty(0, 0, 0, 0, dtype=torch.bool)


def skip_stock_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Pre-hook on the language model: it would build a (batch, 1, seq, seq) mask that no routed layer reads."""
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = PREBUILT_MASK
    return args, kwargs


def pass_2d_mask(attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """Stands in for the model's `create_masks_for_generate`: generate() hands routed layers the 2-D mask."""
    return attention_mask


GENERATE_MASK_METHOD = "create_masks_for_generate"


def unused_static_cache_length(cache: Any) -> int | None:
    """The `max_cache_len` of a `StaticCache` that holds nothing yet (what generate() makes for
    cache_implementation="static"), or None for any other cache."""
    if type(cache) is transformers.StaticCache and not cache.is_initialized:
        return cache.layers[0].max_cache_len
    return None
