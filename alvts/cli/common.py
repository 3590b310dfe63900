"""What the command lines share: one error type for what the user can fix, and loading a model the way they all do."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import constants
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.utils import is_accelerate_available

from ..demo import resolve_model
from ..processor import load_processor
from ..recipes import available_recipes
from ..routing.adapters import ADAPTERS, supported_model_classes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # what a Hub model id looks like; anything else is a local path


class CommandError(Exception):
    """A failure the user can fix; `run_command` prints its message and exits with status 2."""


def run_command(prog: str, job: Callable[[], None], resume_hint: str | None = None) -> None:
    """Run `job`: exit status 2 with one message for a CommandError, 130 on Ctrl-C, no traceback for either."""
    try:
        job()
    except CommandError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        raise SystemExit(130) from None


def load_checked_config(model_id: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config (a small file), refused if alvts cannot route its family: checks before the weights load."""
    path = resolve_model(model_id)
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    with _loading_errors(model_id, path):
        config = AutoConfig.from_pretrained(path, **kwargs)
    if config.model_type not in ADAPTERS:
        raise CommandError(
            f"alvts does not support {model_id!r} (model_type {config.model_type!r}); supported model classes: "
            f"{', '.join(supported_model_classes())}."
        )
    return config


def load_model_and_processor(
    model_id: str, device: str, dtype: str | None, layers: list[int] | None = None, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The processor and config first (small files: missing files, an unsupported family or out-of-range `layers`
    show before the weights load), then the model with sdpa attention in eval mode; device "auto" is CUDA if
    available, spread by accelerate where it is installed."""
    path = resolve_model(model_id)
    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    spread = device == "auto" and is_accelerate_available()
    with _loading_errors(model_id, path):
        processor = load_processor(path, **kwargs)
    num_layers = load_checked_config(model_id, trust_remote_code).get_text_config().num_hidden_layers
    if layers is not None and layers[-1] >= num_layers:
        raise CommandError(f"--layers asks for layer {layers[-1]}; {model_id} has layers 0-{num_layers - 1}.")
    with _loading_errors(model_id, path):
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=DTYPES[dtype or ("bf16" if target == "cuda" else "fp32")],
            attn_implementation="sdpa",
            **({"device_map": "auto"} if spread else {}),
            **kwargs,
        )
    if not spread:
        model.to(target)
    return model.eval(), processor


@contextmanager
def _loading_errors(model_id: str, path: str) -> Iterator[None]:
    """Files that are missing or unusable as one CommandError that says what was tried and how to get them."""
    try:
        yield
    except OSError as err:
        raise CommandError(_weights_help(model_id, path, err)) from None
    except ValueError as err:
        raise CommandError(f"Cannot load {model_id!r} as an image-text-to-text model: {first_line(err)}") from None


def _weights_help(model_id: str, path: str, err: Exception) -> str:
    """What was tried for weights that would not load, and how to get them."""
    if Path(path).exists():
        return (
            f"Cannot load the model in {path} ({first_line(err)}); the folder needs the config, weights and "
            "processor files that the model's and the processor's save_pretrained write."
        )
    if not HUB_ID.fullmatch(path):
        return (
            f"No model folder at {path}. Pass --model a folder written by save_pretrained, a Hub model id, or a "
            f"recipe alias ({', '.join(available_recipes()) or 'none found'})."
        )
    hint = (
        "HF_HUB_OFFLINE is set, so nothing is downloaded: unset it, or download the weights while online."
        if constants.HF_HUB_OFFLINE
        else "Check the id and your connection; gated or private models need `hf auth login` first."
    )
    return (
        f"Cannot load model {model_id!r}: it is not a local folder, and it is not in the Hugging Face cache or could "
        f"not be downloaded ({first_line(err)}). {hint} Get the weights with `hf download {path}` (older "
        f"huggingface_hub: `huggingface-cli download {path}`), or pass --model a local folder."
    )


def first_line(err: Exception) -> str:
    """The gist of an error message, which for Hub errors runs on for lines."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
