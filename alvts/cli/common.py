"""What the command lines share: one error type for what the user can fix, and finding and loading a model the way
they all do. Heavy imports (torch, transformers) happen inside the functions that need them, so `--help` and
argument errors are instant."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..demo import resolve_model_alias
from .recipes import available_recipes

DTYPES = ("bf16", "fp16", "fp32")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # what a Hub model id looks like; anything else is a local path


class CommandError(Exception):
    """A failure the user can fix; `run_command` prints its message and exits with status 2."""


def run_command(prog: str, job: Callable[[], Any], resume_hint: str | None = None) -> None:
    """Run `job`: exit status 2 with one message for a CommandError, 130 on Ctrl-C, no traceback for either."""
    try:
        job()
    except CommandError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        raise SystemExit(130) from None


def locate_model(model_id: str) -> str:
    """What to load `model_id` from: the demo alias's folder, a local folder, or a Hub id whose config is in the HF
    cache or came in one download attempt (a model that is nowhere fails in about a second, with a message that says
    how to get it; the weights download later, after every check)."""
    path = resolve_model_alias(model_id)
    if Path(path).exists():
        return path
    if not HUB_ID.fullmatch(path):
        raise CommandError(
            f"No model folder at {path}. Pass --model a folder written by save_pretrained, a Hub model id, or a "
            f"recipe alias ({', '.join(available_recipes()) or 'none found'})."
        )
    from ..packs.hub import HubError, hub_snapshot

    try:
        hub_snapshot(path, ["config.json"])
        return path
    except HubError as err:
        raise CommandError(
            f"Cannot load model {model_id!r}: {err} Gated or private models need `hf auth login` first; get the "
            f"weights with `hf download {path}`, or pass --model a local folder."
        ) from None


def load_checked_config(path: str, model_id: str, trust_remote_code: bool = False) -> Any:
    """The model's config (a small file), refused if alvts cannot route its family: checked before the weights
    load. Pass it on to `load_model_and_processor` so that it is read once."""
    from transformers import AutoConfig

    from ..routing import supported_model_classes
    from ..routing.adapters import ADAPTERS, REFUSED

    with _loading_errors(model_id, path):
        config = AutoConfig.from_pretrained(path, **({"trust_remote_code": True} if trust_remote_code else {}))
    if config.model_type in REFUSED:  # a family alvts knows and cannot route: say why
        raise CommandError(
            f"alvts does not route {model_id!r} (model_type {config.model_type!r}): {REFUSED[config.model_type]}"
        )
    if config.model_type not in ADAPTERS:
        raise CommandError(
            f"alvts does not support {model_id!r} (model_type {config.model_type!r}); supported model classes: "
            f"{', '.join(supported_model_classes())}."
        )
    return config


def load_model_and_processor(
    path: str, model_id: str, config: Any, device: str, dtype: str | None, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """The processor, then the model (sdpa attention, eval mode) from what `locate_model` gave; device "auto" is CUDA
    if available, spread by accelerate where it is installed."""
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.utils import is_accelerate_available

    from ..evaluation.processor import load_processor

    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    spread = device == "auto" and is_accelerate_available()
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    with _loading_errors(model_id, path):
        processor = load_processor(path, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype[dtype or ("bf16" if target == "cuda" else "fp32")],
            attn_implementation="sdpa",
            **({"device_map": "auto"} if spread else {}),
            **kwargs,
        )
    if not spread:
        model.to(target)
    return model.eval(), processor


@contextmanager
def _loading_errors(model_id: str, path: str) -> Iterator[None]:
    """Files that are missing or unusable as one CommandError that says what was tried."""
    try:
        yield
    except OSError as err:
        raise CommandError(
            f"Cannot load the model in {path} ({first_line(err)}); the folder needs the config, weights and "
            "processor files that the model's and the processor's save_pretrained write."
        ) from None
    except ValueError as err:
        raise CommandError(f"Cannot load {model_id!r} as an image-text-to-text model: {first_line(err)}") from None


def first_line(err: Exception) -> str:
    """The gist of an error message, which for Hub errors runs on for lines."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
