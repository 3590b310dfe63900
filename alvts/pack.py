"""Selector packs on disk: `selector_config.json` + `selectors.safetensors` + a `README.md` model card, loadable
from a folder or the Hugging Face Hub like a PEFT adapter, and checked against the base model before use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .offload import onloaded
from .routing import get_adapter
from .selector import LowRankSelector

logger = logging.getLogger(__name__)

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "selector_config.json", "selectors.safetensors", "README.md"
FORMAT_VERSION = 1


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a pack must match: shapes, the visual token id and a hash of the q/k/norm weights it was fitted on.

    The hash reads a fixed strided sample of each weight (fp32 bytes), so it is cheap even for 7B models."""
    adapter = get_adapter(model)
    text = adapter.text_config(model)
    digest = hashlib.sha256()
    for layer in adapter.decoder_layers(model):
        attn = adapter.attention(layer)
        with onloaded(layer):
            for weight in (attn.q_proj.weight, attn.k_proj.weight, adapter.input_norm(layer).weight):
                flat = weight.detach().flatten()
                digest.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return {
        "model_type": model.config.model_type,
        "num_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "image_token_id": getattr(adapter.base_model(model).config, "image_token_id", None),
        "qk_norm_sha256": digest.hexdigest(),
    }


@dataclass
class SelectorConfig:
    """Everything about a pack except its tensors; serialises to `selector_config.json`."""

    base_model: str
    fingerprint: dict[str, Any]
    rank: int
    layers: list[int]
    default_keep: float = 1 / 9
    base_revision: str | None = None
    score_form: str = "merged"
    score: str = "v2v*t2v"
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION
    alvts_version: str = __version__

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("Ignoring selector_config.json keys unknown to alvts %s: %s", __version__, unknown)
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(
                f"This selector pack has format version {data['format_version']}; alvts {__version__} reads up to "
                f"{FORMAT_VERSION}. Upgrade alvts."
            )
        return cls(**{k: v for k, v in data.items() if k in known})


class SelectorPack:
    """A fitted `LowRankSelector` and its `SelectorConfig`."""

    def __init__(self, config: SelectorConfig, selector: LowRankSelector):
        self.config = config
        self.selector = selector

    # -- disk ------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i in self.config.layers:
            tensors[f"layers.{i}.proj"] = self.selector.factors[i].detach().float().contiguous().cpu()
            tensors[f"layers.{i}.log_temp"] = self.selector.log_temps[i].detach().float().reshape(()).cpu()
        save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt", "alvts_version": __version__})
        self.config.weights_sha256 = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
        (out / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n")
        (out / CARD_NAME).write_text(self.model_card())
        return out

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None) -> SelectorPack:
        """Load from a local folder or a Hub repo (through the local HF cache, so it works offline once cached)."""
        folder = Path(path_or_repo_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(
                    snapshot_download(
                        str(path_or_repo_id), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]
                    )
                )
            except Exception as err:
                raise ValueError(
                    f"Cannot load selector pack {str(path_or_repo_id)!r}: it is not a local folder and the Hub "
                    f"download failed ({type(err).__name__}: {err}). Check the path or repo id, or run online once to "
                    "fill the HF cache."
                ) from None
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ValueError(f"{folder} is not a selector pack: {path.name} is missing.")
        try:
            config = SelectorConfig.from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{config_path} is not a valid selector config ({err}).") from None
        digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        if config.weights_sha256 is not None and digest != config.weights_sha256:
            raise ValueError(
                f"{weights_path} does not match the checksum in {CONFIG_NAME}: the file is truncated or was modified "
                "after saving. Re-download or re-save the pack."
            )
        try:
            tensors = load_file(weights_path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights_path} is not a readable safetensors file ({err}).") from None
        missing = [i for i in config.layers if f"layers.{i}.proj" not in tensors]
        if missing:
            raise ValueError(f"{weights_path} has no factors for layers {missing} listed in {CONFIG_NAME}.")
        selector = LowRankSelector(
            {i: tensors[f"layers.{i}.proj"] for i in config.layers},
            {i: tensors[f"layers.{i}.log_temp"] for i in config.layers},
            config.score,
        )
        return cls(config, selector)

    def push_to_hub(self, repo_id: str, private: bool = False, commit_message: str = "Upload alvts selector pack"):
        """Create (or reuse) a Hub model repo and upload the pack folder to it."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)

    # -- checks ----------------------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Raise if `model` is not the model this pack was fitted on; warn if only the name differs."""
        theirs, ours = model_fingerprint(model), self.config.fingerprint
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        differ = sorted(k for k in ours if ours.get(k) != theirs.get(k))
        if differ:
            raise ValueError(
                f"This selector pack was fitted on {self.config.base_model!r} and does not fit {name!r}: "
                f"{', '.join(differ)} differ. Use a pack fitted on this model (alvts-calibrate)."
            )
        if name and self.config.base_model and name != self.config.base_model:
            logger.warning("Selector pack fitted on %r, applied to %r (weights match).", self.config.base_model, name)

    def model_card(self) -> str:
        c = self.config
        rows = "\n".join(
            f"| {layer} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in m.values()) + " |"
            for layer, m in sorted(c.metrics.items(), key=lambda kv: int(kv[0]))
        )
        header = ""
        if c.metrics:
            names = list(next(iter(c.metrics.values())))
            header = "| layer | " + " | ".join(names) + " |\n|" + " --- |" * (len(names) + 1) + "\n"
        return (
            f"---\nbase_model: {c.base_model}\nlibrary_name: alvts\ntags:\n- alvts\n- visual-token-selection\n---\n\n"
            f"# ALVTS selector pack for {c.base_model}\n\n"
            f"Rank-{c.rank} selectors for {len(c.layers)} decoder layers (score form `{c.score_form}`, score "
            f"`{c.score}`), default keep {c.default_keep:.3f}. Fitted with alvts {c.alvts_version} on "
            f"{c.dataset or 'unspecified data'}.\n\n"
            "```python\nimport alvts\n\n"
            "alvts.apply(model, alvts.SelectorPack.from_pretrained(PATH), keep=0.11)\n```\n\n"
            + (f"## Held-out metrics per layer\n\n{header}{rows}\n" if c.metrics else "")
        )
