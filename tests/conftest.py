"""Shared fixtures: tiny random models of every family, batches with different visual counts per sample, and a
random-weight model with the demo's config and processor saved like a Hub checkpoint (for the command lines)."""

# ruff: noqa: E402
import os

import torch

if not torch.cuda.is_available():  # Triton kernels then run on CPU tensors in its interpreter; set before anything
    os.environ.setdefault("TRITON_INTERPRET", "1")  # (transformers included) imports triton


from pathlib import Path

import pytest
from transformers import Qwen2_5_VLForConditionalGeneration

import alvts
from alvts.demo.build import build_config, build_processor, build_tokenizer
from alvts.testing import FAMILIES, MIXED_IMAGES, tiny_inputs, tiny_model

torch.set_num_threads(2)

BATCH_IMAGES = MIXED_IMAGES  # per family, two samples with different visual token counts


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(params=["eager", "sdpa"])
def attn(request) -> str:
    return request.param


@pytest.fixture
def model(family, attn):
    m = tiny_model(family, attn)
    yield m
    if alvts.get_router(m) is not None:
        alvts.remove(m)


@pytest.fixture
def sdpa_model(family):
    m = tiny_model(family, "sdpa")
    yield m
    if alvts.get_router(m) is not None:
        alvts.remove(m)


def batch_for(model, batch_size: int = 2, seed: int = 0) -> dict:
    """Batch 1: the first sample alone; batch 2: left-padded, different visual counts."""
    images = BATCH_IMAGES[model.config.model_type][:batch_size]
    return tiny_inputs(model, images, seed=seed)


def max_valid_diff(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Largest |a - b| over non-padding positions (padding rows are garbage in both)."""
    valid = attention_mask.bool()
    return (a[valid] - b[valid]).abs().max().item()


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory) -> Path:
    """A random-weight model with the demo's config, tokenizer and processor, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("qwen")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(build_config(tokenizer)).save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)
    return folder


def exit_message(capsys, main, argv) -> str:
    """Run a command line's `main(argv)`, expecting exit status 2; return what it printed to stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# The fast tier (`pytest -m "not slow"`): every test on one family (Qwen2.5-VL), the others' copies and the end-to-end
# runs of the demo models, command-line subprocesses, the wheel and offloading in the full tier.
SLOW_FILES = {
    "test_demo_model.py",
    "test_demo_v1.py",
    "test_train.py",
    "test_wheel.py",
    "test_offload.py",
    "test_static_cache.py",
    "test_compile.py",
}
FAST_FAMILY = "qwen2_5_vl"


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        other_family = params.get("family", FAST_FAMILY) != FAST_FAMILY
        subprocess_run = "subprocess" in item.name or "end_to_end" in item.name
        if item.path.name in SLOW_FILES or other_family or subprocess_run:
            item.add_marker(pytest.mark.slow)
