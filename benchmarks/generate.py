"""`generate()` latency and KV-cache memory of a routed VLM next to the stock model and the zero-overhead limit.

Same presets, inputs and variants as prefill.py (full: stock model, all N visual tokens; routed: `alvts.apply`, same
inputs; ideal: stock model on text + the k = max(1, floor(K*N)) visual tokens it would keep), but each timed call is
`model.generate(..., max_new_tokens=T, min_new_tokens=T)`, greedy, stock dynamic cache (`RoutedCache` when routed).
The vision tower is excluded as in prefill.py (`mm_encoder_outputs`). Per call a logits processor stamps the clock
after each step (synchronising on CUDA, as generate's own stopping check does each step), which gives:
  ttft   time to first token: generate() entry to the first step's logits (prefill + first LM head);
  tpot   time per output token after the first: (total - ttft) / (T - 1);
  tok/s  batch * T / total.
Memory, from one untimed generate() per variant: KV-cache bytes (keys + values of every layer, as stored), in total
and per layer with each layer's slots (keys stored per sample), and, on CUDA, the peak allocated bytes during the
call. At keep K the routed cache should hold what the ideal one holds: the text plus k visual tokens per layer.

`--cache static` runs every variant with `cache_implementation="static"` (a `RoutedStaticCache` when routed, each
layer sized for its own keys); `--compile` also compiles the decoding steps as generate() does for static caches on
CUDA (`CompileConfig`, forced on for CPU). Compiled runs go variant by variant instead of round-robin, so that
applying and removing the router does not recompile inside a timed call.

    python benchmarks/generate.py --preset cpu-tiny --json /tmp/generate_cpu.json               # CPU, < 1 min
    python benchmarks/generate.py --preset qwen2.5-vl-7b --batch-sizes 1,8 --json generate_qwen.json   # GPU
    python benchmarks/generate.py --preset llava-1.5-7b --batch-sizes 32 --cache static --compile   # GPU, compiled
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import time
from typing import Any

import torch
import transformers
from prefill import PRESETS, LowRankScorer, build_config, image_features, kept_tokens, prefill_call, print_rows
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList

import alvts

VARIANTS = ("full", "routed", "ideal")
TIMING = "median over repeats; generate() greedy, min_new_tokens = max_new_tokens; vision tower excluded"


class StepClock(LogitsProcessor):
    """Records the time after each decoding step's logits (synchronised on CUDA); leaves the scores unchanged."""

    def __init__(self, sync) -> None:
        self.sync, self.stamps = sync, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.sync()
        self.stamps.append(time.perf_counter())
        return scores


def kv_layers(cache: Any) -> list[tuple[int, int]]:
    """Per layer: (slots, i.e. keys stored per sample, bytes of its key and value tensors)."""
    return [
        (layer.keys.shape[-2], sum(t.numel() * t.element_size() for t in (layer.keys, layer.values)))
        for layer in cache.layers
    ]


def generate_call(call: dict, new_tokens: int, pad_token_id: int, args: argparse.Namespace) -> dict:
    """A prefill.py call turned into generate() kwargs: exactly `new_tokens` greedy tokens, with the run's cache."""
    call = {key: value for key, value in call.items() if key not in ("logits_to_keep", "use_cache")}
    call.update(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id)
    if args.cache == "static":
        call["cache_implementation"] = "static"
    if args.compile:
        compile_config = CompileConfig()
        compile_config._compile_all_devices = True  # generate() compiles on CUDA only unless told
        call["compile_config"] = compile_config
    else:
        call["disable_compile"] = True  # a static cache on CUDA would compile by default
    return call


def timed_generate(model, call: dict, sync) -> tuple[float, float]:
    """(ttft ms, total ms) of one generate() call."""
    clock = StepClock(sync)
    sync()
    start = time.perf_counter()
    model.generate(**call, logits_processor=LogitsProcessorList([clock]))
    sync()
    end = time.perf_counter()
    return (clock.stamps[0] - start) * 1e3, (end - start) * 1e3


def memory(model, call: dict, device: str) -> tuple[list[tuple[int, int]], int | None]:
    """(per-layer KV-cache slots and bytes after the call, CUDA peak allocated bytes during it or None on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    model.__dict__.pop("_previous_max_cache_length", None)  # else a static cache is sized for the longest prompt yet
    out = model.generate(**call, return_dict_in_generate=True)
    peak = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None
    return kv_layers(out.past_key_values), peak


def bench(model, calls: dict, policy: Any, keep: float, args: argparse.Namespace) -> dict:
    """Round-robin full / routed / ideal generate(): warmup rounds, then timed rounds; then one memory call each.
    Compiled: variant by variant, the router applied once (applying it changes what the compiled code guards on)."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    result: dict[str, dict] = {name: {"ttft_ms": [], "total_ms": []} for name in VARIANTS}
    rounds = args.warmup + args.repeats

    def run(r: int, name: str) -> None:
        if r == rounds:
            result[name]["kv_layers"], result[name]["peak_bytes"] = memory(model, calls[name], args.device)
            return
        ttft, total = timed_generate(model, calls[name], sync)
        if r >= args.warmup:
            result[name]["ttft_ms"].append(ttft)
            result[name]["total_ms"].append(total)

    def routing(name: str):
        return alvts.routed(model, policy, keep=keep) if name == "routed" else contextlib.nullcontext()

    if args.compile:
        for name in VARIANTS:
            with routing(name):
                for r in range(rounds + 1):
                    run(r, name)
    else:
        for r in range(rounds + 1):
            for name in VARIANTS:
                with routing(name):
                    run(r, name)
    return result


