"""Per-layer routing inside vLLM's V1 engine, for any decoder stack that vLLM runs as
`hidden, residual = layer(positions, hidden, residual)` (the family files say where the stack is).

One step of the engine is one flattened batch of tokens from several requests (prefills and decodes mixed). For
each routed layer:
- at a request's prefill, its text and the policy's top-k visual tokens go through (alvts's `select_slots`, scored
  on that request's tokens alone, as alvts in transformers scores a batch of one); the other visual tokens skip the
  layer: vLLM's residual stream is `hidden + residual`, so a skipped token keeps its pair (at layer 0, where
  `residual` is None, it leaves as `(0, hidden)`);
- the layer gets its own attention metadata, built by the attention backend's own metadata builder from the step's
  `CommonAttentionMetadata` with the layer's query lengths, sequence lengths and slot mapping: its paged KV holds
  only what went through it, in order, compacted at the front of the request's blocks;
- decode steps send every token through, with the layer's own sequence lengths and slots.
A request's state is the number of visual tokens each layer skipped, keyed by its first KV block (unique while the
request lives: prefix caching is refused), reset when a request starts.

The runner builds the step's metadata before the forward; the routed backend (`routed_backend`) wraps the
backend's builder to hand the model the `CommonAttentionMetadata` it was given, and per-layer metadata come from
extra instances of the same builder class (one per distinct layer metadata in a step, so builders that keep
persistent buffers, like FlashInfer's, never overwrite a metadata still in use).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...routing import LayerInputs
from ...routing.core import rank_base, select_slots

if TYPE_CHECKING:
    from .config import ResolvedRouting


@dataclass
class StepInbox:
    """What reaches the model from outside its forward: the step's common attention metadata (from the builder),
    the visual mask (from `embed_input_ids`), and how to build more metadata like the runner's."""

    common: Any = None  # vllm.v1.attention.backend.CommonAttentionMetadata of the coming forward
    visual: torch.Tensor | None = None  # (num_tokens,) bool
    builder_cls: type | None = None
    builder_args: tuple | None = None  # (kv_cache_spec, layer_names, vllm_config, device)
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    pool: list[Any] = field(default_factory=list)  # extra builders, one per distinct layer metadata of a step

    def builder(self, i: int) -> Any:
        while len(self.pool) <= i:
            self.pool.append(self.builder_cls(*self.builder_args, **self.builder_kwargs))
        return self.pool[i]


def routed_backend(backend: type, inbox: StepInbox) -> type:
    """A subclass of the attention `backend` whose metadata builder also hands each step's common metadata to
    `inbox`. Everything else (kernels, KV layout, name) is the backend's own."""
    stock_builder = backend.get_builder_cls()

    class Builder(stock_builder):
        def __init__(
            self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any, device: Any, **kwargs: Any
        ) -> None:
            super().__init__(kv_cache_spec, layer_names, vllm_config, device, **kwargs)
            # the spec holds the kernel's block size, which the block table the builder gets is counted in
            inbox.builder_cls, inbox.builder_args = stock_builder, (kv_cache_spec, layer_names, vllm_config, device)
            inbox.builder_kwargs = kwargs

        def build(self, common_prefix_len: int, common_attn_metadata: Any, *args: Any, **kwargs: Any) -> Any:
            inbox.common = common_attn_metadata
            return super().build(common_prefix_len, common_attn_metadata, *args, **kwargs)

    class Backend(backend):
        @staticmethod
        def get_builder_cls() -> type:
            return Builder

    Builder.__name__ = Builder.__qualname__ = f"Routed{stock_builder.__name__}"
    Backend.__name__ = Backend.__qualname__ = f"Routed{backend.__name__}"
    return Backend


@dataclass(frozen=True)
class _Request:
    key: int  # first KV block id
    start: int  # query range [start, end) in the step's flattened tokens
    end: int
    computed: int  # tokens already in its KV before this step (every layer counts them all)
    visual: torch.Tensor | None  # (end - start,) bool on the model's device, when this step carries visual tokens


@dataclass
class _LayerPlan:
    """One routed layer in one step: its attention metadata, slots, and the query length of each request."""

    metadata: Any
    slot_mapping: torch.Tensor
    query_lens: list[int]
    kv_lens: list[int]
    gather: bool  # some request sends only part of its tokens (or always_gather)


@dataclass
class StepPlan:
    requests: list[_Request]
    layers: list[_LayerPlan | None]  # None: the step's stock metadata, every token
    seq_lens: list[int]  # each request's tokens after this step (a stock layer's KV length)
    rotary: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # `rotary_table`s


