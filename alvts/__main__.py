"""`python -m alvts`: route a tiny random model of each family offline and show what routing does.

Checks keep-1.0 parity against the stock model, then routes with a policy at a budget and prints, per layer and
sample, the visual tokens that went through and the keys each layer's cache holds. (Until the demo checkpoint
ships, this is the offline main job: no weights are downloaded.)
"""

from __future__ import annotations

import argparse

import torch

import alvts
from alvts.testing import FAMILIES, tiny_inputs, tiny_model

# Two samples with different visual token counts per family (see alvts.testing.DEFAULT_IMAGES).
DEMO_IMAGES = {
    "qwen2_5_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "qwen2_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "llava": [[None], [None, None]],
    "llava_next": [[(64, 64)], [(40, 64)]],
}


def run(family: str, policy: str, keep: float, attn: str, new_tokens: int) -> None:
    model = tiny_model(family, attn)
    batch = tiny_inputs(model, DEMO_IMAGES[family])
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alvts", description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--policy", default="oracle", help="full, random or oracle")
    parser.add_argument("--keep", type=float, default=0.25, help="ratio of each sample's visual tokens, in (0, 1]")
    parser.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    for family in FAMILIES if args.family == "all" else [args.family]:
        run(family, args.policy, args.keep, args.attn, args.new_tokens)


if __name__ == "__main__":
    main()
