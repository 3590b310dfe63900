"""Stage A math: planted recovery, optimality of the whitened fit, the merged-head form with GQA, and the rotary
form against the layer's own RoPE attention."""

import pytest
import torch

from alvts.calibration.fit import (
    damp,
    fit_low_rank_selector,
    fit_rotary_selector,
    fit_selector,
    merged_bilinear_form,
    rotary_bilinear_forms,
)
from alvts.policies.importance import (
    attention_importance,
    rank_space_rotary,
    received_attention_log_scores,
    rotated_queries_keys,
    selector_queries_keys,
)
from alvts.routing import get_adapter
from alvts.testing import tiny_inputs, tiny_model


def _random_second_moment(dim: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(4 * dim, dim, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, dim, dtype=torch.float64)
    return x.T @ x / x.shape[0]


def _weighted_error(b, pq, pk, cq, ck):
    """||C_q^1/2 (B - P_q P_k^T) C_k^1/2||_F^2 = tr(E^T C_q E C_k): the objective Stage A minimises."""
    e = b - pq @ pk.T
    return torch.trace(e.T @ cq @ e @ ck).item()


def test_stage_a_recovers_a_planted_rank_r_form():
    gen = torch.Generator().manual_seed(0)
    dim, rank = 24, 4
    planted = torch.randn(dim, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, dim, generator=gen, dtype=torch.float64
    )
    cq, ck = _random_second_moment(dim, gen), _random_second_moment(dim, gen)
    pq, pk = fit_low_rank_selector(planted, cq, ck, rank)
    assert pq.shape == pk.shape == (dim, rank)
    assert torch.allclose(pq @ pk.T, planted, atol=1e-9 * planted.abs().max().item())


def test_stage_a_beats_the_data_free_svd_on_the_data_weighted_error():
    gen = torch.Generator().manual_seed(1)
    dim, rank = 24, 6
    b = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    cq, ck = damp(_random_second_moment(dim, gen)), damp(_random_second_moment(dim, gen))
    pq, pk = fit_low_rank_selector(b, cq, ck, rank, damping=0.0)
    u, s, vh = torch.linalg.svd(b)  # the paper's data-free truncated SVD
    plain_q, plain_k = u[:, :rank] * s[:rank].sqrt(), vh[:rank].T * s[:rank].sqrt()
    ours, plain = _weighted_error(b, pq, pk, cq, ck), _weighted_error(b, plain_q, plain_k, cq, ck)
    assert ours < plain
    # and no rank-R perturbation of the optimum does better (local optimality of the closed form)
    for _ in range(5):
        dq = 1e-3 * torch.randn(dim, rank, generator=gen, dtype=torch.float64)
        assert _weighted_error(b, pq + dq, pk, cq, ck) >= ours


def test_full_rank_fit_equals_explicit_merged_head_scores_with_gqa():
    model = tiny_model("llava", "eager")  # 4 query heads over 2 KV heads, no projection bias
    attn = model.model.language_model.layers[1].self_attn
    dim = attn.q_proj.in_features
    b = merged_bilinear_form(attn)
    pq, pk = fit_low_rank_selector(b, torch.eye(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64), dim)
    x = torch.randn(2, 9, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = (x @ pq) @ (x @ pk).transpose(1, 2)
    with torch.no_grad():
        q = (x @ attn.q_proj.weight.double().T).view(2, 9, 4, -1).transpose(1, 2)  # (b, heads, seq, d)
        k = (x @ attn.k_proj.weight.double().T).view(2, 9, 2, -1).transpose(1, 2)
        k = torch.cat([k[:, :1], k[:, :1], k[:, 1:], k[:, 1:]], dim=1)  # heads 0,1 -> group 0; heads 2,3 -> group 1
        explicit = (q @ k.transpose(-1, -2)).mean(1) * attn.scaling
    assert torch.allclose(ours, explicit, atol=1e-10)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])  # 1-D RoPE, and M-RoPE's merged sections
