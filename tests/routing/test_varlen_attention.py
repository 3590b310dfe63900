"""Routed layers under varlen attention (flash_attention_2 and its kin): a 2-D key-validity mask, unpadded.

flash-attn needs CUDA, so on CPU a reference with flash-attn's varlen semantics stands in for it: keys whose mask is
0 are dropped, queries are the last ones of each row (all of them when there are as many as keys), and causality is
aligned at the end of each row's keys. Registered under its own name with transformers' flash mask, it takes exactly
the path flash_attention_2 takes; the CUDA test at the end runs the real kernel.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_for, max_valid_diff
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

import alvts
from alvts.testing import HostSyncCounter, tiny_model

VARLEN = "varlen_reference"
GREEDY = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """flash-attn's `flash_attn_varlen_func` after transformers' unpadding, one row at a time with sdpa."""
    batch, heads, queries, dim = query.shape
    key = key.repeat_interleave(heads // key.shape[1], 1)
    value = value.repeat_interleave(heads // value.shape[1], 1)
    out = query.new_zeros(batch, queries, heads, dim)
    for row in range(batch):
        if attention_mask is None:
            key_valid = torch.ones(key.shape[2], dtype=torch.bool)
            query_valid = torch.ones(queries, dtype=torch.bool)
        else:
            key_valid = attention_mask[row].bool()
            query_valid = key_valid[-queries:] if queries > 1 else torch.ones(1, dtype=torch.bool)
        q, k, v = query[row][:, query_valid], key[row][:, key_valid], value[row][:, key_valid]
        causal = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(k.shape[1] - q.shape[1])
        out[row, query_valid] = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=scaling).transpose(0, 1)
    return out, None


AttentionInterface.register(VARLEN, varlen_reference)
AttentionMaskInterface.register(VARLEN, flash_attention_mask)


@pytest.fixture
def varlen_model(family):
    """The family's tiny model with the reference varlen attention in its decoder (sdpa in the vision tower)."""
    model = tiny_model(family, "sdpa")
    model.set_attn_implementation({"text_config": VARLEN})
    yield model
    if alvts.get_router(model) is not None:
        alvts.remove(model)


def _with_text_attention(model, impl: str, run):
    model.set_attn_implementation({"text_config": impl})
    try:
        with torch.no_grad():
            return run()
    finally:
        model.set_attn_implementation({"text_config": VARLEN})


def test_reference_equals_sdpa_on_the_stock_model(varlen_model):
    """The stand-in is right before it judges anything: stock logits and generations equal sdpa's."""
    batch = batch_for(varlen_model, 2)
    with torch.no_grad():
        varlen = varlen_model(**batch).logits
        varlen_tokens = varlen_model.generate(**batch, **GREEDY).sequences
    sdpa = _with_text_attention(
        varlen_model, "sdpa", lambda: (varlen_model(**batch).logits, varlen_model.generate(**batch, **GREEDY).sequences)
    )
    assert max_valid_diff(varlen, sdpa[0], batch["attention_mask"]) <= 1e-5
    assert torch.equal(varlen_tokens, sdpa[1])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_keep_one_equals_stock(varlen_model, batch_size):
    batch = batch_for(varlen_model, batch_size)
    with torch.no_grad():
        stock = varlen_model(**batch).logits
        stock_out = varlen_model.generate(**batch, **GREEDY)
        with alvts.routed(varlen_model, "full"):
            routed = varlen_model(**batch).logits
            routed_out = varlen_model.generate(**batch, **GREEDY)
    assert max_valid_diff(stock, routed, batch["attention_mask"]) <= 1e-5
    assert torch.equal(stock_out.sequences, routed_out.sequences)
    for s, r in zip(stock_out.logits, routed_out.logits, strict=True):
        assert (s - r).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", [dict(), dict(num_beams=3, num_return_sequences=2)])
def test_routed_equals_routed_sdpa(varlen_model, mode):
    """Below keep 1.0, left-padded samples with different budgets: spare slots and per-layer key counts must be
    unpadded exactly as sdpa masks them, at prefill and at every decode step (beams reorder the cache)."""
    batch = batch_for(varlen_model, 2)

    def run():
        with alvts.routed(varlen_model, "oracle", keep=0.25):
            logits = varlen_model(**batch).logits
            selected = alvts.routing_state(varlen_model).visual_kept()
            return logits, selected, varlen_model.generate(**batch, **GREEDY, **mode)

    varlen = _with_text_attention(varlen_model, VARLEN, run)
    sdpa = _with_text_attention(varlen_model, "sdpa", run)
    assert max_valid_diff(varlen[0], sdpa[0], batch["attention_mask"]) <= 1e-5
    assert torch.equal(varlen[1], sdpa[1])
    assert torch.equal(varlen[2].sequences, sdpa[2].sequences)
    for a, b in zip(varlen[2].logits, sdpa[2].logits, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_routing_adds_one_host_sync_per_forward(varlen_model):
    """Routed layers hand the kernel their key validity as it is: no per-layer check that the mask is all ones."""
    batch = batch_for(varlen_model, 2)
    new = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)

    def syncs(call, **kwargs) -> int:
        with torch.no_grad(), HostSyncCounter() as counter:
            call(**batch, **kwargs)
        return counter.count

    stock, stock_generate = syncs(varlen_model), syncs(varlen_model.generate, **new)
    with alvts.routed(varlen_model, "oracle", keep=0.25):
        routed, routed_generate = syncs(varlen_model), syncs(varlen_model.generate, **new)
    assert routed <= stock + 1
    assert routed_generate <= stock_generate + new["max_new_tokens"]


def test_static_cache_is_refused_with_the_fix(varlen_model):
    batch = batch_for(varlen_model, 1)
    with alvts.routed(varlen_model, "oracle", keep=0.25), pytest.raises(ValueError, match="static cache.*sdpa"):
        varlen_model.generate(**batch, max_new_tokens=2, cache_implementation="static")


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _flash_attn_installed(), reason="needs CUDA and flash-attn; the reference above runs on CPU")
def test_flash_attention_2_equals_sdpa_on_cuda(family):
    """The real kernel, bf16: routed flash_attention_2 generates what routed sdpa generates."""
    model = tiny_model(family, "sdpa").to("cuda", torch.bfloat16)
    batch = {k: v.to("cuda") for k, v in batch_for(model, 2).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    tokens = {}
    for impl in ("sdpa", "flash_attention_2"):
        model.set_attn_implementation({"text_config": impl})
        with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
            tokens[impl] = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens["sdpa"], tokens["flash_attention_2"])
