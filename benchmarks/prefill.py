"""Prefill latency of a routed VLM next to the stock model and the zero-overhead limit.

One prefill is one forward over the prompt (`logits_to_keep=1`, `use_cache=True`, under `torch.inference_mode()`):
  full    the stock model on text + all N visual tokens per sample;
  routed  the same model after `alvts.apply(model, policy, keep=K)`, same inputs;
  ideal   the stock model (routing removed) on the same text + only k = max(1, floor(K*N)) visual tokens per sample:
          what a router with zero overhead would cost (every layer sees exactly k visual tokens).

Method. The vision tower is excluded from all three timings in the same way: it runs once, untimed, and its output
goes to every timed call as `mm_encoder_outputs` (transformers' precomputed-encoder input; every family here takes
it). So each timed call is the same `model(input_ids=..., attention_mask=..., mm_encoder_outputs=..., ...)`: token
embedding, scatter of the visual features into their placeholders, (Qwen) M-RoPE position ids, the decoder stack
(Qwen3-VL: with its DeepStack additions, whose features ride in `mm_encoder_outputs` too), the LM head on the last
position. For ideal, input_ids hold k placeholders per image and the features are each image's first k rows (Qwen:
image_grid_thw (1, m, m*k) with merge size m, so its position code runs on k tokens); the values do not matter for
timing. Every warmup and timed round runs full, routed, ideal back to back (routing is applied and removed around the
routed call, outside the timed region), so drift on a shared machine hits all three alike; medians are reported.

Policy `lowrank` (default) is a cost stand-in for a fitted rank-32 selector, NOT an accurate one: per layer, fixed
random (hidden, 32) projections Pq, Pk of the input-normed hidden states x; score of visual token j = column mean over
visual queries i of (x Pq)(x Pk)^T, computed exactly as (mean_i x_i Pq) . (x_j Pk). `random`, `oracle`: alvts' own.

Presets (PRESETS below; benchmarks/README.md): `cpu-tiny*` run on a CPU (small text stacks); the others build the
real text stacks with random weights on the GPU (no download) and a tiny vision tower of the real geometry, so the
visual token count per image is the real one.

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
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, image_size_to_num_patches
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

import alvts

# Text stacks: the public config.json of each checkpoint (benchmarks/README.md names them).
LLAMA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)  # fmt: skip
TINY_LM = dict(LLAMA_7B, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=8)  # fmt: skip
TINY = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2)
# the newer families' CPU presets: hidden 128 (4 heads of 32), as their ~152k-token LM head dominates a CPU decode step
TINY_NARROW = dict(TINY, hidden_size=128, intermediate_size=344, num_attention_heads=4)
QWEN_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
)  # fmt: skip
TINY_QWEN = dict(QWEN_7B, **TINY, rope_parameters=dict(QWEN_7B["rope_parameters"], mrope_section=[8, 12, 12]))
# Qwen2-7B-Instruct as LLaVA-OneVision-7B's decoder: its vocabulary grown by <image>, <video> to 152128 (64-padded)
QWEN2_7B = dict(QWEN_7B, vocab_size=152128, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6})  # fmt: skip
INTERNVL3_8B = dict(QWEN2_7B, vocab_size=151674,  # Qwen2.5-7B as InternVL3-8B's decoder
                    rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6})  # fmt: skip
QWEN3_VL_8B = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, vocab_size=151936, max_position_embeddings=262144, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                     "rope_theta": 5e6},
)  # fmt: skip
QWEN3_VL_30B_A3B = dict(QWEN3_VL_8B, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                        num_key_value_heads=4, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                        decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
TINY_QWEN3 = dict(QWEN3_VL_8B, **TINY_NARROW, head_dim=32,
                  rope_parameters=dict(QWEN3_VL_8B["rope_parameters"], mrope_section=[6, 5, 5]))  # fmt: skip
TINY_QWEN3_MOE = dict(QWEN3_VL_30B_A3B, **TINY_QWEN3, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128)

# Tiny vision towers (hidden 32; one layer, Qwen3-VL three for its three DeepStack levels); geometry from the preset.
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
QWEN_TOWER = dict(
    depth=1, hidden_size=32, intermediate_size=64, num_heads=2, spatial_merge_size=2, temporal_patch_size=2
)
QWEN3_TOWER = dict(QWEN_TOWER, depth=3, num_position_embeddings=2304, deepstack_visual_indexes=[0, 1, 2])
QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
LLAVA_IDS = dict(image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default")
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# family: (model class, config class, tiny tower, config options)
FAMILIES: dict[str, tuple] = {
    "llava": (LlavaForConditionalGeneration, LlavaConfig, TOWER, LLAVA_IDS),
    "llava_next": (LlavaNextForConditionalGeneration, LlavaNextConfig, TOWER,
                   dict(LLAVA_IDS, image_grid_pinpoints=NEXT_PINPOINTS)),
    "llava_onevision": (LlavaOnevisionForConditionalGeneration, LlavaOnevisionConfig,
                        dict(TOWER, vision_use_head=False), dict(image_token_index=151646, video_token_index=151647)),
    "internvl": (InternVLForConditionalGeneration, InternVLConfig, TOWER,
                 dict(image_token_id=151667, tie_word_embeddings=False)),
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig,
                   dict(QWEN_TOWER, fullatt_block_indexes=[0], window_size=112), QWEN_IDS),
    "qwen3_vl": (Qwen3VLForConditionalGeneration, Qwen3VLConfig, QWEN3_TOWER, QWEN_IDS),
    "qwen3_vl_moe": (Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeConfig, QWEN3_TOWER, QWEN_IDS),
}  # fmt: skip
QWEN = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
OV_TILE, INTERNVL_TILE = dict(image_size=384, patch_size=14), dict(image_size=[448, 448], patch_size=[14, 14])
# name: (family, text stack, vision tower geometry, image, batch sizes); image: Qwen (t, h, w) patches, NeXT and
# OneVision (h, w) pixels, InternVL a number of tiles
PRESETS: dict[str, tuple] = {
    "cpu-tiny": ("llava", TINY_LM, dict(image_size=96, patch_size=4), None, (1, 2)),
    "cpu-tiny-qwen": ("qwen2_5_vl", TINY_QWEN, dict(patch_size=14), (1, 24, 24), (1, 2)),
    "cpu-tiny-qwen3-vl": ("qwen3_vl", TINY_QWEN3, dict(patch_size=16), (1, 32, 32), (1, 2)),
    "cpu-tiny-qwen3-vl-moe": ("qwen3_vl_moe", TINY_QWEN3_MOE, dict(patch_size=16), (1, 32, 32), (1, 2)),
    "cpu-tiny-llava-onevision": (
        "llava_onevision",
        dict(QWEN2_7B, **TINY_NARROW),
        dict(image_size=112, patch_size=14),
        (224, 224),
        (1, 2),
    ),
    "cpu-tiny-internvl": ("internvl", dict(INTERNVL3_8B, **TINY_NARROW), INTERNVL_TILE, 1, (1, 2)),
    "qwen2.5-vl-7b": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (1, 72, 72), (1, 8)),
    "qwen2.5-vl-7b-5184": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (1, 144, 144), (1,)),
    # 16 frames at 448 x 448: 8 temporal patches of 32 x 32, 2048 tokens, fed as one (8, 32, 32) grid through the
    # image path: the language model's cost is a video's (only its M-RoPE temporal positions are spaced differently)
    "qwen2.5-vl-7b-video16": ("qwen2_5_vl", QWEN_7B, dict(patch_size=14), (8, 32, 32), (1, 4)),
    "qwen3-vl-8b": ("qwen3_vl", QWEN3_VL_8B, dict(patch_size=16), (1, 64, 64), (1, 8)),  # a 1024 x 1024 image
    "qwen3-vl-30b-a3b": ("qwen3_vl_moe", QWEN3_VL_30B_A3B, dict(patch_size=16), (1, 64, 64), (1, 8)),
    "llava-1.5-7b": ("llava", LLAMA_7B, dict(image_size=336, patch_size=14), None, (1, 8)),
    "llava-next-7b": ("llava_next", LLAMA_7B, dict(image_size=336, patch_size=14), (672, 672), (1, 8)),
    "llava-onevision-7b": ("llava_onevision", QWEN2_7B, OV_TILE, (768, 768), (1, 8)),
    "internvl3-8b": ("internvl", INTERNVL3_8B, INTERNVL_TILE, 7, (1, 8)),  # 6 tiles + thumbnail, e.g. 1344 x 896
}
TIMING = "median ms per prefill call; vision tower excluded via mm_encoder_outputs; full/routed/ideal round-robin"
TEXT_STACK = dict(hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                  kv_heads="num_key_value_heads", head_dim="head_dim", intermediate="intermediate_size",
                  experts="num_experts", experts_per_token="num_experts_per_tok",
                  expert_intermediate="moe_intermediate_size", vocab="vocab_size")  # fmt: skip


def build_config(preset: str) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    """Model class and config: the preset's text stack with its family's tiny vision tower."""
    family, text, geometry, _, _ = PRESETS[preset]
    cls, config_cls, tower, options = FAMILIES[family]
    vision = dict(tower, **geometry)
    if family in QWEN:
        vision["out_hidden_size"] = text["hidden_size"]
    if family == "llava_onevision":  # the real 6 x 6 grid of tile pinpoints, at the preset's tile size
        s = vision["image_size"]
        options = dict(options, image_grid_pinpoints=[[a * s, b * s] for a in range(1, 7) for b in range(1, 7)])
    return cls, config_cls(text_config=dict(text), vision_config=vision, **options)


def text_stack(config: PreTrainedConfig) -> dict:
    """The text stack's shape in short names (MoE fields where the config has them)."""
    tc = config.text_config
    return {short: getattr(tc, key) for short, key in TEXT_STACK.items() if getattr(tc, key, None) is not None}


