"""Peak extra memory of the received-attention score (the selector's and the oracle's) at one long sequence: the
PyTorch path measured, the Triton kernel's allocations counted.

The PyTorch path (the CPU path; CUDA too before the kernel) materialises `(heads, chunk, seq)` logits and
probabilities per query chunk; the kernel allocates only the row log-sum-exps and the per-head column sums. Each
PyTorch measurement runs in a fresh process: peak resident memory during the call minus that before it (inputs
already allocated). The kernel's bytes are those of the tensors `received_attention_triton` allocates.

    python benchmarks/score_memory.py --json /tmp/score_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CASES = {  # name: (heads, dim): the fitted selector (one head in rank space) and the oracle on 7B shapes
    "selector r32": (1, 32),
    "oracle 28 x 128": (28, 128),
}


def measure(heads: int, dim: int, seq: int, chunk: int) -> int:
    """Peak resident bytes the PyTorch path adds (run in this process: call it in a fresh one)."""
    import torch

    from alvts.kernels.received_attention import received_attention_reference

    torch.set_num_threads(2)
    q, k = torch.randn(1, heads, seq, dim), torch.randn(1, heads, seq, dim)
    valid = torch.ones(1, seq, dtype=torch.bool)
    visual = torch.zeros(1, seq, dtype=torch.bool)
    visual[:, 16 : seq - 32] = True
    weights = torch.stack([visual, valid & ~visual], 1).float()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    received_attention_reference(q, k, dim**-0.5, weights, valid, chunk)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def kernel_bytes(heads: int, seq: int) -> int:
    """Bytes `received_attention_triton` allocates besides q/k: int8 key mask, fp32 weights, lse and sums."""
    return seq + 2 * seq * 4 + heads * seq * 4 + heads * 2 * seq * 4 + 2 * seq * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=5248)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(*args.child, args.chunk))
        return
    rows = []
    print(f"seq {args.seq}, query chunk {args.chunk}")
    print(f"{'score':<18}{'PyTorch path (measured)':>26}{'Triton kernel (allocated)':>28}{'ratio':>8}")
    for name, (heads, dim) in CASES.items():
        out = subprocess.run(
            [sys.executable, __file__, "--chunk", str(args.chunk), "--child", str(heads), str(dim), str(args.seq)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        torch_bytes, triton_bytes = int(out.stdout.split()[-1]), kernel_bytes(heads, args.seq)
        rows.append(dict(score=name, heads=heads, dim=dim, seq=args.seq, chunk=args.chunk,
                         torch_peak_bytes=torch_bytes, triton_bytes=triton_bytes))  # fmt: skip
        print(f"{name:<18}{torch_bytes / 2**20:>22.1f} MiB{triton_bytes / 2**20:>24.2f} MiB"
              f"{torch_bytes / triton_bytes:>8.0f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(config=vars(args), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
