"""The routing core: at each decoder layer, text tokens and the policy's top-k visual tokens go through the layer;
the other visual tokens skip it unchanged and are put back in place. Knows no model family (see `adapters`).

Mechanics: each decoder layer's `forward` is replaced on the instance
(class, parameter names and output-capture hooks stay stock). The replacement gathers the kept tokens, with their
rotary (cos, sin), into a sub-sequence in original order (a sample that keeps fewer than the widest fills its spare
slots, after all its kept ones, with unkept tokens: causal attention hides them from every kept token, the cache
marks them invalid, and they are put back unchanged), builds that layer's own causal mask against its own cache
length, calls the stock layer, and scatters the outputs back. A forward pre-hook on the multimodal
model reads which tokens are visual and valid, plans every layer's gather width in one host transfer (layers never
wait on the device), and swaps in a `RoutedCache` or `RoutedStaticCache`; a hook on the language model advances the
cache's logical length. The decode step of a static cache traces as one graph (torch.compile, fullgraph).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..compat import (
    GENERATE_MASK_METHOD,
    causal_mask,
    gather_rotary,
    pass_2d_mask,
    skip_stock_mask,
    unused_static_cache_length,
    varlen_attention,
)
from .adapters import FamilyAdapter
from .budget import KeepSchedule
from .cache import RoutedCache, RoutedStaticCache
from .policy import LayerInputs, Policy

SUPPORTED_ATTENTION = ("eager", "sdpa")


class Selections(Mapping[int, torch.Tensor]):
    """layer -> `(batch, seq)` bool, the visual tokens that went through that layer. A routed layer records only its
    gather indices; its mask is built when first read, so routing pays nothing for the record."""

    def __init__(self, visual: torch.Tensor | None = None):
        self.visual = visual
        self._masks: dict[int, torch.Tensor] = {}
        self._gathered: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def record_all(self, layer_idx: int) -> None:
        self._masks[layer_idx] = self.visual

    def record_gathered(self, layer_idx: int, idx: torch.Tensor, slot_valid: torch.Tensor | None) -> None:
        self._masks.pop(layer_idx, None)
        self._gathered[layer_idx] = (idx, slot_valid)

    def __getitem__(self, layer_idx: int) -> torch.Tensor:
        if layer_idx not in self._masks:
            idx, slot_valid = self._gathered[layer_idx]
            went = torch.zeros_like(self.visual)
            went = went.scatter_(1, idx, True) if slot_valid is None else went.scatter_(1, idx, slot_valid)
            self._masks[layer_idx] = went & self.visual
        return self._masks[layer_idx]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._masks.keys() | self._gathered.keys()))

    def __len__(self) -> int:
        return len(self._masks.keys() | self._gathered.keys())


@dataclass
class RoutingState:
    """What the last call that carried visual tokens selected, per layer: for tests, debugging and calibration."""

    visual: torch.Tensor | None = None  # (batch, seq) bool
    selected: Selections = field(default_factory=Selections)  # layer -> (batch, seq) bool, went through

    def visual_kept(self) -> torch.Tensor:
        """`(num_layers, batch)` number of visual tokens that went through each layer."""
        return torch.stack([self.selected[i].sum(1) for i in self.selected])


@dataclass
class _Call:
    """Per-forward context, set by the pre-hook and read by every routed layer."""

    valid: torch.Tensor  # (batch, seq) bool
    visual: torch.Tensor | None  # (batch, seq) bool, valid visual tokens; None for a text-only call
    cache: RoutedCache | RoutedStaticCache | None
    plans: list[_LayerPlan]
    rank_base: torch.Tensor | None = None  # (batch, seq) fp32: +inf at valid text, -inf at padding (ranked first/last)
    slots: list[SlotLayout | None] = field(default_factory=list)  # per layer, for padded gathered layers
    rows: torch.Tensor | None = None  # (batch, 1) row indices, for gathering (batch, width) slots
    shared_rows: torch.Tensor | None = None  # (batch, 1) zeros: every row reads a batch-shared rotary table
    previous_hidden: torch.Tensor | None = None  # last layer's input, kept only for policies that ask
    positions: torch.Tensor | None = None  # logical positions of the call's tokens (-1: padding), shared by layers
    attention: str = "sdpa"  # the decoder's attention implementation: "eager", "sdpa" or "varlen"


@dataclass(frozen=True)
class SlotLayout:
    """Where a padded layer's spare slots are: after each row's `kept` tokens. Depends only on the budgets, so the
    pre-hook builds it once per forward for every layer with the same budgets."""

    valid: torch.Tensor  # (batch, width) bool: slot j < kept
    shift: torch.Tensor  # (batch, width) long: 0 at kept slots, seq at spare ones (sorts spare slots last)
    valid_column: torch.Tensor  # (batch, width, 1) bool: `valid` against hidden states

    @classmethod
    def build(cls, kept: torch.Tensor, width: int, seq: int) -> SlotLayout:
        valid = torch.arange(width, device=kept.device) < kept
        return cls(valid, (~valid).long() * seq, valid[..., None])


@dataclass(frozen=True)
class _LayerPlan:
    """Host-side shape of one layer's routing, known before the layer runs (so layers never wait on the device)."""

    width: int | None  # slots of the gathered sub-sequence; None: every token goes through, nothing is gathered
    padded: bool  # some slot holds no valid token, so the layer needs a padding mask


