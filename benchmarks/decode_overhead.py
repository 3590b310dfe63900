"""What the router adds to one decoding step, counted rather than timed: tensor ops (kernel launches on a GPU) and
Python function calls, on the tiny random models.

A decode step of a 7B model on an H100 is bound by per-step host overhead, not by the GPU (GPU-performance issue),
so whatever the router adds per layer in Python and small launches goes straight into time per output token. Both
counts are deterministic, unlike host timings on a shared CPU (stock decode steps of the same tiny model measured
3.6 to 6.4 ms in consecutive runs here). Per family: the counts of generate() with T + 1 new tokens minus those
with 1, over T, for the stock model and the routed one (random policy, keep 0.25); `per layer` = added / L.

    python benchmarks/decode_overhead.py --json /tmp/decode_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import alvts
from alvts.testing import DEFAULT_IMAGES, FAMILIES, tiny_inputs, tiny_model


class OpCounter(TorchDispatchMode):
    """Counts dispatched tensor ops (each a kernel launch, or more, on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def counts(model, inputs: dict, new_tokens: int) -> tuple[int, int]:
    """(tensor ops, Python calls) of one generate() call."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    with OpCounter() as ops:
        sys.setprofile(profile)
        try:
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        finally:
            sys.setprofile(None)
    return ops.ops, calls


def per_step(model, inputs: dict, new_tokens: int) -> tuple[float, float]:
    (ops_long, calls_long), (ops_one, calls_one) = counts(model, inputs, new_tokens + 1), counts(model, inputs, 1)
    return (ops_long - ops_one) / new_tokens, (calls_long - calls_one) / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    print(f"{'family':>11}  {'':6}  {'stock':>7}  {'routed':>7}  {'added':>6}  {'per layer':>9}")
    for family in args.families.split(","):
        model = tiny_model(family, "sdpa")
        inputs = tiny_inputs(model, [[DEFAULT_IMAGES[family][0]]], seed=0)
        with torch.no_grad():
            stock = per_step(model, inputs, args.new_tokens)
            with alvts.routed(model, "random", keep=0.25):
                routed = per_step(model, inputs, args.new_tokens)
        layers = model.config.get_text_config().num_hidden_layers
        row = dict(family=family, layers=layers)
        for i, what in enumerate(("ops", "python_calls")):
            row[what] = dict(stock=stock[i], routed=routed[i], added_per_layer=(routed[i] - stock[i]) / layers)
            print(f"{family if i == 0 else '':>11}  {what.split('_')[-1]:6}  {stock[i]:7.0f}  {routed[i]:7.0f}  "
                  f"{routed[i] - stock[i]:+6.0f}  {(routed[i] - stock[i]) / layers:+9.1f}")  # fmt: skip
        rows.append(row)
    if args.json:
        versions = dict(torch=torch.__version__, transformers=transformers.__version__, alvts=alvts.__version__,
                        python=platform.python_version())  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(dict(versions=versions, config=vars(args), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