def planned_visual_tokens(config: PreTrainedConfig, image: Any) -> int:
    """Visual tokens of one image (anyres: exact for square images only; a real run uses the tower's count)."""
    vc, family = config.vision_config, config.model_type
    if family in QWEN:
        return math.prod(image) // vc.spatial_merge_size**2
    if family == "internvl":
        return image * config.image_seq_length
    side = vc.image_size // vc.patch_size
    if family == "llava":
        return side * side
    rows, cols = get_anyres_image_grid_shape(image, config.image_grid_pinpoints, vc.image_size)
    h, w = rows * side, cols * side
    if family == "llava_onevision":  # anyres_max_M: a grid of more than ~M tiles' features is scaled down
        ratio = math.sqrt(h * w / (int(config.vision_aspect_ratio.removeprefix("anyres_max_")) * side**2))
        h, w = (int(h // ratio), int(w // ratio)) if ratio > 1.1 else (h, w)
    return side * side + h * (w + 1)  # base tile + grid tiles with one newline per row


def image_features(model: PreTrainedModel, image: Any, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Run the vision tower once (untimed) on one random image: `(N, hidden)` features as the LM receives them;
    Qwen3-VL `(N, (1 + levels) * hidden)`: the features, then each DeepStack level's, side by side."""
    config = model.config
    vc, family = config.vision_config, config.model_type
    if family in QWEN:
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        kw = {"pixel_values": torch.randn(math.prod(image), dim), "image_grid_thw": torch.tensor([image])}
    elif family == "llava":
        kw = {"pixel_values": torch.randn(1, 3, vc.image_size, vc.image_size)}
    elif family == "internvl":
        kw = {"pixel_values": torch.randn(image, 3, *vc.image_size)}
    else:
        tiles = image_size_to_num_patches(image, config.image_grid_pinpoints, vc.image_size)
        pixels = torch.randn(1, tiles, 3, vc.image_size, vc.image_size)
        kw = {"pixel_values": pixels, "image_sizes": torch.tensor([image])}
    kw = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in kw.items()}
    out = model.model.get_image_features(**kw, return_dict=True)
    levels = (out.pooler_output, *(getattr(out, "deepstack_features", None) or ()))
    return torch.cat([torch.cat(list(level)) for level in levels], -1)


def prefill_call(
    config: PreTrainedConfig, feats: torch.Tensor, batch: int, text_tokens: int, seed: int, image: Any
) -> dict:
    """`model(**call)` kwargs: per sample `text[:half], <N image placeholders>, text[half:]`, N = len(feats).

    Qwen gets `image` as its grid when it has N tokens, else the grid (1, m, m*N) of N tokens (ideal)."""
    n, family = feats.shape[0], config.model_type
    qwen = family in QWEN
    visual = [config.image_token_id] * n
    if qwen:
        visual = [config.vision_start_token_id, *visual, config.vision_end_token_id]
    n_text = text_tokens - (2 if qwen else 0)
    text = torch.randint(10, 30000, (batch, n_text), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([text[:, : n_text // 2], torch.tensor(visual).expand(batch, -1), text[:, n_text // 2 :]], 1)
    ids = ids.to(feats.device)
    main, *deep = feats.split(config.text_config.hidden_size, -1)
    pooled = torch.stack([main] * batch) if family == "internvl" else [main] * batch  # InternVL: one tensor
    if deep:  # Qwen3-VL: per DeepStack level, per image
        encoded = BaseModelOutputWithDeepstackFeatures(
            pooler_output=pooled, deepstack_features=[[d] * batch for d in deep]
        )
    else:
        encoded = BaseModelOutputWithPooling(pooler_output=pooled)
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_encoder_outputs={"image": encoded})
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


def print_rows(head: list[str], table: list[list]) -> None:
    """Right-aligned columns under a header and a rule."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]
    for line in [head, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)))


def print_table(rows: list[dict]) -> None:
    head = ["preset", "batch", "visual tokens", "keep", "full ms", "routed ms", "ideal ms"]
    head += ["routed/full", "ideal/full", "routed/ideal"]
    print_rows(head, [
        [r["preset"], r["batch"], f"{r['visual_tokens']} (k={r['k']})", r["keep"]]
        + [f"{r[key]:.1f}" for key in ("full_ms", "routed_ms", "ideal_ms")]
        + [f"{r[key]:.3f}" for key in ("routed_over_full", "ideal_over_full", "routed_over_ideal")]
        for r in rows
    ])  # fmt: skip


def main() -> None:
    args = parse_args()
    cls, config = build_config(args.preset)
    image, tc, dtype = PRESETS[args.preset][3], config.text_config, getattr(torch, args.dtype)
    lm, n_planned = text_stack(config), planned_visual_tokens(config, image)
    print(f"preset {args.preset}: {cls.__name__}, text stack {lm}, {n_planned} visual tokens per image (planned)")
    if args.dry_run:
        print(f"  tiny vision tower {config.vision_config.model_type} {PRESETS[args.preset][2]}, image {image}")
        with torch.device("meta"):
            params = sum(t.numel() for t in cls._from_config(config).parameters())
        print(f"  {params / 1e9:.2f} B parameters (counted on the meta device); would run {dtype} on {args.device}")
        k = kept_tokens(args.keep, n_planned)
        per_token = 2 * lm["kv_heads"] * lm.get("head_dim", lm["hidden"] // lm["heads"]) * dtype.itemsize
        for b in args.batch_sizes:
            seq, ideal_seq = args.text_tokens + n_planned, args.text_tokens + k
            print(f"  batch {b}: full/routed seq {seq}, ideal seq {ideal_seq} (k={k} at keep={args.keep}); KV per "
                  f"layer full {b * seq * per_token / 2**20:.2f} MiB, routed = ideal "
                  f"{b * ideal_seq * per_token / 2**20:.2f} MiB")  # fmt: skip
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
