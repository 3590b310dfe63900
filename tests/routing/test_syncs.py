"""The router waits on the device once per forward, not once per layer: on a GPU every host sync stalls the launch
queue, and per-layer syncs were most of the routing overhead measured on the H100 (benchmarks/README.md)."""

import pytest
import torch
from conftest import batch_for

import alvts
from alvts.testing import HostSyncCounter


def test_counter_sees_scalar_reads_boolean_indexing_and_tolist():
    x = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        _ = x + 1
        assert syncs.count == 0
        _ = x[x > 2]
        _ = bool(x.sum() > 0)
        _ = x.tolist()
    assert syncs.ops == ["index", "_local_scalar_dense", "tolist"]


def _syncs(call, **inputs) -> int:
    with torch.no_grad(), HostSyncCounter() as syncs:
        call(**inputs)
    return syncs.count


@pytest.mark.parametrize("policy", ["full", "random", "oracle", "fastv", "selector"])
def test_routing_adds_one_sync_per_forward_whatever_the_layer_count(sdpa_model, policy):
    if policy == "selector":  # a fitted selector's shape: rank-8 factors for every layer of the tiny decoder
        text = sdpa_model.config.get_text_config()
        policy = alvts.LowRankSelector({i: torch.randn(text.hidden_size, 2 * 8) for i in range(text.num_hidden_layers)})
    inputs = batch_for(sdpa_model, batch_size=2)  # left padding: every layer needs a padding mask
    new = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    stock, stock_generate = _syncs(sdpa_model, **inputs), _syncs(sdpa_model.generate, **inputs, **new)
    keep = 1.0 if policy == "full" else 0.75  # fastv keeps 2 of the 4 layers dense
    with alvts.routed(sdpa_model, policy, keep=keep):
        routed, routed_generate = _syncs(sdpa_model, **inputs), _syncs(sdpa_model.generate, **inputs, **new)
    assert routed <= stock + 1, "the router reads its plan back once per forward"
    assert routed_generate <= stock_generate + new["max_new_tokens"]  # one forward per new token