def test_full_rank_rotary_fit_equals_the_layers_head_mean_rope_logits(family):
    model = tiny_model(family, "eager")
    captured = {}
    layer = get_adapter(model).decoder_layers(model)[2]
    layer.register_forward_pre_hook(lambda m, a, kw: captured.update(kw, x=a[0] if a else None), with_kwargs=True)
    with torch.no_grad():
        model(**tiny_inputs(model))
    attn, hidden = layer.self_attn, captured["x"] if captured["x"] is not None else captured["hidden_states"]
    normed = layer.input_layernorm(hidden)
    dim, heads = attn.q_proj.in_features, attn.config.num_attention_heads
    eye = torch.eye(dim, dtype=torch.float64)
    rank = heads * attn.head_dim  # every frequency's form has rank <= heads: this rank is exact
    pq, pk, frequencies = fit_rotary_selector(rotary_bilinear_forms(attn), eye, eye, rank)
    assert frequencies.shape == (rank // 2,) and int(frequencies.max()) < attn.head_dim // 2
    rotary = rank_space_rotary(captured["position_embeddings"], attn, frequencies)
    q, k = selector_queries_keys(normed.double(), torch.cat([pq, pk], 1), tuple(t.double() for t in rotary))
    ours = (q @ k.transpose(-1, -2)).squeeze(1).double()
    with torch.no_grad():
        q_h, k_h = rotated_queries_keys(attn, normed, captured["position_embeddings"])  # the layer's own q_proj, RoPE
        explicit = (q_h @ k_h.transpose(-1, -2)).mean(1).double() * attn.scaling
    assert torch.allclose(ours.float(), explicit.float(), atol=1e-4 * explicit.abs().max().item())
    # without positions the merged form is a different function of the same tokens (RoPE is what the fit adds)
    merged = normed.double() @ merged_bilinear_form(attn) @ normed.double().transpose(1, 2)
    assert not torch.allclose(merged.float(), explicit.float(), atol=1e-2 * explicit.abs().max().item())


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_one_selector_head_per_attention_head_at_full_rank_is_the_oracle(family):
    model = tiny_model(family, "eager")
    captured = {}
    layer = get_adapter(model).decoder_layers(model)[1]
    layer.register_forward_pre_hook(lambda m, a, kw: captured.update(kw, x=a[0] if a else None), with_kwargs=True)
    batch = tiny_inputs(model)
    with torch.no_grad():
        model(**batch)
    attn, hidden = layer.self_attn, captured["x"] if captured["x"] is not None else captured["hidden_states"]
    normed, positions = layer.input_layernorm(hidden), captured["position_embeddings"]
    visual, valid = batch["input_ids"] == model.config.image_token_id, batch["attention_mask"].bool()
    heads, eye = attn.config.num_attention_heads, torch.eye(attn.q_proj.in_features, dtype=torch.float64)
    with torch.no_grad():
        attn.q_proj.weight.mul_(20)  # sharper than a random init's near-uniform attention, so the heads differ
        oracle = attention_importance(attn, normed, positions, visual, valid)
        scores = {}
        for selector_heads in (heads, 1):  # each head's form has rank 1 per frequency: rank heads x head_dim is exact
            pq, pk, frequencies = fit_selector(attn, eye, eye, heads * attn.head_dim, "rotary", selector_heads)
            rotary = rank_space_rotary(positions, attn, frequencies, selector_heads)
            q, k = selector_queries_keys(normed, torch.cat([pq, pk], 1).float(), rotary, selector_heads)
            scores[selector_heads] = received_attention_log_scores(q, k, 1.0, visual, valid)
    assert torch.allclose(scores[heads][visual], oracle[visual], atol=1e-3)
    assert not torch.allclose(scores[1][visual], oracle[visual], atol=1e-2)  # one softmax over the mean logit


def test_selector_heads_must_split_the_attention_heads_evenly():
    model = tiny_model("llava", "eager")
    attn = get_adapter(model).decoder_layers(model)[0].self_attn
    eye = torch.eye(attn.q_proj.in_features, dtype=torch.float64)
    with pytest.raises(ValueError, match="3 selector heads do not split the layer's 4 attention heads evenly"):
        fit_selector(attn, eye, eye, 6, "merged", 3)


def test_low_rank_rotary_fit_keeps_the_largest_components_over_all_frequencies():
    gen = torch.Generator().manual_seed(4)
    frequencies, dim = 3, 10
    planted = torch.zeros(frequencies, dim, dim, dtype=torch.complex128)
    strengths = {(0, 0): 5.0, (2, 0): 4.0, (2, 1): 3.0, (1, 0): 0.5}  # (frequency, component): singular value
    for (f, _), value in strengths.items():
        u = torch.randn(dim, 1, dtype=torch.complex128, generator=gen)
        v = torch.randn(dim, 1, dtype=torch.complex128, generator=gen)
        planted[f] += value * (u / u.norm()) @ (v / v.norm()).conj().T
    eye = torch.eye(dim, dtype=torch.float64)
    pq, pk, kept = fit_rotary_selector(planted, eye, eye, rank=6)
    assert kept.tolist() == [0, 2, 2]  # the three strongest, grouped by frequency; frequency 1's weak one dropped
    rebuilt = torch.zeros_like(planted)
    for i, f in enumerate(kept.tolist()):
        left, right = torch.complex(pq[:, i], pq[:, i + 3]), torch.complex(pk[:, i], pk[:, i + 3])
        rebuilt[f] += left[:, None] @ right[None].conj()
    assert torch.allclose(rebuilt[[0, 2]], planted[[0, 2]], atol=1e-6)


def _planted_samples(n, gen, a_q, a_k, dim=16, text=(4, 6), n_visual=36):
    """Samples whose oracle target comes from nonlinear features tanh(x A_q), tanh(x A_k): no linear form fits it."""
    from alvts.calibration.fit import LayerSample
    from alvts.policies.importance import received_attention_log_scores

    seq = text[0] + n_visual + text[1]
    visual = torch.zeros(1, seq, dtype=torch.bool)
    visual[0, text[0] : text[0] + n_visual] = True
    valid = torch.ones(1, seq, dtype=torch.bool)
    samples = []
    for _ in range(n):
        x = torch.randn(1, seq, dim, generator=gen)
        q, k = torch.tanh(x @ a_q), torch.tanh(x @ a_k)
        target = received_attention_log_scores(q[:, None], k[:, None], 1.0, visual, valid)
        samples.append(LayerSample(x, visual, valid, target))
    return samples


def test_stage_b_never_lowers_held_out_recall_and_improves_a_nonlinear_target():
    from alvts.calibration.fit import layer_metrics, refine_selector

    gen = torch.Generator().manual_seed(3)
    dim, rank = 16, 4
    a_q, a_k = 2 * torch.randn(dim, rank, generator=gen), 2 * torch.randn(dim, rank, generator=gen)
    train, held_out = _planted_samples(48, gen, a_q, a_k), _planted_samples(16, gen, a_q, a_k)
    xs = torch.cat([s.normed[0] for s in train]).double()
    cov = xs.T @ xs / len(xs)
    pq, pk = fit_low_rank_selector((a_q @ a_k.T).double(), cov, cov, rank)
    proj_a, temp_a = torch.cat([pq, pk], 1).float(), torch.zeros(())
    proj_b, temp_b = refine_selector(proj_a, temp_a, train, held_out, steps=150, lr=2e-2)
    before, after = layer_metrics(held_out, proj_a, temp_a), layer_metrics(held_out, proj_b, temp_b)
    assert after["recall@0.111"] >= before["recall@0.111"]
    assert after["spearman"] > before["spearman"] and after["l2"] < before["l2"]
