"""Shared by the command-line tests: a random-weight model saved like a Hub checkpoint."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from alvts.demo.build import build_config, build_processor, build_tokenizer


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory) -> Path:
    """A random-weight model with the demo's config, tokenizer and processor, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("qwen")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(build_config(tokenizer)).save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)
    return folder
