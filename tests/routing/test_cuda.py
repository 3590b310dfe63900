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
    else:  # the padded row runs on a shorter gathered sequence: kernels may tile it differently in bf16
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
