"""The two-pass received-attention kernel against the PyTorch path, in Triton's interpreter on CPU tensors: for the
oracle's score (the layer's real heads) and a fitted selector's (one head in rank space), with padding.
Without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before anything imports Triton."""

import pytest
import torch

import alvts
from alvts.kernels import received_attention as kernels
from alvts.policies.importance import rotated_queries_keys
from alvts.testing import MIXED_IMAGES, tiny_inputs, tiny_model

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")


def layer_inputs():
    """Layer 1 of a tiny Llava on a left-padded batch with different visual counts: the layer, its normed input, its
    rotary tables, and which tokens are visual and valid."""
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, MIXED_IMAGES["llava"], seed=0)
    layer = model.model.language_model.layers[1]
    seen = {}
    layer.register_forward_pre_hook(
        lambda m, a, kw: seen.update(kw, hidden=a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    valid = inputs["attention_mask"].bool()
    visual = (inputs["input_ids"] == model.config.image_token_id) & valid
    assert not valid.all() and visual.sum(1).unique().numel() == 2  # padding, and two visual counts
    return layer, layer.input_layernorm(seen["hidden"]), seen["position_embeddings"], visual, valid


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter


def check_against_reference(q, k, scale, visual, valid):
    q, k, visual, valid = (t.to(DEVICE) for t in (q, k, visual, valid))
    weights = torch.stack([visual, valid & ~visual], 1).float()
    expected = kernels.received_attention_reference(q, k, scale, weights, valid, chunk_size=7)
    got = kernels.received_attention_triton(q, k, scale, weights, valid, block=16)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)  # fp32 sums, in another order
    assert expected[:, 1][visual].gt(0).all()  # every visual token receives some text attention: not a vacuous sum


def test_kernel_matches_reference_on_oracle_heads():
    layer, normed, cos_sin, visual, valid = layer_inputs()
    with torch.no_grad():
        q, k = rotated_queries_keys(layer.self_attn, normed, cos_sin)
    assert q.shape[1] > 1  # several heads, keys repeated per query head (GQA)
    check_against_reference(q, k, layer.self_attn.scaling, visual, valid)


def test_kernel_matches_reference_on_a_selector_in_rank_space():
    _, normed, _, visual, valid = layer_inputs()
    rank = 8
    hidden = normed.shape[-1]
    factors = torch.randn(hidden, 2 * rank, generator=torch.Generator().manual_seed(0)) / hidden**0.5  # q.k ~ O(1)
    with torch.no_grad():
        q, k = (normed @ factors).split(rank, dim=-1)
    check_against_reference(q[:, None], k[:, None], torch.tensor(0.7), visual, valid)


def test_selector_score_is_the_same_on_either_path(monkeypatch):
    """The whole log score, with the kernel standing in for the PyTorch path, ranks the tokens the same."""
    _, normed, _, visual, valid = layer_inputs()
    hidden = normed.shape[-1]
    selector = alvts.LowRankSelector(
        {1: torch.randn(hidden, 16, generator=torch.Generator().manual_seed(0)) / hidden**0.5}
    )
    inputs = alvts.LayerInputs(1, None, None, torch.nn.Identity(), normed, visual, valid, (None, None))
    expected = selector.scores(inputs)
    from alvts.policies import importance

    monkeypatch.setattr(
        importance,
        "received_attention_reference",
        lambda *args: kernels.received_attention_triton(*(torch.as_tensor(a).to(DEVICE) for a in args[:5]), 16).cpu(),
    )
    got = selector.scores(inputs)
    torch.testing.assert_close(got[visual], expected[visual], rtol=1e-5, atol=1e-5)
