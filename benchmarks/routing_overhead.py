"""What the router adds to a prefill and to one decoding step, counted rather than timed: dispatched tensor ops
(each a kernel launch on a GPU, views aside) and Python function calls, on the tiny random models.

A decode step of a 7B model on an H100 is bound by per-step host overhead, and a routed prefill layer pays one launch
per op it adds, so whatever the router adds per layer goes straight into time. Counts are deterministic, unlike host
timings on a shared CPU. Per family, stock model against the routed one (random policy, keep 0.25; one sample, or
with --batch 2 two left-padded samples with different visual counts, so routed layers have padding slots and masks):
- prefill: one forward over the prompt with a cache, ops inside each decoder layer's call (`per layer`, the
  routed layer against the stock one) and outside them (`per forward`: the pre-hook's planning);
- decode: generate() with T + 1 new tokens minus generate() with 1, over T, per layer.
`--by-op` lists, for a routed prefill layer, which aten ops it adds.

    python benchmarks/routing_overhead.py --json /tmp/routing_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import alvts
from alvts.testing import DEFAULT_IMAGES, FAMILIES, MIXED_IMAGES, tiny_inputs, tiny_model


class OpCounter(TorchDispatchMode):
    """Counts dispatched tensor ops, split by whether they ran inside a decoder layer's call."""

    def __init__(self, layers) -> None:
        super().__init__()
        self.inside, self.outside, self.by_op = 0, 0, Counter()
        self._depth = 0
        self._handles = [h for layer in layers for h in (
            layer.register_forward_pre_hook(lambda *_: self._enter(1)),
            layer.register_forward_hook(lambda *_: self._enter(-1)),
        )]  # fmt: skip

    def _enter(self, step: int) -> None:
        self._depth += step

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._depth:
            self.inside += 1
            self.by_op[func.overloadpacket.__name__] += 1
        else:
            self.outside += 1
        return func(*args, **(kwargs or {}))


def prefill_counts(model, inputs: dict) -> OpCounter:
    """Ops of one forward over the prompt, as generate()'s prefill runs it (with a cache)."""
    with OpCounter(model.model.language_model.layers) as ops:
        model(**inputs, use_cache=True)
    return ops


def generate_counts(model, inputs: dict, new_tokens: int) -> tuple[int, int]:
    """(tensor ops, Python calls) of one generate() call."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    with OpCounter([]) as ops:
        sys.setprofile(profile)
        try:
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        finally:
            sys.setprofile(None)
    return ops.outside, calls


def decode_step(model, inputs: dict, new_tokens: int) -> tuple[float, float]:
    (ops_long, calls_long) = generate_counts(model, inputs, new_tokens + 1)
    (ops_one, calls_one) = generate_counts(model, inputs, 1)
    return (ops_long - ops_one) / new_tokens, (calls_long - calls_one) / new_tokens


def measure(family: str, new_tokens: int, policy: str, keep: float, batch: int) -> tuple[dict, Counter]:
    model = tiny_model(family, "sdpa")
    images = [[DEFAULT_IMAGES[family][0]]] if batch == 1 else MIXED_IMAGES[family]  # 2: left padding, two budgets
    inputs = tiny_inputs(model, images, seed=0)
    layers = model.config.get_text_config().num_hidden_layers
    with torch.no_grad():
        stock_prefill, stock_decode = prefill_counts(model, inputs), decode_step(model, inputs, new_tokens)
        with alvts.routed(model, policy, keep=keep):
            routed_prefill, routed_decode = prefill_counts(model, inputs), decode_step(model, inputs, new_tokens)
    added = routed_prefill.by_op.copy()
    added.subtract(stock_prefill.by_op)
    row = dict(
        family=family, layers=layers,
        prefill_layer=dict(stock=stock_prefill.inside / layers, routed=routed_prefill.inside / layers,
                           added=(routed_prefill.inside - stock_prefill.inside) / layers),
        prefill_forward=dict(stock=stock_prefill.outside, routed=routed_prefill.outside,
                             added=routed_prefill.outside - stock_prefill.outside),
        decode_ops=dict(stock=stock_decode[0], routed=routed_decode[0],
                        added_per_layer=(routed_decode[0] - stock_decode[0]) / layers),
        decode_python_calls=dict(stock=stock_decode[1], routed=routed_decode[1],
                                 added_per_layer=(routed_decode[1] - stock_decode[1]) / layers),
    )  # fmt: skip
    return row, Counter({op: n / layers for op, n in added.items() if n})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--policy", default="random")
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, choices=(1, 2), help="2: left-padded, different budgets")
    parser.add_argument("--by-op", action="store_true", help="list the aten ops a routed prefill layer adds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    print(f"{'family':>11}  {'what':<24}  {'stock':>7}  {'routed':>7}  {'added':>7}")
    for family in args.families.split(","):
        row, added = measure(family, args.new_tokens, args.policy, args.keep, args.batch)
        rows.append(row | {"prefill_layer_added_by_op": dict(added)})
        for i, (what, values) in enumerate((
            ("prefill ops / layer", row["prefill_layer"]),
            ("prefill ops / forward", row["prefill_forward"]),
            ("decode ops / step", row["decode_ops"]),
            ("decode Python calls / step", row["decode_python_calls"]),
        )):  # fmt: skip
            added_text = (f"{values['added_per_layer']:+7.1f}/layer" if "added_per_layer" in values
                          else f"{values['added']:+7.1f}")  # fmt: skip
            print(f"{family if i == 0 else '':>11}  {what:<24}  {values['stock']:7.1f}  {values['routed']:7.1f}  "
                  f"{added_text}")  # fmt: skip
        if args.by_op:
            print("             added per routed prefill layer: "
                  + ", ".join(f"{op} {n:+g}" for op, n in added.most_common()))  # fmt: skip
    if args.json:
        versions = dict(torch=torch.__version__, transformers=transformers.__version__, alvts=alvts.__version__,
                        python=platform.python_version())  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(dict(versions=versions, config=vars(args), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