def rank_base(valid: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """`(batch, seq)` fp32 rank keys of the non-visual tokens: +inf for valid text (always kept), -inf for padding."""
    return torch.where(valid, float("inf"), float("-inf")).masked_fill(visual, 0.0)


def select_slots(
    scores: torch.Tensor, visual: torch.Tensor, base: torch.Tensor, width: int, slots: SlotLayout | None = None
) -> torch.Tensor:
    """`(batch, width)` indices of the tokens one routed layer gathers: each row's valid text and its highest-scoring
    visual tokens in original order (so causal-by-slot is causal-by-position).

    With `slots`, rows that keep fewer than `width` tokens fill their spare slots with their next-ranked tokens,
    in original order after every kept one (causal attention then hides them from the kept tokens). Visual ties go
    to the earlier position; NaN scores rank last among visual tokens."""
    finfo = torch.finfo(torch.float32)
    visual_keys = scores.float().nan_to_num(nan=finfo.min, posinf=finfo.max, neginf=finfo.min)
    ranked = torch.where(visual, visual_keys, base).sort(dim=1, descending=True, stable=True).indices[:, :width]
    if slots is None:
        return ranked.sort(dim=1).values
    return (ranked + slots.shift).sort(dim=1).values - slots.shift


def _no_past_keys(cache: RoutedCache | RoutedStaticCache | None, layer_idx: int) -> bool:
    """Whether a layer's queries are its only keys (a host sync for a static cache: never in its decode step)."""
    return cache is None or cache.get_query_offset(layer_idx) == 0


class Router:
    """Routes visual tokens through the decoder layers of one model. Created and installed by `alvts.apply`."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, policy: Policy, schedule: KeepSchedule):
        self.adapter = adapter
        self.policy = policy
        self.schedule = schedule
        self.base = adapter.base_model(model)
        self.layers = adapter.decoder_layers(model)
        self.text_config = adapter.text_config(model)
        self.state = RoutingState()
        self._model = model
        self._call: _Call | None = None
        parameters = inspect.signature(self.base.forward).parameters.values()
        self._positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]  # may come by position
        self._handles: list[Any] = []
        self._saved_forwards: dict[int, Any] = {}
        self._saved_masks: Any = None

    # -- install / uninstall ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise before touching the model if it cannot be routed."""
        if self.schedule.num_layers() != len(self.layers):
            raise ValueError(f"The budget has {self.schedule.num_layers()} layers, the model {len(self.layers)}.")
        layer_types = set(getattr(self.text_config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(
                f"alvts routes full-attention decoders only; this model has layer types {sorted(layer_types)} "
                "(sliding-window attention is defined on positions that routed layers do not keep contiguous)."
            )
        self._check_attention()

    def _check_attention(self) -> str:
        """The decoder's attention kind ("eager", "sdpa" or "varlen"), or an error saying it cannot be routed."""
        impl = self.text_config._attn_implementation
        if varlen_attention(impl):
            return "varlen"
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"alvts routing supports attn_implementation in {SUPPORTED_ATTENTION} or a varlen one "
                f"(flash_attention_2/3/4), the model uses {impl!r}. Call model.set_attn_implementation('sdpa') first."
            )
        return impl

    def install(self) -> None:
        self.check()
        for i, layer in enumerate(self.layers):
            self._saved_forwards[i] = layer.__dict__.get("forward")  # an instance-level forward (accelerate) or None
            layer.forward = functools.partial(self._layer_forward, i, layer, layer.forward)
        # generate() turns the 2-D mask into 4-D masks sized for a static cache's layer 0; routed layers build their
        # own from the 2-D mask, so generate() passes it through
        self._saved_masks = self._model.__dict__.get(GENERATE_MASK_METHOD)
        setattr(self._model, GENERATE_MASK_METHOD, pass_2d_mask)
        language_model = self.adapter.language_model(self._model)
        self._handles = [
            self.base.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            language_model.register_forward_pre_hook(skip_stock_mask, with_kwargs=True),
            language_model.register_forward_hook(self._after_language_model),
        ]

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, name, saved in [
            *((layer, "forward", self._saved_forwards[i]) for i, layer in enumerate(self.layers)),
            (self._model, GENERATE_MASK_METHOD, self._saved_masks),
        ]:
            if saved is None:
                delattr(owner, name)
            else:
                setattr(owner, name, saved)
        self._handles, self._saved_forwards, self._call = [], {}, None

    # -- hooks --------------------------------------------------------------------------------------------------
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Read visual/valid tokens of this call, plan its layers and make sure its cache is a routed one."""
        attention = self._check_attention()
        if len(args) > len(self._positional):
            raise TypeError(f"{type(module).__name__}.forward takes {len(self._positional)} positional arguments.")
        call = dict(zip(self._positional, args, strict=False), **kwargs)  # not inspect's bind: compile can't trace it
        tokens = call.get("input_ids") if call.get("input_ids") is not None else call.get("inputs_embeds")
        batch, seq = tokens.shape[:2]
        mask = call.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"alvts routing needs a 2-D attention_mask (batch, seq), got shape {tuple(mask.shape)}.")
        valid = (
            torch.ones(batch, seq, dtype=torch.bool, device=tokens.device)
            if mask is None
            else mask[:, -seq:].to(device=tokens.device, dtype=torch.bool)
        )
        visual = self.adapter.visual_mask(self._model, call)
        if visual is not None:
            visual = visual & valid
            self.state = RoutingState(visual=visual, selected=Selections(visual))
        use_cache = call.get("use_cache")
        if use_cache is None:
            use_cache = self.text_config.use_cache
        cache = self._routed_cache(call.get("past_key_values"), use_cache)
        call["past_key_values"] = cache
        plan = self._plan(valid, visual, cache)
        router_logits = call.get("output_router_logits")
        if router_logits is None:
            router_logits = getattr(self.text_config, "output_router_logits", False)
        if router_logits and any(layer.width is not None for layer in plan.plans):
            raise ValueError(
                "output_router_logits=True with routed layers: the MoE auxiliary loss spreads the whole sequence's "
                "attention mask over every layer's router logits, but a routed layer's router sees only the tokens "
                "that go through it. Call without output_router_logits (inference needs no auxiliary loss), or route "
                "at keep 1.0."
            )
        if isinstance(cache, RoutedStaticCache) and attention == "varlen":
            raise ValueError(
                f"A static cache with attn_implementation={self.text_config._attn_implementation!r}: varlen kernels "
                "size keys by each layer's filled length, which a static cache keeps on the device. Use the dynamic "
                "cache (generate()'s default), or model.set_attn_implementation('sdpa') for static caches and "
                "compiled decoding."
            )
        plan.attention = attention
        self._call = plan
        if isinstance(cache, RoutedStaticCache) and not cache.is_sized:
            keys = [seq if plan.width is None else plan.width for plan in self._call.plans]
            cache.size_layers(keys, seq, batch, tokens.device)
        return (), call

    def _plan(self, valid: torch.Tensor, visual: torch.Tensor | None, cache: Any) -> _Call:
        """Every layer's budgets and gather width for this call, read back to the host in one transfer."""
        seq = valid.shape[1]
        if visual is None:  # nothing to route; a static cache masks every step anyway, so it needs no check
            padded = isinstance(cache, RoutedStaticCache) or not bool(valid.all())
            return _Call(valid, visual, cache, plans=[_LayerPlan(None, padded)] * len(self.layers))
        n_visual, n_valid = visual.sum(1), valid.sum(1)
        budgets = self.schedule.budgets(n_visual)
        kept = n_valid - n_visual + budgets  # (layers, batch) tokens through each layer
        *kept_rows, valid_row = torch.cat([kept, n_valid[None]]).tolist()  # the call's one host transfer
        plans = []
        for counts in kept_rows:
            if counts == valid_row:  # every visual token goes through: the stock layer on the whole sequence
                plans.append(_LayerPlan(None, padded=min(valid_row) < seq))
            else:
                plans.append(_LayerPlan(width=max(counts), padded=min(counts) < max(counts)))
        if all(plan.width is None for plan in plans):
            return _Call(valid, visual, cache, plans=plans)
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None]
        layouts: dict[tuple, SlotLayout] = {}
        slots = []
        for layer_idx, (plan, counts) in enumerate(zip(plans, kept_rows, strict=True)):
            if plan.width is None or not plan.padded:
                slots.append(None)
                continue
            key = (plan.width, tuple(counts))
            if key not in layouts:
                layouts[key] = SlotLayout.build(kept[layer_idx, :, None], plan.width, seq)
            slots.append(layouts[key])
        return _Call(valid, visual, cache, plans, rank_base(valid, visual), slots, rows, rows * 0)

    def _routed_cache(self, cache: Any, use_cache: bool) -> RoutedCache | RoutedStaticCache | None:
        if isinstance(cache, (RoutedCache, RoutedStaticCache)):
            return cache
        if cache is None:
            return RoutedCache(config=self.text_config) if use_cache else None
        if type(cache) is DynamicCache and cache.get_seq_length() == 0:
            return RoutedCache(config=self.text_config)
        max_cache_len = unused_static_cache_length(cache)  # generate(cache_implementation="static")
        if max_cache_len is not None:
            return RoutedStaticCache(config=self.text_config, max_cache_len=max_cache_len)
        raise ValueError(
            f"A routed model needs a RoutedCache or RoutedStaticCache (per-layer key counts differ), got a "
            f"{type(cache).__name__} holding {int(cache.get_seq_length())} tokens. Pass no cache, an empty "
            "DynamicCache or StaticCache, or alvts.RoutedCache(config=model.config)."
        )

    def _after_language_model(self, module: nn.Module, args: tuple, output: Any) -> None:
        call, self._call = self._call, None
        if call is not None and call.cache is not None:
            call.cache.advance(call.valid.shape[1])

    # -- the routed decoder layer ----------------------------------------------------------------------------------
    def _layer_forward(
        self,
        layer_idx: int,
        layer: nn.Module,
        stock_forward: Any,
        hidden_states: torch.Tensor,
        attention_mask: Any = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        call = self._call
        if call is None or tuple(hidden_states.shape[:2]) != tuple(call.valid.shape):
            raise RuntimeError(
                "A routed decoder layer was called outside the routed model's forward. Call the model itself, "
                "or alvts.remove(model) to use its layers directly."
            )
        batch, seq = call.valid.shape
        cos, sin = position_embeddings
        if cos.shape[-2] != seq:
            raise RuntimeError(f"Rotary embeddings cover {cos.shape[-2]} tokens, the layer input {seq}.")
        plan = call.plans[layer_idx]
        if plan.width is None:
            if call.visual is not None:
                self.state.selected.record_all(layer_idx)
            idx, slot_valid, sub = None, call.valid, hidden_states
        else:
            idx, slot_valid = self._select(layer_idx, layer, hidden_states, position_embeddings, call, plan)
            sub = hidden_states[call.rows, idx]
            position_embeddings = (self._gather_rotary(cos, call, idx), self._gather_rotary(sin, call, idx))
            position_ids = None  # rotary already carries the true positions; ids with gaps would look "packed"
        if self.policy.needs_previous_hidden:
            call.previous_hidden = hidden_states

        cache = call.cache
        mask_2d = slot_valid if plan.padded else None  # None: nothing padded, the stock causal path (is_causal)
        if cache is not None:
            mask_2d = cache.record_keys(layer_idx, self._positions(call, idx, slot_valid, plan), padded=plan.padded)
        if idx is not None and not isinstance(cache, RoutedStaticCache) and _no_past_keys(cache, layer_idx):
            mask_2d = None  # spare slots come after every kept token: the causal mask alone hides them
        sdpa = call.attention == "sdpa"
        if call.attention == "varlen":
            layer_mask = mask_2d  # the kernel unpads by key validity and aligns causality at the end (None: causal)
        elif mask_2d is None and sdpa and (sub.shape[1] == 1 or _no_past_keys(cache, layer_idx)):
            layer_mask = None  # what create_causal_mask returns here (is_causal), without its per-layer Python cost
        elif mask_2d is not None and sdpa and sub.shape[1] == 1:
            layer_mask = mask_2d[:, None, None, :]  # one query, the newest: it sees every valid key (sdpa's bool mask)
        else:
            # a padded mask is never all ones: skip the is_causal check (a sync)
            layer_mask = causal_mask(self.text_config, sub, mask_2d, cache, layer_idx, mask_2d is None)
        out = stock_forward(
            sub,
            attention_mask=layer_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        if idx is None:
            return out
        if slot_valid is not None:  # spare slots put their skipped token back unchanged
            out = torch.where(call.slots[layer_idx].valid_column, out, sub)
        return hidden_states.index_put((call.rows, idx), out)

    @staticmethod
    def _gather_rotary(table: torch.Tensor, call: _Call, idx: torch.Tensor) -> torch.Tensor:
        """The rotary rows of the gathered slots, from a per-sample table or one the batch shares `(1, seq, dim)`."""
        if table.dim() == 4:  # stacked M-RoPE sections (transformers < 5.17)
            return gather_rotary(table, idx)
        return table[call.rows if table.shape[0] == idx.shape[0] else call.shared_rows, idx]

    @staticmethod
    def _positions(
        call: _Call, idx: torch.Tensor | None, slot_valid: torch.Tensor | None, plan: _LayerPlan
    ) -> torch.Tensor | int:
        """Logical positions of the keys a layer stores (-1: padding slots): an int count when they are the call's
        tokens, all valid and in order (nothing to compute), else one tensor shared by every ungathered layer."""
        offset = call.cache.logical_len
        if idx is not None:
            positions = idx + offset if isinstance(offset, torch.Tensor) or offset else idx
            return positions if slot_valid is None else torch.where(slot_valid, positions, -1)
        if not plan.padded:
            return call.valid.shape[1]
        if call.positions is None:
            columns = torch.arange(call.valid.shape[1], device=call.valid.device)
            call.positions = torch.where(call.valid, offset + columns, -1)
        return call.positions

    def _select(
        self,
        layer_idx: int,
        layer: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings,
        call: _Call,
        plan: _LayerPlan,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's gather indices and slot validity (`select_slots`), from the policy's scores."""
        visual = call.visual
        scores = self.policy.scores(
            LayerInputs(
                layer_idx=layer_idx,
                layer=layer,
                attention=self.adapter.attention(layer),
                norm=self.adapter.input_norm(layer),
                hidden_states=hidden_states,
                visual=visual,
                valid=call.valid,
                position_embeddings=position_embeddings,
                selected=self.state.selected,
                previous_hidden=call.previous_hidden,
            )
        )
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(visual.shape):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"Policy {self.policy!r} returned scores of shape {got} at layer {layer_idx}; expected one score "
                f"per token, shape (batch, seq) = {tuple(visual.shape)}."
            )
        slots = call.slots[layer_idx]
        idx = select_slots(scores, visual, call.rank_base, plan.width, slots)
        slot_valid = None if slots is None else slots.valid
        self.state.selected.record_gathered(layer_idx, idx, slot_valid)
        return idx, slot_valid
