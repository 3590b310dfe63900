"""Selector packs on disk: `selector_config.json` + `selectors.safetensors` + a `README.md` model card, loadable
from a folder or the Hugging Face Hub like a PEFT adapter, and checked against the base model before use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..policies import FORMS, LowRankSelector
from .fingerprint import model_fingerprint
from .hub import hub_snapshot

logger = logging.getLogger(__name__)

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "selector_config.json", "selectors.safetensors", "README.md"
FORMAT_VERSION = 1


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
    selector_heads: int = 1
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

    def __init__(self, config: SelectorConfig, selector: LowRankSelector, source: str | None = None):
        self.config = config
        self.selector = selector
        self.source = source  # the folder or Hub id it was loaded from
        self._fits: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models already checked: fingerprint once

    def describe(self) -> dict[str, Any]:
        """What names this pack in a report: where it came from, its base model, rank, layers and fingerprint."""
        c = self.config
        return {
            "source": self.source,
            "base_model": c.base_model,
            "rank": c.rank,
            "layers": c.layers,
            "score": c.score,
            "form": c.score_form,
            "heads": c.selector_heads,
            "fingerprint": c.fingerprint.get("qk_norm_sha256"),
            "weights_sha256": c.weights_sha256,
        }

    def __repr__(self) -> str:
        c = self.config
        return f"SelectorPack({self.source or c.base_model!r}, rank={c.rank}, layers={c.layers})"

    # -- disk ------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i in self.config.layers:
            tensors[f"layers.{i}.proj"] = self.selector.factors[i].detach().float().contiguous().cpu()
            tensors[f"layers.{i}.log_temp"] = self.selector.log_temps[i].detach().float().reshape(()).cpu()
            if i in self.selector.frequencies:
                tensors[f"layers.{i}.frequencies"] = self.selector.frequencies[i].long().contiguous().cpu()
        # one metadata key: safetensors writes metadata in hash order, and two keys would make the bytes (and the
        # sha256 below) differ between saves of equal tensors; the version is in the config
        save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
        self.config.weights_sha256 = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
        (out / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n")
        (out / CARD_NAME).write_text(self.model_card())
        return out

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None) -> SelectorPack:
        """Load from a local folder or a Hub repo (through the local HF cache, so it works offline once cached)."""
        folder = Path(path_or_repo_id)
        if not folder.is_dir():
            try:
                folder = hub_snapshot(str(path_or_repo_id), [CONFIG_NAME, WEIGHTS_NAME], revision)
            except ValueError as err:
                raise ValueError(f"Cannot load selector pack {str(path_or_repo_id)!r}: {err}") from None
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
        _check_tensors(config, tensors, weights_path)
        rotary = config.score_form == "rotary"
        selector = LowRankSelector(
            {i: tensors[f"layers.{i}.proj"] for i in config.layers},
            {i: tensors[f"layers.{i}.log_temp"] for i in config.layers},
            config.score,
            default_keep=config.default_keep,
            frequencies={i: tensors[f"layers.{i}.frequencies"] for i in config.layers} if rotary else None,
            heads=config.selector_heads,
        )
        return cls(config, selector, source=str(path_or_repo_id))

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
        """Raise if `model` is not the model this pack was fitted on; warn if only the name differs. A model that
        passed is not fingerprinted again by this pack."""
        if model in self._fits:
            return
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
        self._fits.add(model)

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
            f"`{c.score}`, selector heads {c.selector_heads}), default keep {c.default_keep:.3f}. Fitted with alvts "
            f"{c.alvts_version} on "
            f"{c.dataset or 'unspecified data'}.\n\n"
            "```python\nimport alvts\n\n"
            "alvts.apply(model, alvts.SelectorPack.from_pretrained(PATH), keep=0.11)\n```\n\n"
            + (f"## Held-out metrics per layer\n\n{header}{rows}\n" if c.metrics else "")
        )


def _check_tensors(config: SelectorConfig, tensors: dict[str, Any], path: Path) -> None:
    """The config's layers, rank and the fingerprint's hidden size must be what the tensors hold."""
    missing = [i for i in config.layers if f"layers.{i}.proj" not in tensors or f"layers.{i}.log_temp" not in tensors]
    if missing:
        raise ValueError(f"{path} has no factors for layers {missing} listed in {CONFIG_NAME}.")
    hidden = config.fingerprint.get("hidden_size")
    for i in config.layers:
        shape = tuple(tensors[f"layers.{i}.proj"].shape)
        expected = (hidden if hidden is not None else shape[0], 2 * config.rank)
        if shape != expected:
            raise ValueError(
                f"{path}: layer {i}'s factors have shape {shape}, but {CONFIG_NAME} says rank {config.rank} and hidden "
                f"size {hidden} (expected {expected}). The pack's files do not belong together; re-save the pack."
            )
    if config.score_form not in FORMS:
        known = " and ".join(map(repr, FORMS))
        raise ValueError(f"{CONFIG_NAME} names score form {config.score_form!r}; alvts knows {known}.")
    step = config.selector_heads * (2 if config.score_form == "rotary" else 1)
    if config.selector_heads < 1 or config.rank % step:
        raise ValueError(
            f"{CONFIG_NAME} says rank {config.rank} with {config.selector_heads} selector heads in the "
            f"{config.score_form} form; the rank must be a multiple of {step}. Re-save the pack."
        )
    if config.score_form == "rotary":
        for i in config.layers:
            found = tensors.get(f"layers.{i}.frequencies")
            if found is None or tuple(found.shape) != (config.rank // 2,) or found.is_floating_point():
                raise ValueError(
                    f"{path}: layer {i} needs integer frequencies of shape ({config.rank // 2},) for the rotary form "
                    f"{CONFIG_NAME} names. The pack's files do not belong together; re-save the pack."
                )
    extra = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("layers.")} - set(config.layers))
    if extra:
        raise ValueError(f"{path} holds factors for layers {extra} that {CONFIG_NAME} does not list.")
