"""`python -m alvts`: the offline main job on the shipped demo model.

Checks keep-1.0 parity (greedy answers of the routed model equal the stock model's), then scores held-out task-suite
questions at full tokens, with blank images, and at keep 0.11 with random tokens, the oracle and the fitted selector
pack shipped in alvts/demo/pack. `--tiny` instead routes a tiny random model of each family and
prints, per layer and sample, the visual tokens that went through and the keys each layer's cache holds.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForImageTextToText

import alvts

from .. import demo
from ..demo import DEMO_MODEL_PATH, DEMO_PACK_PATH
from ..demo.experiments import print_table
from ..demo.experiments import run as run_experiments
from ..demo.tasks import EVAL_SEED
from ..demo.training_data import held_out
from ..evaluation.harness import generate_answers
from ..evaluation.processor import load_processor
from ..testing import FAMILIES, MIXED_IMAGES, tiny_inputs, tiny_model


def run(family: str, policy: str, keep: float, attn: str, new_tokens: int) -> None:
    model = tiny_model(family, attn)
    batch = tiny_inputs(model, MIXED_IMAGES[family])
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        stock = model(**batch).logits
        stock_tokens = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        with alvts.routed(model, "full"):
            parity = (model(**batch).logits - stock)[valid].abs().max().item()
            same_tokens = torch.equal(model.generate(**batch, max_new_tokens=new_tokens, do_sample=False), stock_tokens)
        with alvts.routed(model, policy, keep=keep):
            cache = alvts.RoutedCache(config=model.config)
            out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, past_key_values=cache)
            state = alvts.routing_state(model)
    visual = state.visual.sum(1).tolist()
    print(f"\n{type(model).__name__} ({attn}), batch {len(visual)}, prompt length {batch['input_ids'].shape[1]}")
    print(f"  keep 1.0: max |logit - stock| = {parity:.1e}, greedy tokens equal stock: {same_tokens}")
    print(f"  policy {policy!r}, keep {keep}: visual tokens per sample {visual}")
    print(f"  {'layer':>5}  {'visual kept per sample':>24}  {'cached keys per sample':>24}")
    kept = state.visual_kept()
    for i in range(kept.shape[0]):
        keys = cache.valid_key_counts(i).tolist()
        print(f"  {i:>5}  {str(kept[i].tolist()):>24}  {str(keys):>24}")
    print(f"  generated {out.shape[1] - batch['input_ids'].shape[1]} tokens per sample; logical length "
          f"{cache.get_seq_length()}")  # fmt: skip


def run_demo(num_per_task: int, keep: float) -> None:
    model = AutoModelForImageTextToText.from_pretrained(DEMO_MODEL_PATH).eval()
    processor = load_processor(DEMO_MODEL_PATH)
    examples = held_out(2, EVAL_SEED)
    images, questions = [e.image for e in examples], [e.question for e in examples]
    stock = generate_answers(model, processor, images, questions)
    with alvts.routed(model, "full"):
        same = generate_answers(model, processor, images, questions) == stock
    print(f"demo model {DEMO_MODEL_PATH}: keep 1.0 greedy answers equal the stock model's: {same}")
    pack = str(DEMO_PACK_PATH) if (DEMO_PACK_PATH / "selector_config.json").is_file() else None
    if pack is None:
        print(f"(no selector pack at {DEMO_PACK_PATH}: fit one with `alvts-calibrate --model demo --out DIR`)")
    table = run_experiments(str(DEMO_MODEL_PATH), num_per_task, keep, EVAL_SEED, 25, pack, progress=True)
    print_table(table, num_per_task)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alvts", description=__doc__.splitlines()[0])
    parser.add_argument("--num-per-task", type=int, default=20, help="held-out questions per task (demo)")
    parser.add_argument("--keep", type=float, help="ratio of each sample's visual tokens, in (0, 1]")
    parser.add_argument("--tiny", action="store_true", help="route tiny random models of every family instead")
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all", help="with --tiny")
    parser.add_argument("--policy", default="oracle", help="with --tiny: full, random or oracle")
    parser.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa", help="with --tiny")
    parser.add_argument("--new-tokens", type=int, default=4, help="with --tiny")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if not args.tiny and demo.is_built():
        run_demo(args.num_per_task, args.keep or 0.11)
        return
    if not args.tiny:
        print(f"No demo model at {DEMO_MODEL_PATH} yet (build it: README, Demo model); routing tiny models.")
    for family in FAMILIES if args.family == "all" else [args.family]:
        run(family, args.policy, args.keep or 0.25, args.attn, args.new_tokens)


if __name__ == "__main__":
    main()