def summarise(samples: dict, batch: int, new_tokens: int) -> dict:
    ttft, total = statistics.median(samples["ttft_ms"]), statistics.median(samples["total_ms"])
    slots, layer_bytes = (list(x) for x in zip(*samples["kv_layers"], strict=True))
    return dict(
        ttft_ms=ttft,
        total_ms=total,
        tpot_ms=(total - ttft) / max(new_tokens - 1, 1),
        tokens_per_s=batch * new_tokens / total * 1e3,
        kv_bytes=sum(layer_bytes),
        kv_layer_slots=slots,
        kv_layer_bytes=layer_bytes,
        peak_bytes=samples["peak_bytes"],
    )


def print_table(rows: list[dict]) -> None:
    head = ["preset", "batch", "visual (k)", "variant", "ttft ms", "tpot ms", "total ms", "tok/s", "KV MiB"]
    head += ["peak MiB", "total/ideal", "KV/ideal"]
    table = []
    for r in rows:
        ideal = r["ideal"]
        for name in VARIANTS:
            v = r[name]
            peak = "-" if v["peak_bytes"] is None else f"{v['peak_bytes'] / 2**20:.0f}"
            table.append(
                [r["preset"], r["batch"], f"{r['visual_tokens']} ({r['k']})", name]
                + [f"{v[key]:.1f}" for key in ("ttft_ms", "tpot_ms", "total_ms", "tokens_per_s")]
                + [f"{v['kv_bytes'] / 2**20:.2f}", peak]
                + [f"{v['total_ms'] / ideal['total_ms']:.3f}", f"{v['kv_bytes'] / ideal['kv_bytes']:.3f}"]
            )
    print_rows(head, table)


def print_kv_layers(rows: list[dict]) -> None:
    """Per-layer KV cache of each variant (runs of equal layers in one line): slots per sample and KiB."""
    for r in rows:
        print(f"\nKV cache per layer, batch {r['batch']}: slots per sample (text {r['text_tokens']} + visual "
              f"{r['visual_tokens']} full, k={r['k']} routed and ideal, + generated) and KiB")  # fmt: skip
        cols = [zip(r[v]["kv_layer_slots"], r[v]["kv_layer_bytes"], strict=True) for v in VARIANTS]
        table = []
        for key, run in itertools.groupby(enumerate(zip(*cols, strict=True)), key=lambda item: item[1]):
            first, *rest = [i for i, _ in run]
            layers = f"{first}-{rest[-1]}" if rest else f"{first}"
            table.append([layers] + [f"{n} ({b / 2**10:.1f})" for n, b in key] + [f"{key[1][1] / key[2][1]:.3f}"])
        print_rows(["layers", *VARIANTS, "routed/ideal"], table)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: cpu-tiny on CPU, qwen2.5-vl-7b on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")  # bf16 CUDA, fp32 CPU
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--policy", choices=("lowrank", "random", "oracle"), default="lowrank")
    p.add_argument("--keep", type=float, default=0.11)
    p.add_argument("--batch-sizes", help="comma-separated; default: the preset's")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--compile", action="store_true", help="compile the decoding steps (needs --cache static)")
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args()
    if args.compile and args.cache != "static":
        p.error("--compile needs --cache static (generate() compiles only with a static cache)")
    args.preset = args.preset or ("cpu-tiny" if args.device == "cpu" else "qwen2.5-vl-7b")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [*PRESETS[args.preset][4]]
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return args


def main() -> None:
    args = parse_args()
    cls, config = build_config(args.preset)
    image, tc, dtype = PRESETS[args.preset][3], config.text_config, getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = cls._from_config(config, dtype=dtype).eval()
    model.set_attn_implementation(args.attn)
    policy: Any = args.policy
    if policy == "lowrank":
        policy = LowRankScorer(tc.num_hidden_layers, tc.hidden_size, args.device, dtype)
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"cpu ({threads} threads)"
    print(f"preset {args.preset}, device {device}, {dtype}, attn {args.attn}, policy {args.policy}, keep {args.keep}, "
          f"{args.new_tokens} new tokens, {args.cache} cache, compile {args.compile}, "
          f"warmup {args.warmup}, repeats {args.repeats}")  # fmt: skip
    rows = []
    with torch.inference_mode():
        feats = image_features(model, image, args.device, dtype)
        n = feats.shape[0]
        k = kept_tokens(args.keep, n)
        for b in args.batch_sizes:
            full = prefill_call(config, feats, b, args.text_tokens, args.seed, image)
            ideal = prefill_call(config, feats[:k], b, args.text_tokens, args.seed, image)
            calls = {name: generate_call(call, args.new_tokens, tc.pad_token_id or 0, args) for name, call in
                     (("full", full), ("routed", full), ("ideal", ideal))}  # fmt: skip
            samples = bench(model, calls, policy, args.keep, args)
            row = dict(preset=args.preset, batch=b, visual_tokens=n, k=k, keep=args.keep, text_tokens=args.text_tokens)
            row.update(new_tokens=args.new_tokens)
            row.update({name: summarise(samples[name], b, args.new_tokens) for name in VARIANTS})
            rows.append(dict(row, samples_ms={name: {key: samples[name][key] for key in ("ttft_ms", "total_ms")}
                                               for name in VARIANTS}))  # fmt: skip
    print_table(rows)
    print_kv_layers(rows)
    if args.json:
        versions = dict(torch=torch.__version__, transformers=transformers.__version__, alvts=alvts.__version__)
        versions["python"] = platform.python_version()
        run_config = {key: v for key, v in vars(args).items() if key not in ("json", "preset")}
        run_config.update(threads=threads, model=cls.__name__, timing=TIMING)
        with open(args.json, "w") as fh:
            json.dump(dict(device=device, versions=versions, preset=args.preset, rows=rows, config=run_config), fh,
                      indent=1)  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
