"""vLLM plugin: per-layer visual token routing inside vLLM's own models (V1 engine).

`pip install alvts` next to vLLM registers `register` under the entry-point group `vllm.general_plugins`; vLLM calls
it in every process it starts (front end, engine core, each worker). It registers a routed subclass of vLLM's model
for each supported family and a check of the run's configuration, both under the routed architecture's name, so a
run opts in without editing any model file:

    LLM(model=path, hf_overrides={"architectures": ["AlvtsQwen2_5_VLForConditionalGeneration"],
                                  "alvts": {"pack": "path/or/hub-id", "keep": 0.11}}, **alvts_engine_kwargs())

See README.md beside this file. Importing this package imports neither torch nor vLLM; `register` imports vLLM.
"""

from __future__ import annotations

from typing import Any

# routed architecture name -> (module of its class, class name, the stock vLLM architecture it subclasses)
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "AlvtsQwen2_5_VLForConditionalGeneration": (
        f"{__name__}.qwen2_5_vl",
        "RoutedQwen2_5_VL",
        "Qwen2_5_VLForConditionalGeneration",
    ),
    "AlvtsQwen2VLForConditionalGeneration": (
        f"{__name__}.qwen2_vl",
        "RoutedQwen2VL",
        "Qwen2VLForConditionalGeneration",
    ),
    "AlvtsLlavaForConditionalGeneration": (f"{__name__}.llava", "RoutedLlava", "LlavaForConditionalGeneration"),
    "AlvtsLlavaNextForConditionalGeneration": (
        f"{__name__}.llava",
        "RoutedLlavaNext",
        "LlavaNextForConditionalGeneration",
    ),
    "AlvtsQwen3VLForConditionalGeneration": (
        f"{__name__}.qwen3_vl",
        "RoutedQwen3VL",
        "Qwen3VLForConditionalGeneration",
    ),
    "AlvtsQwen3VLMoeForConditionalGeneration": (
        f"{__name__}.qwen3_vl",
        "RoutedQwen3VLMoe",
        "Qwen3VLMoeForConditionalGeneration",
    ),
}

# what a routed run needs from vLLM's engine arguments (README.md says why each)
ENGINE_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "enable_prefix_caching": False,
    "enable_chunked_prefill": False,
}


def routed_architecture(stock: str) -> str:
    """The routed architecture name for a stock vLLM architecture, e.g. "Qwen2_5_VLForConditionalGeneration"."""
    for name, (_, _, base) in ARCHITECTURES.items():
        if base == stock:
            return name
    supported = sorted(base for _, _, base in ARCHITECTURES.values())
    raise ValueError(f"alvts routes no vLLM architecture {stock!r} yet; supported: {supported}.")


def engine_kwargs(stock_architecture: str, **alvts: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(model=..., **engine_kwargs(arch, pack=..., keep=...))`: the routed
    architecture and its alvts settings in `hf_overrides`, and the engine options routing needs."""
    return {
        "hf_overrides": {"architectures": [routed_architecture(stock_architecture)], "alvts": dict(alvts)},
        **ENGINE_KWARGS,
    }


def register() -> None:
    """The `vllm.general_plugins` entry point: register the routed architectures and their configuration check.
    vLLM may call it more than once per process; registering again is harmless."""
    from vllm import ModelRegistry

    from .config import install_config_checks

    for name, (module, cls, _) in ARCHITECTURES.items():
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"{module}:{cls}")
    install_config_checks(list(ARCHITECTURES))