class VllmRouter:
    """Routes one vLLM decoder stack. `layers` are its decoder layers; `attention(layer)` its vLLM `Attention`;
    `input_norm(layer)` its input RMSNorm; `rotary_embedding(layer)` its rotary embedding (what a rotary-form
    selector reads positions from)."""

    def __init__(
        self,
        resolved: ResolvedRouting,
        layers: Sequence[nn.Module],
        attention: Callable[[nn.Module], nn.Module],
        input_norm: Callable[[nn.Module], nn.Module],
        rotary_embedding: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.policy, self.schedule, self.config = resolved.policy, resolved.schedule, resolved.config
        self.layers, self.attention, self.input_norm = list(layers), attention, input_norm
        self.rotary_embedding = rotary_embedding if getattr(self.policy, "form", None) == "rotary" else None
        self.inbox = StepInbox()
        self.skipped: dict[int, list[int]] = {}  # request key -> visual tokens each layer skipped
        self.records: deque[dict] = deque(maxlen=256)  # with config.record: one entry per routed step
        for layer in self.layers:
            attn = attention(layer)
            attn.attn_backend = routed_backend(attn.attn_backend, self.inbox)

    # -- inputs from outside the forward ---------------------------------------------------------------------------
    def see_visual(self, is_multimodal: torch.Tensor | None) -> None:
        """Called from `embed_input_ids`: which of the step's tokens are visual."""
        self.inbox.visual = None if is_multimodal is None else is_multimodal.to(torch.bool)

    # -- planning --------------------------------------------------------------------------------------------------
    def plan(self, num_tokens: int) -> StepPlan | None:
        """Every layer's metadata for the coming forward, or None when no layer needs its own (the stock forward)."""
        common, visual = self.inbox.common, self.inbox.visual
        self.inbox.common = self.inbox.visual = None
        if common is None:  # a dummy or profiling run: no KV cache yet
            return None
        num_reqs = common.num_reqs
        starts = common.query_start_loc_cpu[: num_reqs + 1].tolist()
        if starts[-1] != num_tokens or common.num_actual_tokens != num_tokens:
            raise RuntimeError(
                f"alvts: the step has {num_tokens} tokens but its attention metadata {common.num_actual_tokens} "
                f"({starts[-1]} scheduled); padded batches (CUDA graphs) are not supported, run with enforce_eager."
            )
        seq_source = common.seq_lens_cpu_upper_bound
        seq_lens = (seq_source if seq_source is not None else common.seq_lens)[:num_reqs].tolist()
        keys = common.block_table_tensor[:num_reqs, 0].tolist()
        if visual is not None and visual.shape[0] != num_tokens:
            visual = None  # the mask of another call (a dummy run)
        if visual is not None:
            visual = visual.cpu()
            if not visual.any():
                visual = None
        num_layers = len(self.layers)
        requests, step_skip, past_skip = [], [], []
        for r in range(num_reqs):
            start, end = starts[r], starts[r + 1]
            computed = seq_lens[r] - (end - start)
            if computed == 0:
                self.skipped.pop(keys[r], None)  # a new request (its first block may have served a finished one)
            past = self.skipped.get(keys[r], [0] * num_layers)
            mask = None if visual is None else visual[start:end]
            n_visual = 0 if mask is None else int(mask.sum())
            skip = [0] * num_layers
            if n_visual:
                if keys[r] in self.skipped:
                    raise RuntimeError(
                        "alvts: a request's visual tokens arrived in two steps; routing needs them in one step "
                        "(enable_chunked_prefill=False)."
                    )
                budgets = self.schedule.budgets(torch.tensor([n_visual]))[:, 0].tolist()
                skip = [n_visual - k for k in budgets]
            else:
                mask = None
            if mask is not None:
                mask = mask.to(common.query_start_loc.device)
            requests.append(_Request(keys[r], start, end, computed, mask))
            step_skip.append(skip)
            past_skip.append(past)
            if any(skip) or keys[r] in self.skipped:
                self.skipped[keys[r]] = [a + b for a, b in zip(past, skip, strict=True)]
        force = self.config.always_gather
        if not force and not any(any(s) for s in itertools.chain(step_skip, past_skip)):
            return None
        plans: list[_LayerPlan | None] = []
        built: dict[tuple, _LayerPlan] = {}
        for layer_idx in range(num_layers):
            skips = [s[layer_idx] for s in step_skip]
            pasts = [p[layer_idx] for p in past_skip]
            if not force and not any(skips) and not any(pasts):
                plans.append(None)
                continue
            query_lens = [q.end - q.start - s for q, s in zip(requests, skips, strict=True)]
            kv_before = [q.computed - p for q, p in zip(requests, pasts, strict=True)]
            signature = (tuple(query_lens), tuple(kv_before))
            if signature not in built:
                built[signature] = self._layer_metadata(common, query_lens, kv_before, len(built))
            plan = built[signature]
            gather = force or any(skips)
            plans.append(plan if plan.gather == gather else _LayerPlan(**{**plan.__dict__, "gather": gather}))
        return StepPlan(requests, plans, seq_lens)

    def _layer_metadata(self, common: Any, query_lens: list[int], kv_before: list[int], slot: int) -> _LayerPlan:
        """Metadata for a layer whose request r stores `query_lens[r]` new keys after its `kv_before[r]` ones, at the
        front of the request's own blocks, built by the backend's own builder."""
        device = common.query_start_loc.device
        block_size = self.inbox.builder_args[0].block_size
        kv_lens = [b + q for b, q in zip(kv_before, query_lens, strict=True)]
        starts = [0, *itertools.accumulate(query_lens)]
        rows = torch.repeat_interleave(torch.arange(len(query_lens)), torch.tensor(query_lens))
        positions = torch.cat([torch.arange(b, b + q) for b, q in zip(kv_before, query_lens, strict=True)])
        rows, positions = rows.to(device), positions.to(device)
        blocks = common.block_table_tensor[rows, positions // block_size].to(common.slot_mapping.dtype)
        slot_mapping = blocks * block_size + positions % block_size
        cpu_starts = torch.tensor(starts, dtype=common.query_start_loc_cpu.dtype)
        cpu_kv = torch.tensor(kv_lens, dtype=common.seq_lens.dtype)
        layer_common = common.replace(
            query_start_loc=cpu_starts.to(device=device, dtype=common.query_start_loc.dtype),
            query_start_loc_cpu=cpu_starts,
            seq_lens=cpu_kv.to(device),
            seq_lens_cpu_upper_bound=cpu_kv,
            num_actual_tokens=starts[-1],
            max_query_len=max(query_lens),
            max_seq_len=max(kv_lens),
            slot_mapping=slot_mapping,
            positions=None,
            _num_computed_tokens_cache=None,
            _token_to_req_indices_cache=None,
        )
        metadata = self.inbox.builder(slot).build(0, layer_common)
        return _LayerPlan(metadata, slot_mapping, query_lens, kv_lens, gather=False)

    # -- the forward -----------------------------------------------------------------------------------------------
    def run_layers(
        self,
        plan: StepPlan,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None = None,
        additions: dict[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder stack on the step's tokens: stock layers where the plan has none, routed ones elsewhere;
        `additions[layer]` is added to every token's stream after that layer, skipped or not (DeepStack)."""
        from vllm.forward_context import get_forward_context

        context = get_forward_context()
        record = {"requests": [q.key for q in plan.requests], "kept": {}, "kv_lens": {}} if self.config.record else None
        for layer_idx, layer in enumerate(self.layers):
            layer_plan = plan.layers[layer_idx]
            if layer_plan is None:
                hidden, residual = layer(positions, hidden, residual)
                if additions is not None and layer_idx in additions:
                    hidden = hidden + additions[layer_idx]
                if record is not None:
                    record["kv_lens"][layer_idx] = list(plan.seq_lens)
                continue
            name = self.attention(layer).layer_name
            saved = context.attn_metadata[name], context.slot_mapping.get(name)
            context.attn_metadata[name], context.slot_mapping[name] = layer_plan.metadata, layer_plan.slot_mapping
            try:
                if layer_plan.gather:
                    hidden, residual = self._routed_layer(
                        layer_idx, layer, layer_plan, plan, positions, hidden, residual, record
                    )
                else:
                    hidden, residual = layer(positions, hidden, residual)
            finally:
                context.attn_metadata[name] = saved[0]
                if saved[1] is None:
                    context.slot_mapping.pop(name, None)
                else:
                    context.slot_mapping[name] = saved[1]
            if additions is not None and layer_idx in additions:
                hidden = hidden + additions[layer_idx]
            if record is not None:
                record["kv_lens"][layer_idx] = list(layer_plan.kv_lens)
        if record is not None:
            self.records.append(record)
        return hidden, residual

    def _routed_layer(
        self,
        layer_idx: int,
        layer: nn.Module,
        layer_plan: _LayerPlan,
        plan: StepPlan,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        record: dict | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stream = hidden if residual is None else hidden + residual  # what the layer's fused add-norm reads
        idx = self._select(layer_idx, layer, layer_plan, plan, positions, stream, record)
        sub_hidden, sub_residual = layer(positions[..., idx], hidden[idx], None if residual is None else residual[idx])
        out_hidden = torch.zeros_like(hidden) if residual is None else hidden.clone()
        out_residual = (hidden if residual is None else residual).clone()
        out_hidden[idx] = sub_hidden
        out_residual[idx] = sub_residual
        return out_hidden, out_residual

    def _select(
        self,
        layer_idx: int,
        layer: nn.Module,
        layer_plan: _LayerPlan,
        plan: StepPlan,
        positions: torch.Tensor,
        stream: torch.Tensor,
        record: dict | None,
    ) -> torch.Tensor:
        """`(tokens through the layer,)` indices into the step's tokens, in order: per request, its text and top-k
        visual tokens at prefill, all of its tokens otherwise."""
        norm = self.input_norm(layer)
        pieces = []
        for r, request in enumerate(plan.requests):
            width = layer_plan.query_lens[r]
            if request.visual is None:
                pieces.append(torch.arange(request.start, request.end, device=stream.device))
                continue
            x = stream[request.start : request.end]
            visual = request.visual[None]
            valid = torch.ones_like(visual)
            rotary = None
            if self.rotary_embedding is not None:  # once per step and request: layers share vLLM's rotary module
                module = self.rotary_embedding(layer)
                key = id(module), r
                if key not in plan.rotary:
                    plan.rotary[key] = rotary_table(module, positions[..., request.start : request.end])
                rotary = plan.rotary[key]
            scores = self.policy.scores(
                LayerInputs(
                    layer_idx=layer_idx,
                    layer=layer,
                    attention=layer,
                    norm=norm,
                    hidden_states=x[None],
                    visual=visual,
                    valid=valid,
                    position_embeddings=rotary,
                    _normed=norm(x)[None],
                )
            )
            local = select_slots(scores, visual, rank_base(valid, visual), width)[0]
            if record is not None:
                kept = local[visual[0][local]] + request.computed
                record["kept"].setdefault(layer_idx, {})[request.key] = kept.tolist()
            pieces.append(local + request.start)
        return torch.cat(pieces)

    # -- the fitted selector's check ---------------------------------------------------------------------------------
    def layer_weights(self, qk: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]]):
        """Each layer's full q, k and input-norm weights for the pack fingerprint, from `qk(layer)` (the family
        says how to cut its fused, sharded projection)."""
        for layer in self.layers:
            q, k = qk(layer)
            yield q, k, self.input_norm(layer).weight


def rotary_table(rotary_embedding: nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A vLLM rotary embedding at `positions` as transformers lays its table out: `(1, tokens, head_dim)` cos and
    sin. The vector [1, ..., 1, 0, ..., 0] rotated by the layer's own module holds cos in its first half and sin in
    its second, whatever its scaling or M-RoPE sections."""
    head = rotary_embedding.head_size
    if rotary_embedding.rotary_dim != head or not rotary_embedding.is_neox_style:
        raise ValueError(
            "A rotary-form selector pack needs RoPE over the whole head in rotate-half (neox) style; this model "
            f"rotates {rotary_embedding.rotary_dim} of {head} dimensions (neox style: "
            f"{rotary_embedding.is_neox_style}). Use a pack calibrated with --form merged."
        )
    tokens = positions.shape[-1]
    unit = torch.zeros(tokens, head, dtype=rotary_embedding.cos_sin_cache.dtype, device=positions.device)
    unit[:, : head // 2] = 1
    rotated, _ = rotary_embedding(positions, unit, unit.clone())
    cos, sin = rotated.float().chunk(2, dim=-1)
    return torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]


def fused_qk(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The full q and k weights of a vLLM attention module with a fused, tensor-parallel `qkv_proj` (rows: this
    rank's q heads, k heads, v heads): each rank's slices gathered in rank order, replicated k heads once."""
    from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_gather

    weight = attention.qkv_proj.weight.detach()
    q = weight[: attention.q_size]
    k = weight[attention.q_size : attention.q_size + attention.kv_size]
    if get_tensor_model_parallel_world_size() == 1:
        return q, k
    q = tensor_model_parallel_all_gather(q.contiguous(), dim=0)
    k_all = tensor_model_parallel_all_gather(k.contiguous(), dim=0).chunk(get_tensor_model_parallel_world_size())
    replicas = getattr(attention.qkv_proj, "num_kv_head_replicas", 1)
    return q, torch.cat(k_all[::replicas])


def check_pack_weights(pack: Any, layer_weights: Any) -> None:
    """Refuse a pack fitted on other weights: the q/k/norm digest of the loaded model against the pack's."""
    from ...packs import qk_norm_digest
    from .config import AlvtsConfigError

    expected = pack.config.fingerprint.get("qk_norm_sha256")
    if expected is not None and qk_norm_digest(layer_weights) != expected:
        raise AlvtsConfigError(
            f"alvts: the selector pack {pack.source!r} was fitted on {pack.config.base_model!r}, whose q/k/norm "
            "weights differ from the loaded model's (qk_norm_sha256). Use a pack fitted on this model "
            "(alvts-calibrate)."
        )
