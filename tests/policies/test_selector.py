"""The low-rank selector as a routing policy: fused projections, rank-space attention importance, exact budgets."""

import pytest
import torch

import alvts
from alvts.policies import LowRankSelector
from alvts.testing import tiny_inputs, tiny_model


def _selector(model, rank=8, layers=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(model.model.language_model.layers)
    dim = model.config.text_config.hidden_size
    return LowRankSelector({i: torch.randn(dim, 2 * rank, generator=gen) for i in layers or range(n)})


def test_selector_scores_are_rank_space_attention_importance():
    model = tiny_model("llava", "sdpa")
    selector = _selector(model)
    batch = tiny_inputs(model, [[None]])
    visual = batch["input_ids"] == model.config.image_token_id
    valid = batch["attention_mask"].bool()
    x = 0.1 * torch.randn(1, visual.shape[1], 64)  # moderate logits: no score reaches the 1e-30 floor
    inputs = alvts.LayerInputs(0, None, None, torch.nn.Identity(), x, visual, valid, (None, None))
    pq, pk = selector.factors[0].split(8, dim=1)
    expected = _importance_by_definition([(x[0] @ pq, x[0] @ pk)], visual[0])
    scores = selector.scores(inputs)[0]
    assert torch.allclose(scores[visual[0]], expected[visual[0]], atol=1e-4)
    assert torch.isneginf(scores[~visual[0]]).all()


def test_a_rotary_selector_rotates_each_rank_pair_at_its_frequency():
    model = tiny_model("llava", "sdpa")
    gen = torch.Generator().manual_seed(1)
    factors = {0: torch.randn(64, 8, generator=gen)}
    frequencies = torch.tensor([0, 3])  # rank 4: pairs (0, 2) and (1, 3) turn at head frequencies 0 and 3
    selector = LowRankSelector(factors, frequencies={0: frequencies})
    batch = tiny_inputs(model, [[None]])
    visual = batch["input_ids"] == model.config.image_token_id
    seq = visual.shape[1]
    x = 0.3 * torch.randn(1, seq, 64, generator=gen)
    angles = torch.arange(seq, dtype=torch.float32)[:, None] * torch.tensor([1.0, 0.1])  # position * theta
    table = torch.zeros(1, seq, 16)  # head_dim 16 as HF lays it out: cos(angle_f) at columns f and f + 8
    cos, sin = table.clone(), table.clone()
    cos[0, :, [0, 3]], sin[0, :, [0, 3]] = angles.cos(), angles.sin()
    cos[0, :, [8, 11]], sin[0, :, [8, 11]] = angles.cos(), angles.sin()
    valid = batch["attention_mask"].bool()
    inputs = alvts.LayerInputs(0, None, None, torch.nn.Identity(), x, visual, valid, (cos, sin))
    q, k = (x[0] @ factors[0]).split(4, dim=1)
    as_complex = [torch.complex(t[:, :2], t[:, 2:]) * torch.polar(torch.ones_like(angles), angles) for t in (q, k)]
    q, k = (torch.cat([z.real, z.imag], 1) for z in as_complex)  # each pair multiplied by e^(i position theta)
    expected = _importance_by_definition([(q, k)], visual[0])
    assert selector.form == "rotary"
    assert torch.allclose(selector.scores(inputs)[0][visual[0]], expected[visual[0]], atol=1e-4)
    unrotated = LowRankSelector(factors).scores(inputs)[0][visual[0]]
    assert not torch.allclose(unrotated, expected[visual[0]], atol=1e-2)


def test_a_selector_with_heads_averages_each_heads_rank_space_attention():
    model = tiny_model("llava", "sdpa")
    gen = torch.Generator().manual_seed(2)
    factors = {0: torch.randn(64, 16, generator=gen)}  # rank 8 = two heads of 4: P_q, P_k columns head by head
    batch = tiny_inputs(model, [[None]])
    visual, valid = batch["input_ids"] == model.config.image_token_id, batch["attention_mask"].bool()
    x = 0.1 * torch.randn(1, visual.shape[1], 64, generator=gen)
    inputs = alvts.LayerInputs(0, None, None, torch.nn.Identity(), x, visual, valid, (None, None))
    q, k = (x[0] @ factors[0]).split(8, dim=1)
    expected = _importance_by_definition([(q[:, :4], k[:, :4]), (q[:, 4:], k[:, 4:])], visual[0])
    scores = LowRankSelector(factors, heads=2).scores(inputs)[0]
    assert torch.allclose(scores[visual[0]], expected[visual[0]], atol=1e-4)
    one_head = LowRankSelector(factors).scores(inputs)[0]
    assert not torch.allclose(one_head[visual[0]], expected[visual[0]], atol=1e-2)
    with pytest.raises(ValueError, match="A selector of rank 8 cannot have 3 heads"):
        LowRankSelector(factors, heads=3)


def test_a_rotary_selector_needs_frequencies_for_every_layer():
    factors = {0: torch.zeros(8, 4), 1: torch.zeros(8, 4)}
    with pytest.raises(ValueError, match=r"a \(rank / 2,\) frequency index for each layer"):
        LowRankSelector(factors, frequencies={0: torch.tensor([0, 1])})


def _importance_by_definition(heads, visual):
    """log S_V2V(i) + log S_T2V(i) one query row at a time: row j's causal softmax over keys 0..j averaged over the
    heads [(q, k), ...], then the mean over visual query rows and over text query rows of the attention each row pays
    key i."""
    seq = len(visual)
    rows = torch.zeros(seq, seq, dtype=torch.float64)
    for q, k in heads:
        for j in range(seq):
            rows[j, : j + 1] += torch.softmax((q[j] @ k[: j + 1].T).double(), dim=0) / len(heads)
    v2v, t2v = rows[visual].mean(0), rows[~visual].mean(0)
    return (v2v.log() + t2v.log()).float()


def test_selector_routes_with_exact_budgets(family):
    model = tiny_model(family, "sdpa")
    batch = tiny_inputs(model)
    with alvts.routed(model, _selector(model), keep=0.25), torch.no_grad():
        model(**batch)
        state = alvts.routing_state(model)
    n = state.visual.sum(1)
    assert (state.visual_kept() == torch.clamp((n * 0.25 + 1e-6).floor().long(), min=1)).all()


def test_a_partial_selector_leaves_the_layers_it_does_not_cover_dense():
    model = tiny_model("llava", "sdpa")
    with alvts.routed(model, _selector(model, layers=[2, 3]), keep=0.25), torch.no_grad():
        model(**tiny_inputs(model))
        state = alvts.routing_state(model)
        n_visual = state.visual.sum(1)
        assert state.visual_kept().tolist() == [n_visual.tolist()] * 2 + [(n_visual // 4).tolist()] * 2
    with pytest.raises(ValueError, match=r"cannot score layers \[0, 1\]: give them keep 1.0"):
        alvts.apply(model, _selector(model, layers=[2, 3]), keep=[0.25] * 4)
    assert alvts.get_router(model) is None
    with alvts.routed(model, _selector(model, layers=[2, 3]), keep=[1.0, 1.0, 0.25, 0.25]), torch.no_grad():
        model(**tiny_inputs(model))


def test_select_once_over_a_partial_selector_scores_at_its_first_covered_layer():
    """Wrapped selectors are checked like bare ones: `alvts-once` with a pack for layers 2-3 routes from layer 2 on
    (it used to be accepted and raise KeyError inside the forward, at layer 0)."""
    model = tiny_model("llava", "sdpa")
    once = alvts.SelectOncePolicy(_selector(model, layers=[2, 3]))
    with alvts.routed(model, once, keep=0.25), torch.no_grad():
        model(**tiny_inputs(model))
        state = alvts.routing_state(model)
    n_visual = state.visual.sum(1)
    assert state.visual_kept().tolist() == [n_visual.tolist()] * 2 + [(n_visual // 4).tolist()] * 2
    assert torch.equal(state.selected[2], state.selected[3])  # selected once, kept after
    with pytest.raises(ValueError, match=r"cannot score layers \[0, 1\]"):
        alvts.apply(model, once, keep=[0.25] * 4)
