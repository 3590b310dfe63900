"""Baseline policies: each processes exactly its budget per layer, drops for good where its paper does, and selects
what its definition says."""

import math

import pytest
import torch

import alvts
from alvts.policies.baselines import staged_keeps
from alvts.policies.importance import max_min_order
from alvts.testing import tiny_inputs, tiny_model

# (policy, keep) pairs within reach of a 4-layer model
CASES = [
    (alvts.FastVPolicy(k=1), 0.4),
    (alvts.PyramidDropPolicy(stages=2), 0.6),
    (alvts.V2DropPolicy(dense_layers=1), 0.5),
    (alvts.DenseEarlyRandomPolicy(dense_layers=1), 0.4),
    (alvts.DivPrunePolicy(), 0.25),
]
DROPS_FOR_GOOD = (alvts.FastVPolicy, alvts.PyramidDropPolicy, alvts.V2DropPolicy, alvts.DivPrunePolicy)


@pytest.mark.parametrize(("policy", "keep"), CASES, ids=lambda case: getattr(case, "name", str(case)))
def test_baseline_processes_exactly_its_budget(policy, keep):
    model = tiny_model("qwen2_5_vl", "sdpa")
    batch = tiny_inputs(model, [[(1, 16, 16)], [(1, 12, 16)]])  # 64 and 48 visual tokens
    ratios = policy.layer_keeps(keep, 4)
    assert math.isclose(sum(ratios) / 4, keep, rel_tol=1e-9)
    with alvts.routed(model, policy, keep=keep), torch.no_grad():
        model(**batch)
        state = alvts.routing_state(model)
    n_visual = state.visual.sum(1)
    kept = state.visual_kept()
    for layer, ratio in enumerate(ratios):
        assert kept[layer].tolist() == [max(1, math.floor(ratio * n + 1e-6)) for n in n_visual.tolist()]
    assert ((kept.float().mean(0) - keep * n_visual).abs() < 1).all()  # per-layer floors lose under a token
    if isinstance(policy, DROPS_FOR_GOOD):
        for layer in range(1, 4):
            assert not (state.selected[layer] & ~state.selected[layer - 1]).any()


def test_fastv_keeps_what_the_last_token_attends_to_most_at_layer_k():
    model = tiny_model("llava", "eager")
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(20)  # sharpen random attention so the ranking is not a near-tie
    batch = tiny_inputs(model, [[None]])
    with torch.no_grad():
        attention = model(**batch, output_attentions=True).attentions[1][0].mean(0)[-1]  # layer 1, last query
    with alvts.routed(model, alvts.FastVPolicy(k=1), keep=0.4), torch.no_grad():
        model(**batch)
        state = alvts.routing_state(model)
    visual = state.visual[0]
    k = int(state.selected[1][0].sum())
    expected = attention.masked_fill(~visual, -1).topk(k).indices
    assert set(state.selected[1][0].nonzero().flatten().tolist()) == set(expected.tolist())
    assert state.selected[0][0].equal(visual)


def test_v2drop_keeps_the_tokens_whose_hidden_state_changed_most_across_the_previous_layer():
    model = tiny_model("qwen2_5_vl", "sdpa")
    batch = tiny_inputs(model, [[(1, 16, 16)]])
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states  # [i]: the input of layer i
    with alvts.routed(model, alvts.V2DropPolicy(dense_layers=1), keep=0.5), torch.no_grad():
        model(**batch)
        state = alvts.routing_state(model)
    visual = state.visual[0]
    assert state.selected[0][0].equal(visual)  # layer 0 is dense, so layer 1's input is the stock one
    change = (hidden[1][0] - hidden[0][0]).norm(dim=-1).masked_fill(~visual, -1)
    k = int(state.selected[1][0].sum())
    assert 0 < k < int(visual.sum())
    assert set(state.selected[1][0].nonzero().flatten().tolist()) == set(change.topk(k).indices.tolist())


def test_select_once_keeps_the_first_dropping_layer_s_choice_in_every_later_layer():
    model = tiny_model("qwen2_5_vl", "sdpa")
    batch = tiny_inputs(model, [[(1, 16, 16)], [(1, 12, 16)]])
    with alvts.routed(model, "random", keep=0.25), torch.no_grad():
        model(**batch)
        layer_wise = alvts.routing_state(model).selected
    with alvts.routed(model, alvts.SelectOncePolicy("random"), keep=0.25), torch.no_grad():
        model(**batch)
        once = alvts.routing_state(model).selected
    assert once[0].equal(layer_wise[0])  # the same scorer picks at layer 0
    assert all(once[i].equal(once[0]) for i in range(1, 4))
    assert any(not layer_wise[i].equal(layer_wise[0]) for i in range(1, 4))  # random redraws per layer


def test_divprune_under_a_shrinking_schedule_keeps_the_most_diverse_of_the_first_choice():
    model = tiny_model("qwen2_5_vl", "sdpa")
    batch = tiny_inputs(model, [[(1, 16, 16)]])
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with alvts.routed(model, alvts.DivPrunePolicy(), keep=[0.5, 0.25, 0.25, 0.125]), torch.no_grad():
        model(**batch)
        state = alvts.routing_state(model)
    hook.remove()
    visual = state.visual[0]
    rank = max_min_order(captured["x"][0, visual])  # the diversity order of the language model's input embeddings
    positions = visual.nonzero().flatten()
    for layer, k in enumerate((32, 16, 16, 8)):
        assert set(state.selected[layer][0].nonzero().flatten().tolist()) == set(positions[rank < k].tolist())


@pytest.mark.parametrize(
    ("policy", "keep", "fix"),
    [
        (alvts.FastVPolicy(k=2), 0.11, "lower K"),
        (alvts.PyramidDropPolicy(stages=4), 0.22, "use more stages"),
        (alvts.DenseEarlyRandomPolicy(dense_layers=2), 0.5, "lower dense_layers"),
    ],
)
def test_out_of_reach_budget_is_refused_before_the_model_is_touched(policy, keep, fix):
    model = tiny_model("llava", "sdpa")
    with pytest.raises(ValueError, match=f"out of its reach. Raise keep or {fix}"):
        alvts.apply(model, policy, keep=keep)
    assert alvts.get_router(model) is None


def test_staged_keeps_solves_the_mean():
    ratios = staged_keeps(0.11, [0, 0] + [1] * 30, "FastV", "lower K")
    assert ratios[:2] == (1.0, 1.0)
    assert math.isclose(ratios[2], (0.11 * 32 - 2) / 30, rel_tol=1e-9)


def test_max_min_order_covers_every_cluster_before_repeating_one():
    centres = torch.eye(4)
    features = torch.cat([centres.repeat(5, 1), 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))])
    features = features[:20] + features[20:]
    rank = max_min_order(features)
    first_four = rank.argsort()[:4]
    assert {int(i) % 4 for i in first_four} == {0, 1, 2, 3}
    assert sorted(rank.tolist()) == list(range(20))


def test_baselines_are_selectable_by_name():
    for name in ("fastv", "pdrop", "v2drop", "divprune", "random-dense"):
        assert alvts.get_policy(name).name == name
