"""Host syncs of one prefill forward, stock vs routed, on the tiny random models (any device).

Each sync (`.item()`, `bool(t)`, `nonzero`, boolean indexing, `tolist()`) stalls a GPU's launch queue; the router
should add at most one per forward. Counted by `alvts.testing.HostSyncCounter`, for batch 1 and batch 2 (left
padding, different visual counts), at keep 1.0 ("full") and keep 0.25 ("random", "oracle").

    python benchmarks/host_syncs.py
"""

from __future__ import annotations

import torch

import alvts
from alvts.testing import DEFAULT_IMAGES, FAMILIES, HostSyncCounter, tiny_inputs, tiny_model


def syncs(model, inputs: dict) -> int:
    with torch.no_grad(), HostSyncCounter() as counter:
        model(**inputs)
    return counter.count


def main() -> None:
    print(f"{'family':>11}  batch  stock  full@1.0  random@0.25  oracle@0.25")
    for family in FAMILIES:
        model = tiny_model(family, "sdpa")
        for batch in (1, 2):
            inputs = tiny_inputs(model, [[image] for image in DEFAULT_IMAGES[family][:batch]], seed=0)
            row = [syncs(model, inputs)]
            for policy, keep in (("full", 1.0), ("random", 0.25), ("oracle", 0.25)):
                with alvts.routed(model, policy, keep=keep):
                    row.append(syncs(model, inputs))
            print(f"{family:>11}  {batch:5}  {row[0]:5}  {row[1]:8}  {row[2]:11}  {row[3]:11}")


if __name__ == "__main__":
    main()
