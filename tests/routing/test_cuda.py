"""Parity on CUDA in bf16 with sdpa. Skipped without a GPU; the CPU suite covers the same paths in fp32."""

import pytest
import torch
from conftest import batch_for

import alvts
from alvts.testing import tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; fp32 CPU parity runs elsewhere"),
]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_keep_one_bf16_cuda_matches_stock(family, batch_size):
    model = tiny_model(family, "sdpa").to("cuda", torch.bfloat16)
    batch = {k: v.to("cuda") for k, v in batch_for(model, batch_size).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        stock = model(**batch).logits
        stock_tokens = model.generate(**batch, max_new_tokens=6, do_sample=False)
        with alvts.routed(model, "full"):
            routed = model(**batch).logits
            routed_tokens = model.generate(**batch, max_new_tokens=6, do_sample=False)
    valid = batch["attention_mask"].bool()
    if batch_size == 1:  # same tokens, same shapes, same kernels: bit-exact
        assert torch.equal(stock, routed)
    else:  # keep 1.0 gathers nothing, so the kernels are stock's; the tolerance stays until a GPU run shows equality
        assert torch.allclose(stock[valid].float(), routed[valid].float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(stock_tokens, routed_tokens)


def test_routed_generate_runs_on_cuda_bf16(family):
    model = tiny_model(family, "sdpa").to("cuda", torch.bfloat16)
    batch = {k: v.to("cuda") for k, v in batch_for(model, 2).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


def test_static_cache_compiled_decoding_on_cuda_matches_eager(family):
    """generate() compiles a static cache's decode step by default on CUDA (fp32 here: compiled and eager kernels
    agree far below what would flip a token)."""
    model = tiny_model(family, "sdpa").to("cuda")
    batch = {k: v.to("cuda") for k, v in batch_for(model, 2).items()}
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    torch._dynamo.reset()
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        dynamic = model.generate(**batch, **greedy)
        compiled = model.generate(**batch, **greedy, cache_implementation="static")
    assert isinstance(compiled.past_key_values, alvts.RoutedStaticCache)
    assert torch.equal(compiled.sequences, dynamic.sequences)
    for a, b in zip(compiled.logits, dynamic.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
