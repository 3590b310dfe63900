"""Prefill latency of a routed VLM next to the stock model and the zero-overhead limit.

One prefill is one forward over the prompt (`logits_to_keep=1`, `use_cache=True`, under `torch.inference_mode()`):
  full    the stock model on text + all N visual tokens per sample;
  routed  the same model after `alvts.apply(model, policy, keep=K)`, same inputs;
  ideal   the stock model (routing removed) on the same text + only k = max(1, floor(K*N)) visual tokens per sample:
          what a router with zero overhead would cost (every layer sees exactly k visual tokens).

Method. The vision tower is excluded from all three timings in the same way: it runs once, untimed, and its output
goes to every timed call as `mm_encoder_outputs` (transformers' precomputed-encoder input). So each timed call is the
same `model(input_ids=..., attention_mask=..., mm_encoder_outputs=..., ...)`: token embedding, scatter of the visual
features into their placeholders, (Qwen) M-RoPE position ids, the decoder stack, the LM head on the last position.
For ideal, input_ids hold k placeholders per image and the features are each image's first k rows (Qwen:
image_grid_thw (1, m, m*k) with merge size m, so its position code runs on k tokens); the values do not matter for
timing. Every warmup and timed round runs full, routed, ideal back to back (routing is applied and removed around the
routed call, outside the timed region), so drift on a shared machine hits all three alike; medians are reported.

Policy `lowrank` (default) is a cost stand-in for a fitted rank-32 selector, NOT an accurate one: per layer, fixed
random (hidden, 32) projections Pq, Pk of the input-normed hidden states x; score of visual token j = column mean over
visual queries i of (x Pq)(x Pk)^T, computed exactly as (mean_i x_i Pq) . (x_j Pk). `random`, `oracle`: alvts' own.

Presets (PRESETS below; benchmarks/README.md): `cpu-tiny` (CPU default) is a LLaVA-1.5 model with a small text stack;
`qwen2.5-vl-7b`, `llava-1.5-7b`, `llava-next-7b` build the real 7B text stacks with random weights on the GPU (no
download) and a tiny vision tower giving the real visual token count per image (1296, 576, 2928).

    python benchmarks/prefill.py --preset cpu-tiny --json /tmp/prefill_cpu.json             # CPU, < 60 s
    python benchmarks/prefill.py --preset qwen2.5-vl-7b --json prefill_qwen.json            # GPU (bf16, sdpa)
    python benchmarks/prefill.py --preset llava-next-7b --dry-run   # configs and planned shapes, builds no weights
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Any

import torch
import transformers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

import alvts

LLAMA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)  # fmt: skip
TINY_LM = dict(LLAMA_7B, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=8)  # fmt: skip
QWEN_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
)  # fmt: skip
TINY_QWEN = dict(
    QWEN_7B,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    rope_parameters=dict(QWEN_7B["rope_parameters"], mrope_section=[8, 12, 12]),
)
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# name: (family, text stack, vision tower geometry, image (Qwen (t, h, w) patches; NeXT (h, w) pixels), batch sizes)
PRESETS: dict[str, tuple] = {
    "cpu-tiny": ("llava", TINY_LM, dict(image_size=96, patch_size=4), None, (1, 2)),
    "cpu-tiny-qwen": ("qwen2_5_vl", TINY_QWEN, dict(patch_size=14), (1, 24, 24), (1, 2)),
    "qwen2.5-vl-7b": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (1, 72, 72), (1, 8)),
    "qwen2.5-vl-7b-5184": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (1, 144, 144), (1,)),
    # 16 frames at 448 x 448: 8 temporal patches of 32 x 32, 2048 tokens, fed as one (8, 32, 32) grid through the
    # image path: the language model's cost is a video's (only its M-RoPE temporal positions are spaced differently)
    "qwen2.5-vl-7b-video16": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (8, 32, 32), (1, 4)),
    "llava-1.5-7b": ("llava", LLAMA_7B, dict(image_size=336, patch_size=14), None, (1, 8)),
    "llava-next-7b": ("llava_next", LLAMA_7B, dict(image_size=336, patch_size=14), (672, 672), (1, 8)),
}
TIMING = "median ms per prefill call; vision tower excluded via mm_encoder_outputs; full/routed/ideal round-robin"
QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def build_config(preset: str) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    """Model class and config: the preset's text stack with a tiny (1-layer, hidden 32) vision tower."""
    family, text, tower, _, _ = PRESETS[preset]
    if family == "qwen2_5_vl":
        vision = dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
            fullatt_block_indexes=[0], window_size=112, spatial_merge_size=2, temporal_patch_size=2, **tower,
        )  # fmt: skip
        return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(text_config=text, vision_config=vision, **QWEN_IDS)
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, **tower)
    common = dict(
        vision_config=clip, text_config=LlamaConfig(**text), image_token_id=32000, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    if family == "llava":
        return LlavaForConditionalGeneration, LlavaConfig(**common)
    return LlavaNextForConditionalGeneration, LlavaNextConfig(**common, image_grid_pinpoints=NEXT_PINPOINTS)


def planned_visual_tokens(config: PreTrainedConfig, image: Any) -> int:
    """Visual tokens of one image (for NeXT exact for square images only; a real run uses the tower's count)."""
    vc = config.vision_config
    if config.model_type == "qwen2_5_vl":
        return math.prod(image) // vc.spatial_merge_size**2
    side = vc.image_size // vc.patch_size
    if config.model_type == "llava":
        return side * side
    rows, cols = get_anyres_image_grid_shape(image, config.image_grid_pinpoints, vc.image_size)
    return side * side + rows * side * (cols * side + 1)  # base tile + grid tiles with one newline per row


def image_features(model: PreTrainedModel, image: Any, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Run the vision tower once (untimed) on one random image; `(N, hidden)` features as the LM receives them."""
    vc, family = model.config.vision_config, model.config.model_type
    if family == "qwen2_5_vl":
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        kw = {"pixel_values": torch.randn(math.prod(image), dim), "image_grid_thw": torch.tensor([image])}
    elif family == "llava":
        kw = {"pixel_values": torch.randn(1, 3, vc.image_size, vc.image_size)}
    else:
        tiles = 1 + max(h * w for h, w in model.config.image_grid_pinpoints) // vc.image_size**2
        pixels = torch.randn(1, tiles, 3, vc.image_size, vc.image_size)
        kw = {"pixel_values": pixels, "image_sizes": torch.tensor([image])}
    kw = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in kw.items()}
    return model.model.get_image_features(**kw, return_dict=True).pooler_output[0]


def prefill_call(
    config: PreTrainedConfig, feats: torch.Tensor, batch: int, text_tokens: int, seed: int, image: Any
) -> dict:
    """`model(**call)` kwargs: per sample `text[:half], <N image placeholders>, text[half:]`, N = len(feats).

    Qwen gets `image` as its grid when it has N tokens, else the grid (1, m, m*N) of N tokens (ideal)."""
    n, qwen = feats.shape[0], config.model_type == "qwen2_5_vl"
    visual = [config.image_token_id] * n
    if qwen:
        visual = [config.vision_start_token_id, *visual, config.vision_end_token_id]
    n_text = text_tokens - (2 if qwen else 0)
    text = torch.randint(10, 30000, (batch, n_text), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([text[:, : n_text // 2], torch.tensor(visual).expand(batch, -1), text[:, n_text // 2 :]], 1)
    ids = ids.to(feats.device)
    encoded = {"image": BaseModelOutputWithPooling(pooler_output=[feats] * batch)}
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_encoder_outputs=encoded)
    call.update(logits_to_keep=1, use_cache=True)
    if qwen:
        m = config.vision_config.spatial_merge_size
        grid = image if math.prod(image) == n * m * m else (1, m, m * n)
        call["image_grid_thw"] = torch.tensor([grid] * batch, device=ids.device)
        call["mm_token_type_ids"] = (ids == config.image_token_id).long()
    return call


class LowRankScorer(alvts.Policy):
    """Cost stand-in for a fitted rank-32 selector (random projections; see the module docstring)."""

    name = "lowrank"

    def __init__(self, num_layers: int, hidden: int, device: str, dtype: torch.dtype, rank: int = 32) -> None:
        gen = torch.Generator().manual_seed(1234)
        proj = torch.randn(num_layers, 2, hidden, rank, generator=gen) / hidden**0.5
        self.proj = proj.to(device, dtype)  # (layer, q/k, hidden, rank)

    def scores(self, inputs: alvts.LayerInputs) -> torch.Tensor:
        pq, pk = self.proj[inputs.layer_idx]
        x, vis = inputs.normed, inputs.visual.to(inputs.normed.dtype)
        query = torch.einsum("bs,bsh->bh", vis, x) / vis.sum(1, keepdim=True).clamp(min=1)  # mean visual query
        return torch.einsum("bsr,br->bs", x @ pk, query @ pq).float()


def kept_tokens(keep: float, n: int) -> int:
    """k = max(1, floor(keep * n)), by alvts' own budget rule (it guards the floor against float error)."""
    return int(alvts.KeepSchedule.build(1, keep, None).budget(0, torch.tensor([n]))[0])


def bench(model: PreTrainedModel, calls: dict, policy: Any, keep: float, k: int, args: argparse.Namespace) -> dict:
    """Round-robin full / routed / ideal: `warmup` rounds, then `repeats` timed rounds; ms per call."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    for r in range(args.warmup + args.repeats):
        for name, call in calls.items():
            if name == "routed":
                alvts.apply(model, policy, keep=keep)
            try:
                sync()
                start = time.perf_counter()
                model(**call)
                sync()
                elapsed = (time.perf_counter() - start) * 1e3
                if name == "routed" and r == 0:  # sanity: every layer really kept k visual tokens per sample
                    kept = alvts.routing_state(model).visual_kept()
                    if not bool((kept == k).all()):
                        raise RuntimeError(f"routed kept {kept.unique().tolist()} visual tokens, expected k={k}")
            finally:
                if name == "routed":
                    alvts.remove(model)
            if r >= args.warmup:
                times[name].append(elapsed)
    return times


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: cpu-tiny on CPU, qwen2.5-vl-7b on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")  # bf16 CUDA, fp32 CPU
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--policy", choices=("lowrank", "random", "oracle"), default="lowrank")
    p.add_argument("--keep", type=float, default=0.11, help="K: each sample keeps k = max(1, floor(K*N)) visual tokens")
    p.add_argument("--batch-sizes", help="comma-separated; default: the preset's (cpu-tiny 1,2; GPU presets 1,8)")
    p.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample around the image")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--dry-run", action="store_true", help="print configs and planned shapes; build no weights")
    args = p.parse_args()
    args.preset = args.preset or ("cpu-tiny" if args.device == "cpu" else "qwen2.5-vl-7b")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [*PRESETS[args.preset][4]]
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return args


def print_table(rows: list[dict]) -> None:
    head = ["preset", "batch", "visual tokens", "keep", "full ms", "routed ms", "ideal ms"]
    head += ["routed/full", "ideal/full", "routed/ideal"]
    table = [
        [r["preset"], r["batch"], f"{r['visual_tokens']} (k={r['k']})", r["keep"]]
        + [f"{r[key]:.1f}" for key in ("full_ms", "routed_ms", "ideal_ms")]
        + [f"{r[key]:.3f}" for key in ("routed_over_full", "ideal_over_full", "routed_over_ideal")]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]
    for line in [head, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)))


def main() -> None:
    args = parse_args()
    cls, config = build_config(args.preset)
    image, tc, dtype = PRESETS[args.preset][3], config.text_config, getattr(torch, args.dtype)
    lm = dict(hidden=tc.hidden_size, layers=tc.num_hidden_layers, heads=tc.num_attention_heads)
    lm.update(kv_heads=tc.num_key_value_heads, intermediate=tc.intermediate_size, vocab=tc.vocab_size)
    n_planned = planned_visual_tokens(config, image)
    print(f"preset {args.preset}: {cls.__name__}, text stack {lm}, {n_planned} visual tokens per image (planned)")
    if args.dry_run:
        with torch.device("meta"):
            params = sum(t.numel() for t in cls._from_config(config).parameters())
        print(f"  {params / 1e9:.2f} B parameters (counted on the meta device); would run {dtype} on {args.device}")
        k = kept_tokens(args.keep, n_planned)
        for b in args.batch_sizes:
            seq, ideal_seq = args.text_tokens + n_planned, args.text_tokens + k
            print(f"  batch {b}: full/routed seq {seq}, ideal seq {ideal_seq} (k={k} at keep={args.keep})")
        return

    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = cls._from_config(config, dtype=dtype).eval()
    model.set_attn_implementation(args.attn)
    policy: Any = args.policy
    if policy == "lowrank":
        policy = LowRankScorer(tc.num_hidden_layers, tc.hidden_size, args.device, dtype)
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"cpu ({threads} threads)"
    print(f"device {device}, {dtype}, attn {args.attn}, policy {args.policy}, warmup {args.warmup}, repeats "
          f"{args.repeats} (median ms); vision tower excluded from all timings (mm_encoder_outputs)")  # fmt: skip
    rows = []
    with torch.inference_mode():
        feats = image_features(model, image, args.device, dtype)
        n = feats.shape[0]
        k = kept_tokens(args.keep, n)
        for b in args.batch_sizes:
            full = prefill_call(config, feats, b, args.text_tokens, args.seed, image)
            ideal = prefill_call(config, feats[:k], b, args.text_tokens, args.seed, image)
            times = bench(model, {"full": full, "routed": full, "ideal": ideal}, policy, args.keep, k, args)
            f, r, i = (statistics.median(times[name]) for name in ("full", "routed", "ideal"))
            row = dict(preset=args.preset, batch=b, visual_tokens=n, k=k, keep=args.keep, text_tokens=args.text_tokens)
            row.update(full_ms=f, routed_ms=r, ideal_ms=i, routed_over_full=r / f, ideal_over_full=i / f)
            rows.append(dict(row, routed_over_ideal=r / i, samples_ms=times))
    print_table(rows)
    if args.json:
        versions = dict(torch=torch.__version__, transformers=transformers.__version__, alvts=alvts.__version__)
        versions["python"] = platform.python_version()
        run_config = {key: v for key, v in vars(args).items() if key not in ("json", "dry_run", "preset")}
        run_config.update(threads=threads, model=cls.__name__, text_stack=lm, timing=TIMING)
        out = dict(device=device, versions=versions, preset=args.preset, rows=rows, config=run_config)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
