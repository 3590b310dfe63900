"""KV caches whose layers hold different numbers of keys: `RoutedCache` (dynamic) and `RoutedStaticCache`.

After routed prefill, layer i holds the keys of the text tokens plus only the visual tokens selected at layer i.
The caches therefore track two lengths: the *logical* length (tokens seen, what `generate()` and position
fallbacks must see) and each layer's *physical* length (keys stored, what attention masks must be sized to).
Before a routed layer stores its keys, the router hands the cache their logical positions (`record_keys`) and gets
back the layer's key-validity mask.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache


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

    def advance(self, tokens: int) -> None:
        """The router saw `tokens` more logical tokens (after each forward)."""
        self.logical_len += tokens

    def record_keys(self, layer_idx: int, positions: torch.Tensor, padded: bool) -> torch.Tensor | None:
        """Record the logical positions `(batch, n)` of the keys a layer is about to store (-1: a padding slot;
        `padded` says, without a device sync, whether there is one). Returns the layer's `(batch, keys)` validity
        over past and new keys, or None when no key of the layer was ever padding (a plain causal mask)."""
        past = self.key_positions.get(layer_idx)
        if past is not None and past.shape[1] != self.physical_length(layer_idx):
            raise RuntimeError(
                f"RoutedCache layer {layer_idx} stores {self.physical_length(layer_idx)} keys but tracks "
                f"{past.shape[1]} positions: the cache was updated outside the alvts router."
            )
        self.key_positions[layer_idx] = positions if past is None else torch.cat([past, positions], dim=1)
        if padded:
            self.padded.add(layer_idx)
        return self.key_valid(layer_idx) if layer_idx in self.padded else None

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


class RoutedStaticCache(StaticCache):
    """`StaticCache` for a routed model (`cache_implementation="static"`, `torch.compile`): each layer's buffers are
    allocated at prefill for its own keys (text + the visual tokens it kept) plus room for the tokens still to come,
    so shapes stay fixed while decoding and KV memory follows the keep ratio.

    Lengths are 0-d tensors updated in place, as in `StaticLayer`, so compiled decoding never specialises on them.
    `key_positions[i]` is `(batch, max_cache_len_i)`: a stored key's logical position, -1 for padding or free slots.
    """

    def __init__(self, config, max_cache_len: int, **kwargs):
        super().__init__(config=config, max_cache_len=max_cache_len, **kwargs)
        self.max_logical_len = max_cache_len
        self.logical_len = torch.zeros((), dtype=torch.long)
        self.key_positions: dict[int, torch.Tensor] = {}

    @property
    def is_sized(self) -> bool:
        return bool(self.key_positions)

    def size_layers(self, keys: list[int], tokens: int, batch: int, device: torch.device) -> None:
        """Before prefill: layer i stores `keys[i]` of the `tokens` prompt tokens, then one key per later token."""
        room = self.max_logical_len - tokens
        if room < 0:
            raise ValueError(
                f"The prompt has {tokens} tokens but the static cache holds {self.max_logical_len}: "
                "raise max_cache_len (or max_new_tokens)."
            )
        self.logical_len = self.logical_len.to(device)
        for i, (layer, n) in enumerate(zip(self.layers, keys, strict=True)):
            layer.max_cache_len = n + room
            self.key_positions[i] = torch.full((batch, n + room), -1, dtype=torch.long, device=device)
        if not torch.compiler.is_compiling():
            for tensor in (self.logical_len, *self.key_positions.values()):
                torch._dynamo.mark_static_address(tensor)

    def get_seq_length(self, layer_idx: int = 0):
        """Tokens seen so far (logical), a 0-d tensor once sized (0 before), as `StaticCache` reports its length."""
        return self.logical_len if self.is_sized else 0

    def get_query_offset(self, layer_idx: int = 0):
        return self.layers[layer_idx].get_seq_length()  # keys stored (physical)

    def physical_lengths(self) -> list[int]:
        return [int(layer.get_seq_length()) for layer in self.layers]

    def key_valid(self, layer_idx: int) -> torch.Tensor:
        return self.key_positions[layer_idx] >= 0

    def valid_key_counts(self, layer_idx: int) -> torch.Tensor:
        return self.key_valid(layer_idx).sum(1)

    def advance(self, tokens: int) -> None:
        self.logical_len.add_(tokens)

    def record_keys(self, layer_idx: int, positions: torch.Tensor, padded: bool) -> torch.Tensor:
        """Write the positions of the keys a layer is about to store at its current length; return the validity of
        every slot (the mask is sized to the layer's buffer)."""
        store = self.key_positions[layer_idx]
        start = self.layers[layer_idx].get_seq_length()
        store.index_copy_(1, torch.arange(positions.shape[1], device=store.device) + start, positions)
        return store >= 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        for pos in self.key_positions.values():
            pos.copy_(pos.index_select(0, beam_idx.to(pos.device)))

    def reset(self) -> None:
        """Empty the cache; the next prefill sizes its layers again (another prompt keeps other token counts)."""
        for layer in self.layers:
            layer.__init__(max_cache_len=self.max_logical_len)
        self.logical_len = torch.zeros((), dtype=torch.long)
        self.key_positions.clear()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("RoutedStaticCache cannot be cropped; use the dynamic RoutedCache.")
