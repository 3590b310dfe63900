"""Layer-by-layer calibration (as llm-compressor's sequential pipeline): run the frozen model up to
decoder layer 0 once, then per layer collect statistics, fit the selector (Stage A closed form, Stage B refinement),
save the layer's result at once (an interrupted run resumes from its output folder), and advance the cached inputs
through the full stock layer. Only one layer's activations are held at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..compat import causal_mask
from ..offload import execution_device, onloaded
from ..packs import SelectorConfig, SelectorPack, model_fingerprint
from ..policies import LowRankSelector
from ..policies.importance import attention_importance, rank_space_rotary
from ..routing import get_adapter
from .config import CalibrationConfig
from .fit import LayerSample, fit_selector, layer_metrics, refine_selector


class _StopForward(Exception):
    pass


@dataclass
class _LayerInput:
    hidden: torch.Tensor  # (1, seq, hidden)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    visual: torch.Tensor  # (1, seq) bool
    valid: torch.Tensor  # (1, seq) bool

    def to(self, device: torch.device) -> None:
        self.hidden, self.visual, self.valid = (t.to(device) for t in (self.hidden, self.visual, self.valid))
        self.position_embeddings = tuple(t.to(device) for t in self.position_embeddings)


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, samples: Iterable[dict[str, torch.Tensor]], on_sample: Callable[[], None] | None = None
) -> list[_LayerInput]:
    """Run each single-sample batch up to decoder layer 0 (vision tower, projector, embeddings) and keep its input."""
    adapter = get_adapter(model)
    first = adapter.decoder_layers(model)[0]
    captured: dict[str, Any] = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["pe"] = kwargs["position_embeddings"]
        raise _StopForward

    inputs = []
    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for sample in samples:
            if sample["input_ids"].shape[0] != 1:
                raise ValueError("calibrate() takes single-sample batches (batch size 1).")
            with contextlib.suppress(_StopForward):
                model(**sample, use_cache=False)
            visual = adapter.visual_mask(model, sample)
            if visual is None or not bool(visual.any()):
                raise ValueError("Every calibration sample needs an image: a sample has no visual tokens.")
            mask = sample.get("attention_mask")
            valid = torch.ones_like(visual) if mask is None else mask.bool()
            cos, sin = captured["pe"]
            inputs.append(_LayerInput(captured["hidden"], (cos, sin), visual.to(valid.device) & valid, valid))
            if on_sample is not None:
                on_sample()
    finally:
        handle.remove()
    return inputs


def calibrate(
    model: nn.Module,
    samples: Iterable[dict[str, torch.Tensor]],
    config: CalibrationConfig | None = None,
    output_dir: str | Path | None = None,
    base_model: str | None = None,
    dataset_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> SelectorPack:
    """Fit a selector pack for `model` from single-sample model inputs (as the model's processor returns them).

    With `output_dir`, each fitted layer is written to `output_dir/layers/` as soon as it is done and the finished
    pack to `output_dir`; re-running with the same folder and settings resumes (saying which layers it reuses) and
    yields the same pack. The progress bar counts samples captured, statistics and refinement steps of the layers
    still to fit, and the passes that advance the samples, so it moves inside a layer and its ETA skips reused layers.
    """
    config = config or CalibrationConfig()
    adapter = get_adapter(model)
    decoder_layers = adapter.decoder_layers(model)
    text_config = adapter.text_config(model)
    layers = list(range(len(decoder_layers))) if config.layers is None else config.layers
    if not layers or layers[-1] >= len(decoder_layers):
        last = len(decoder_layers) - 1
        raise ValueError(f"layers {config.layers} out of range: the model has decoder layers 0-{last}")
    if text_config.num_attention_heads % config.heads:
        raise ValueError(
            f"{config.heads} selector heads do not split the model's {text_config.num_attention_heads} attention "
            f"heads evenly; pass --heads with a divisor of {text_config.num_attention_heads}."
        )
    progress_dir = None if output_dir is None else Path(output_dir) / "layers"
    reused = []
    if progress_dir is not None:
        _check_resume(progress_dir, config, model, dataset_info)
        reused = [i for i in layers if (progress_dir / f"layer_{i}.safetensors").is_file()]
        if reused and progress:
            tqdm.write(f"Resuming: layers {_spans(reused)} reused from {progress_dir}")

    bar = tqdm(total=len(samples) if hasattr(samples, "__len__") else None, desc="Capturing", unit="step",
               disable=not progress)  # fmt: skip
    inputs = capture_layer_inputs(model, samples, on_sample=lambda: bar.update())
    if len(inputs) < 2:
        raise ValueError("calibrate() needs at least 2 samples (some are held out to measure the fit).")
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_held = max(1, round(len(inputs) * config.held_out_fraction))
    held_ids = set(order[:n_held])

    to_fit = [i for i in layers if i not in reused]
    bar.total = len(inputs) + len(to_fit) * (len(inputs) + config.stage_b_steps) + max(layers) * len(inputs)
    bar.set_description("Calibrating")
    factors, temps, frequencies, metrics = {}, {}, {}, {}
    for i in range(max(layers) + 1):
        layer = decoder_layers[i]
        device = execution_device(layer)  # layers may sit on different devices (device_map)
        for x in inputs:
            x.to(device)
        if i in layers:
            bar.set_postfix_str(f"layer {i}/{len(decoder_layers) - 1}" + (" reused" if i in reused else ""))
            saved = _load_layer(progress_dir, i)
            if saved is None:
                with onloaded(layer):
                    saved = _fit_layer(i, layer, adapter, inputs, held_ids, config, lambda: bar.update())
                _save_layer(progress_dir, i, *saved)
            factors[i], temps[i], metrics[str(i)], layer_frequencies = saved
            if layer_frequencies is not None:
                frequencies[i] = layer_frequencies
        if i == max(layers):
            break  # no later layer to fit: the samples need not go through this one
        with torch.no_grad():  # advance every sample through the full stock layer
            for x in inputs:
                mask = causal_mask(text_config, x.hidden, x.valid)
                x.hidden = layer(x.hidden, attention_mask=mask, position_embeddings=x.position_embeddings)
                bar.update()
    bar.close()

    pack_config = SelectorConfig(
        base_model=base_model or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        fingerprint=model_fingerprint(model),
        rank=config.rank,
        layers=layers,
        default_keep=config.default_keep,
        score_form=config.form,
        score=config.score,
        selector_heads=config.heads,
        dataset=dict(dataset_info or {}, num_samples=len(inputs), seed=config.seed),
        metrics=metrics,
    )
    selector = LowRankSelector(
        factors, temps, config.score, default_keep=config.default_keep, frequencies=frequencies, heads=config.heads
    )
    pack = SelectorPack(pack_config, selector, source=None if output_dir is None else str(output_dir))
    if output_dir is not None:
        pack.save_pretrained(output_dir)
    return pack


def _spans(layers: list[int]) -> str:
    """[0, 1, 2, 5] as "0-2, 5"."""
    spans: list[list[int]] = []
    for i in layers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _fit_layer(i, layer, adapter, inputs, held_ids, config, on_step):
    """Statistics (oracle target, second moments in fp64), Stage A, Stage B and metrics for one layer."""
    attn, norm = adapter.attention(layer), adapter.input_norm(layer)
    dim = attn.q_proj.in_features
    if config.form == "rotary" and inputs[0].position_embeddings[0].shape[-1] != attn.head_dim:
        raise ValueError(
            f"layer {i} rotates {inputs[0].position_embeddings[0].shape[-1]} of its {attn.head_dim} head dimensions "
            "(partial rotary); the rotary selector form needs all of them. Calibrate with --form merged."
        )
    c_q = torch.zeros(dim, dim, dtype=torch.float64)
    c_k = torch.zeros_like(c_q)
    n_q = n_k = 0
    samples = []
    with torch.no_grad():
        for j, x in enumerate(inputs):
            normed = norm(x.hidden)
            target = attention_importance(attn, normed, x.position_embeddings, x.visual, x.valid, score=config.score)
            sample = LayerSample(
                normed.float().cpu(), x.visual.cpu(), x.valid.cpu(), target.cpu(), config.score, heads=config.heads
            )
            samples.append(sample)
            on_step()
            if j in held_ids:
                continue
            queries, keys = sample.normed[sample.valid].double(), sample.normed[sample.visual].double()
            c_q += queries.T @ queries
            c_k += keys.T @ keys
            n_q, n_k = n_q + len(queries), n_k + len(keys)
    if config.init == "svd":
        c_q = c_k = torch.eye(dim, dtype=torch.float64)
        n_q = n_k = 1
    pq, pk, frequencies = fit_selector(attn, c_q / n_q, c_k / n_k, config.rank, config.form, config.heads)
    if frequencies is not None:
        for sample, x in zip(samples, inputs, strict=True):
            rotary = rank_space_rotary(x.position_embeddings, attn, frequencies, config.heads)
            sample.rotary = tuple(t.cpu() for t in rotary)
    train = [s for j, s in enumerate(samples) if j not in held_ids]
    held = [s for j, s in enumerate(samples) if j in held_ids]
    proj_a, temp_a = torch.cat([pq, pk], dim=1).float(), torch.zeros(())
    stage_a = layer_metrics(held, proj_a, temp_a)
    proj, temp = proj_a, temp_a
    if config.stage_b_steps > 0:
        proj, temp = refine_selector(
            proj_a,
            temp_a,
            train,
            held,
            config.stage_b_steps,
            config.stage_b_lr,
            config.loss,
            config.seed + i,
            on_step,
        )
    stage_b = layer_metrics(held, proj, temp)
    metrics = {f"A_{k}": v for k, v in stage_a.items()} | {f"AB_{k}": v for k, v in stage_b.items()}
    return proj.detach(), temp.detach().reshape(()), metrics, frequencies


def _check_resume(progress_dir: Path, config: CalibrationConfig, model: nn.Module, dataset_info: dict | None) -> None:
    """A folder with earlier progress must come from the same settings, model and data, or nothing is resumed."""
    stamp = {"config": dataclasses.asdict(config), "fingerprint": model_fingerprint(model), "dataset": dataset_info}
    path = progress_dir / "run.json"
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(stamp)):
            raise ValueError(
                f"{progress_dir} holds a calibration run with other settings, model or data; use a new output "
                "folder, or delete it to start over."
            )
        return
    progress_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=2, sort_keys=True))


def _load_layer(progress_dir: Path | None, i: int):
    if progress_dir is None or not (progress_dir / f"layer_{i}.safetensors").is_file():
        return None
    tensors = load_file(progress_dir / f"layer_{i}.safetensors")
    metrics = json.loads((progress_dir / f"layer_{i}.json").read_text())
    return tensors["proj"], tensors["log_temp"], metrics, tensors.get("frequencies")


def _save_layer(progress_dir: Path | None, i: int, proj, log_temp, metrics, frequencies) -> None:
    if progress_dir is None:
        return
    (progress_dir / f"layer_{i}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tensors = {"proj": proj.contiguous(), "log_temp": log_temp}
    if frequencies is not None:
        tensors["frequencies"] = frequencies.contiguous()
    save_file(tensors, progress_dir / f"layer_{i}.safetensors")
