"""Calibration cost and selector quality by rank: time, peak memory and held-out recall@k per layer.

For each rank, `alvts.calibration.pipeline` fits every decoder layer of the model on the same samples (Stage A, then
Stage B) and the pack's own held-out metrics are reported: recall@k at keep 1/3, 2/9, 1/9 of the visual tokens
(the fraction of the oracle's top-k the selector also picks), for Stage A alone (A) and after Stage B (AB).
Time is wall-clock for the whole `calibrate` call (layer inputs captured once per call). Peak memory: CUDA
`max_memory_allocated` (reset per rank), on CPU the process's peak RSS (monotonic, so it is the peak so far).

    python benchmarks/calibration.py --model demo --json /tmp/calibration_demo.json          # CPU, a few minutes
    python benchmarks/calibration.py --model /path/to/Qwen2.5-VL-7B-Instruct --device cuda --num-samples 256
    python benchmarks/calibration.py --preset qwen2.5-vl-7b --ranks 32 --num-samples 256    # 7B shapes, no download
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from prefill import PRESETS, build_config, image_features, prefill_call

from alvts.calibration import CalibrationConfig, calibrate
from alvts.calibration.fit import RECALL_RATIOS
from alvts.cli.calibrate import encode_samples
from alvts.cli.common import load_checked_config, load_model_and_processor, locate_model
from alvts.demo.rows import suite_calibration_rows

KEYS = [f"recall@{r:.3f}" for r in RECALL_RATIOS]
KEY_NAMES = [f"{stage}_{k}" for stage in ("A", "AB") for k in KEYS]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@torch.no_grad()
def preset_model_and_samples(args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict]]:
    """A prefill.py preset's random-weight model and `num_samples` single-sample calls with random image features
    (text + the preset's visual token count), fed to the decoder through `mm_encoder_outputs` like prefill.py."""
    cls, config = build_config(args.preset)
    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device == "cuda" else "fp32")
    ]
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype).eval()
    model.set_attn_implementation("sdpa")
    image, samples = PRESETS[args.preset][3], []
    for s in range(args.num_samples):
        call = prefill_call(config, image_features(model, image, device, dtype), 1, 64, args.seed + s, image)
        samples.append({key: value for key, value in call.items() if key not in ("logits_to_keep", "use_cache")})
    return model, samples


def run(args: argparse.Namespace) -> dict:
    if args.preset:
        model, samples = preset_model_and_samples(args)
    else:
        path = locate_model(args.model)
        config = load_checked_config(path, args.model)
        model, processor = load_model_and_processor(path, args.model, config, args.device, args.dtype)
        rows = suite_calibration_rows(args.num_samples)
        samples = list(encode_samples(processor, rows, model.device))
    results = []
    for rank in args.ranks:
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        config = CalibrationConfig(rank=rank, stage_b_steps=args.stage_b_steps, seed=args.seed)
        started = time.perf_counter()
        pack = calibrate(model, samples, config)
        seconds = time.perf_counter() - started
        layers = {int(i): m for i, m in pack.config.metrics.items()}
        results.append(
            {"rank": rank, "seconds": round(seconds, 2), "peak_memory_mb": round(peak_memory_mb(model.device), 1),
             "layers": layers}
        )  # fmt: skip
    return {
        "model": f"{args.preset} (random weights)" if args.preset else args.model,
        "num_samples": len(samples),
        "stage_b_steps": args.stage_b_steps,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }


def print_tables(report: dict) -> None:
    print(f"{report['model']}: {report['num_samples']} samples, {report['stage_b_steps']} Stage B steps, "
          f"{report['device']} {report['dtype']}")  # fmt: skip
    print("\n| rank | seconds | peak MB | " + " | ".join(f"{k} A -> AB (mean over layers)" for k in KEYS) + " |")
    print("|---" * (3 + len(KEYS)) + "|")
    for result in report["results"]:
        mean = {key: sum(m[key] for m in result["layers"].values()) / len(result["layers"]) for key in KEY_NAMES}
        cells = [f"{mean['A_' + k]:.3f} -> {mean['AB_' + k]:.3f}" for k in KEYS]
        print(f"| {result['rank']} | {result['seconds']} | {result['peak_memory_mb']} | " + " | ".join(cells) + " |")
    for result in report["results"]:
        print(f"\nrank {result['rank']}: per layer, held-out recall@k (A -> AB), Spearman (AB)")
        print("| layer | " + " | ".join(KEYS) + " | spearman |")
        print("|---" * (2 + len(KEYS)) + "|")
        for layer, m in sorted(result["layers"].items()):
            cells = [f"{m['A_' + k]:.3f} -> {m['AB_' + k]:.3f}" for k in KEYS]
            print(f"| {layer} | " + " | ".join(cells) + f" | {m['AB_spearman']:.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="'demo', a local folder or a Hub id")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="instead of --model: a prefill.py preset with random weights and "
        "random image features (time and memory at real shapes; recall on random weights says little)"
    )  # fmt: skip
    parser.add_argument("--ranks", type=lambda s: [int(r) for r in s.split(",")], default=[8, 16, 32, 64])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--stage-b-steps", type=int, default=300)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    report = run(args)
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
