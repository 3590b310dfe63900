"""Models dispatched by accelerate (`from_pretrained(..., device_map=...)`): where a module runs, and its weights made
readable while some of them are offloaded (stored on the meta device, loaded by accelerate's hooks at forward)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn


def _dispatched(module: nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def execution_device(module: nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device, else its parameters' device."""
    for m in module.modules():
        device = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(p.device for p in module.parameters() if p.device.type != "meta")


@contextmanager
def onloaded(module: nn.Module) -> Iterator[None]:
    """Within the block every weight of `module` is real and on its execution device, so it can be read or called
    submodule by submodule; offloaded weights go back to the meta device afterwards (as llm-compressor does)."""
    if not _dispatched(module):
        yield
        return
    from accelerate.utils import align_module_device  # only dispatched models have hooks, so accelerate is there

    with ExitStack() as stack:
        for m in module.modules():
            stack.enter_context(align_module_device(m))
        # a forward inside the block must not offload again (each hook's post_forward would put weights on meta)
        hooks = [m._hf_hook for m in module.modules() if getattr(getattr(m, "_hf_hook", None), "offload", False)]
        for hook in hooks:
            hook.offload = False
        try:
            yield
        finally:
            for hook in hooks:
                hook.offload = True
