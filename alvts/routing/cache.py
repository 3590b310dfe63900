"""A dynamic KV cache whose layers hold different numbers of keys.

After routed prefill, layer i holds the keys of the text tokens plus only the visual tokens selected at layer i.
The cache therefore tracks two lengths: the *logical* length (tokens seen, what `generate()` and position
fallbacks must see) and each layer's *physical* length (keys stored, what attention masks must be sized to).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class RoutedCache(DynamicCache):
    """`DynamicCache` with a logical sequence length and, per layer, the logical position of every stored key.

    `key_positions[i]` is a `(batch, physical_len_i)` long tensor: the column of the (padded) input sequence each
    key came from, or -1 for a padding slot that holds no token. A key is valid iff its position is >= 0.
    """

    def __init__(self, config=None):
        super().__init__(config=config)
        self.logical_len = 0
        self.key_positions: dict[int, torch.Tensor] = {}
        self.padded: set[int] = set()  # layers holding a padding slot: their masks cannot be plain causal

    # -- lengths -----------------------------------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (logical), not keys stored: positions and `generate()` slicing depend on it."""
        return self.logical_len

    def get_query_offset(self, layer_idx: int = 0) -> int:
        """Keys already stored in this layer: masks are sized against the physical length."""
        return self.physical_length(layer_idx)

    def physical_length(self, layer_idx: int) -> int:
        """Number of keys (valid or padding slots) stored in one layer."""
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    def physical_lengths(self) -> list[int]:
        return [self.physical_length(i) for i in range(len(self.layers))]

    def key_valid(self, layer_idx: int) -> torch.Tensor | None:
        """`(batch, physical_len)` bool: which stored keys are real tokens; None before the layer's first update."""
        pos = self.key_positions.get(layer_idx)
        return None if pos is None else pos >= 0

    def valid_key_counts(self, layer_idx: int) -> torch.Tensor:
        """`(batch,)` number of real tokens stored in one layer."""
        valid = self.key_valid(layer_idx)
        return torch.zeros(0, dtype=torch.long) if valid is None else valid.sum(1)

    def is_padded(self, layer_idx: int) -> bool:
        """Whether a stored key of this layer is padding (known on the host: no device sync)."""
        return layer_idx in self.padded

    def append_positions(self, layer_idx: int, positions: torch.Tensor, padded: bool = True) -> None:
        """Record the logical positions of the keys a layer has just stored (called after each routed layer);
        `padded`: whether any of them is a padding slot (-1)."""
        if padded:
            self.padded.add(layer_idx)
        past = self.key_positions.get(layer_idx)
        self.key_positions[layer_idx] = positions if past is None else torch.cat([past, positions], dim=1)
        stored = self.physical_length(layer_idx)
        if self.key_positions[layer_idx].shape[1] != stored:
            raise RuntimeError(
                f"RoutedCache layer {layer_idx} stores {stored} keys but tracks "
                f"{self.key_positions[layer_idx].shape[1]} positions: the cache was updated outside the alvts router."
            )

    # -- batch and beam bookkeeping: keep positions in step with the stored keys ----------------------------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        for i, pos in self.key_positions.items():
            self.key_positions[i] = pos.index_select(0, beam_idx.to(pos.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        for i, pos in self.key_positions.items():
            self.key_positions[i] = pos.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        for i, pos in self.key_positions.items():
            self.key_positions[i] = pos[indices.to(pos.device)]

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` logical tokens (transformers 5.x convention: a count <= 0).

        Only trailing text (generated tokens, the end of a prompt) can be cropped: over a span with routed visual
        tokens, samples and layers hold different numbers of keys, and skipped keys cannot be brought back.
        """
        if tokens_to_remove > 0:
            raise ValueError(f"crop() takes a count <= 0 of tokens to remove, got {tokens_to_remove}.")
        new_len = self.logical_len - abs(tokens_to_remove)
        if tokens_to_remove == 0:
            return
        for pos in self.key_positions.values():
            n = abs(tokens_to_remove)
            if n > pos.shape[1] or not bool((pos[:, pos.shape[1] - n :] >= new_len).all()):
                raise ValueError(
                    f"Cannot crop {n} tokens from a RoutedCache: the span holds visual tokens that layers routed "
                    "differently. Only trailing text (e.g. generated tokens) can be cropped."
                )
        for i, pos in self.key_positions.items():
            self.layers[i].crop(tokens_to_remove)
            self.key_positions[i] = pos[:, : pos.shape[1] - abs(tokens_to_remove)]
        self.logical_len = new_len

    def reset(self) -> None:
        super().reset()
        self.logical_len = 0
        self.key_positions.clear()
        self.padded.clear()
