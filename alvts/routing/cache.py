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

    `key_positions(i)` is a `(batch, physical_len_i)` long tensor: the column of the (padded) input sequence each
    key came from, or -1 for a padding slot that holds no token. A key is valid iff its position is >= 0. Calls whose
    keys are all valid and in order (every decoding step of an unpadded batch) are recorded as a count, and the
    tensor is built only when something reads it.
    """

    def __init__(self, config=None):
        super().__init__(config=config)
        self.logical_len = 0
        self._pieces: dict[int, list[torch.Tensor | tuple[int, int]]] = {}  # tensors, or (first, count) runs
        self._valid: dict[int, torch.Tensor] = {}  # layers that hold a padding slot: their key validity, kept current
        self._ones: dict[tuple, torch.Tensor] = {}

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

    def key_positions(self, layer_idx: int) -> torch.Tensor | None:
        """`(batch, physical_len)` logical position of each stored key (-1: padding); None before the first update."""
        pieces = self._pieces.get(layer_idx)
        if pieces is None:
            return None
        if len(pieces) > 1 or not isinstance(pieces[0], torch.Tensor):
            keys = self.layers[layer_idx].keys
            batch, device = keys.shape[0], keys.device
            pieces[:] = [torch.cat([
                piece if isinstance(piece, torch.Tensor)
                else torch.arange(piece[0], piece[0] + piece[1], device=device).expand(batch, -1)
                for piece in pieces
            ], dim=1)]  # fmt: skip
        return pieces[0]

    def key_valid(self, layer_idx: int) -> torch.Tensor | None:
        """`(batch, physical_len)` bool: which stored keys are real tokens; None before the layer's first update."""
        if layer_idx in self._valid:
            return self._valid[layer_idx]
        positions = self.key_positions(layer_idx)
        return None if positions is None else positions >= 0

    def valid_key_counts(self, layer_idx: int) -> torch.Tensor:
        """`(batch,)` number of real tokens stored in one layer."""
        valid = self.key_valid(layer_idx)
        return torch.zeros(0, dtype=torch.long) if valid is None else valid.sum(1)

    def advance(self, tokens: int) -> None:
        """The router saw `tokens` more logical tokens (after each forward)."""
        self.logical_len += tokens

    def record_keys(self, layer_idx: int, positions: torch.Tensor | int, padded: bool) -> torch.Tensor | None:
        """Record the logical positions `(batch, n)` of the keys a layer is about to store (-1: a padding slot), or
        their count when they are the call's n tokens, all valid and in order; `padded` says, without a device sync,
        whether there is a padding slot. Returns the layer's `(batch, keys)` validity over past and new keys, or None
        when no key of the layer was ever padding (a plain causal mask)."""
        pieces = self._pieces.get(layer_idx, [])
        tracked = sum(p.shape[1] if isinstance(p, torch.Tensor) else p[1] for p in pieces)
        if tracked != self.physical_length(layer_idx):
            raise RuntimeError(
                f"RoutedCache layer {layer_idx} stores {self.physical_length(layer_idx)} keys but tracks "
                f"{tracked} positions: the cache was updated outside the alvts router."
            )
        pieces.append((self.logical_len, positions) if isinstance(positions, int) else positions)
        self._pieces[layer_idx] = pieces
        if layer_idx in self._valid:
            past = self._valid[layer_idx]
            new = (
                self._all_valid(past.shape[0], positions, past.device) if isinstance(positions, int) else positions >= 0
            )
            self._valid[layer_idx] = torch.cat([past, new], dim=1)
        elif padded:  # tensor positions: the router passes a count only for calls without padding
            self._valid[layer_idx] = self.key_positions(layer_idx) >= 0
        return self._valid.get(layer_idx)

    def _all_valid(self, batch: int, count: int, device: torch.device) -> torch.Tensor:
        key = (batch, count, device)
        if key not in self._ones:
            self._ones[key] = torch.ones(batch, count, dtype=torch.bool, device=device)
        return self._ones[key]

    # -- batch and beam bookkeeping: keep positions in step with the stored keys ----------------------------------
    def _update(self, change) -> None:
        for i in list(self._pieces):
            self._pieces[i] = [change(self.key_positions(i))]
        for i, valid in self._valid.items():
            self._valid[i] = change(valid)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._update(lambda t: t.index_select(0, beam_idx.to(t.device)))
        super().reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._update(lambda t: t.repeat_interleave(repeats, dim=0))
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._update(lambda t: t[indices.to(t.device)])
        super().batch_select_indices(indices)

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` logical tokens (transformers 5.x convention: a count <= 0).

        Only trailing text (generated tokens, the end of a prompt) can be cropped: over a span with routed visual
        tokens, samples and layers hold different numbers of keys, and skipped keys cannot be brought back.
        """
        if tokens_to_remove > 0:
            raise ValueError(f"crop() takes a count <= 0 of tokens to remove, got {tokens_to_remove}.")
        if tokens_to_remove == 0:
            return
        n = abs(tokens_to_remove)
        new_len = self.logical_len - n
        for i in self._pieces:
            pos = self.key_positions(i)
            if n > pos.shape[1] or not bool((pos[:, pos.shape[1] - n :] >= new_len).all()):
                raise ValueError(
                    f"Cannot crop {n} tokens from a RoutedCache: the span holds visual tokens that layers routed "
                    "differently. Only trailing text (e.g. generated tokens) can be cropped."
                )
        self._update(lambda t: t[:, : t.shape[1] - n])
        for i in self._pieces:
            self.layers[i].crop(tokens_to_remove)
        self.logical_len = new_len

    def reset(self) -> None:
        super().reset()
        self.logical_len = 0
        self._pieces.clear()
        self._valid.clear()


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

    def record_keys(self, layer_idx: int, positions: torch.Tensor | int, padded: bool) -> torch.Tensor:
        """Write the positions of the keys a layer is about to store (or their count: the call's tokens, all valid)
        at its current length; return the validity of every slot (the mask is sized to the layer's buffer)."""
        store = self.key_positions[layer_idx]
        start = self.layers[layer_idx].get_seq_length()
        if isinstance(positions, int):
            positions = (self.logical_len + torch.arange(positions, device=store.device)).expand(store.shape[0], -1)
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
