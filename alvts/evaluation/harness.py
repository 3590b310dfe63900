"""Answer questions about images with greedy generation and score routed models against the full one at equal budget.

`evaluate` runs the full model once as the reference, then every method at every keep ratio through the same router,
and returns one row per (task, method, keep): accuracy, accuracy retained, agreement with the full model's answers,
the visual tokens each layer processed (measured, not assumed) and the prefill FLOPs relative to full.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..api import plan_budget, resolve_policy, routed, routing_state
from ..packs import SelectorPack
from ..policies import LowRankSelector
from ..routing import Policy, get_adapter
from .data import EvalSample
from .flops import prefill_flops_ratio
from .inputs import collate, encode_example
from .scoring import SCORERS


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> list[str]:
    """Greedy answers, one per (image, question), in batches left-padded the way generate() expects; `on_batch` sees
    each batch's inputs right after its generate() (the routing state then holds that batch's prefill)."""
    pad_id = processor.tokenizer.pad_token_id
    adapter = get_adapter(model)
    answers: list[str] = []
    starts = range(0, len(questions), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress):
        stop = start + batch_size
        pairs = zip(images[start:stop], questions[start:stop], strict=True)
        items = [encode_example(processor, image, question) for image, question in pairs]
        batch = {k: v.to(model.device) for k, v in collate(items, pad_id, adapter, padding_side="left").items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new = out[:, batch["input_ids"].shape[1] :]
        answers += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(batch)
    return [answer.strip() for answer in answers]


@dataclass
class MethodRun:
    """One method at one budget over every sample: its answers and, per sample, the tokens its layers processed."""

    predictions: list[str] = field(default_factory=list)
    text_tokens: list[int] = field(default_factory=list)
    visual_tokens: list[int] = field(default_factory=list)
    kept: list[list[int]] = field(default_factory=list)  # per sample, visual tokens through each layer


def run_method(
    model,
    processor,
    samples: Sequence[EvalSample],
    policy: Policy | SelectorPack | str,
    keep: float,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    bar: tqdm | None = None,
) -> MethodRun:
    """Answer every sample with `model` routed by `policy` at `keep`, recording what each layer processed."""
    result = MethodRun()

    def record(batch: dict[str, torch.Tensor]) -> None:
        state = routing_state(model)
        visual = state.visual.sum(1)
        result.visual_tokens += visual.tolist()
        result.text_tokens += (batch["attention_mask"].sum(1).to(visual.device) - visual).tolist()
        result.kept += state.visual_kept().T.tolist()
        if bar is not None:
            bar.update(len(visual))

    images, questions = [s.image for s in samples], [s.question for s in samples]
    with routed(model, policy, keep=keep):
        result.predictions = generate_answers(
            model, processor, images, questions, batch_size, max_new_tokens, on_batch=record
        )
    return result


def evaluate(
    model,
    processor,
    samples: Sequence[EvalSample],
    methods: dict[str, Policy | SelectorPack | str],
    keeps: Sequence[float],
    batch_size: int = 16,
    max_new_tokens: int = 8,
    scorer: str = "normalised",
    progress: bool = True,
) -> list[dict]:
    """Rows of (task, method, keep) scores: the full model first (method "full", keep 1.0), then each method at each
    keep; a budget a method cannot reach gets a row with a `note` and no scores. `effective_keep` is the mean of the
    per-layer ratios the method routed with (a pack's uncovered layers stay dense, so it can exceed `keep`)."""
    text_config = get_adapter(model).text_config(model)
    num_layers = text_config.num_hidden_layers
    plan = []
    for label, spec in methods.items():
        policy = resolve_policy(spec, model)
        for keep in keeps:
            try:
                plan.append((label, policy, keep, plan_budget(policy, num_layers, keep).mean_keep(), None))
            except ValueError as err:
                plan.append((label, policy, keep, None, str(err)))
    runs = 1 + sum(reason is None for *_, reason in plan)
    bar = tqdm(total=runs * len(samples), desc="evaluate", unit="q", disable=not progress)
    bar.set_postfix_str("full")
    full = run_method(model, processor, samples, "full", 1.0, batch_size, max_new_tokens, bar)
    rows = _rows(samples, "full", 1.0, 1.0, full, full, text_config, None, scorer)
    for label, policy, keep, effective, reason in plan:
        if reason is not None:
            note = f"out of reach: {reason}"
            rows += [{"task": t, "method": label, "keep": keep, "note": note} for t in _tasks(samples)]
            continue
        bar.set_postfix_str(f"{label} keep {keep}")
        run = run_method(model, processor, samples, policy, keep, batch_size, max_new_tokens, bar)
        rank = policy.rank if isinstance(policy, LowRankSelector) else None
        rows += _rows(samples, label, keep, effective, run, full, text_config, rank, scorer)
    bar.close()
    return rows


def _tasks(samples: Sequence[EvalSample]) -> list[str]:
    tasks = list(dict.fromkeys(s.task for s in samples))
    return [*tasks, "mean"] if len(tasks) > 1 else tasks


def _rows(samples, label, keep, effective, run: MethodRun, full: MethodRun, text_config, rank, scorer) -> list[dict]:
    """Per task (and their unweighted mean): accuracy, retained, agreement, visual tokens per layer, FLOPs ratio."""
    score = SCORERS[scorer]
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        by_task[sample.task].append(i)
    rows = []
    for task, indices in by_task.items():
        hits = [score(samples[i].answer, run.predictions[i]) for i in indices]
        full_hits = [score(samples[i].answer, full.predictions[i]) for i in indices]
        accuracy, full_accuracy = sum(hits) / len(indices), sum(full_hits) / len(indices)
        flops = [
            prefill_flops_ratio(text_config, run.text_tokens[i], run.visual_tokens[i], run.kept[i], rank)
            for i in indices
        ]
        rows.append(
            {
                "task": task,
                "method": label,
                "keep": keep,
                "effective_keep": effective,
                "accuracy": accuracy,
                "retained": accuracy / full_accuracy if full_accuracy > 0 else None,
                "agreement": sum(score(full.predictions[i], run.predictions[i]) for i in indices) / len(indices),
                "visual_tokens_per_layer": sum(sum(run.kept[i]) / len(run.kept[i]) for i in indices) / len(indices),
                "visual_fraction": sum(sum(run.kept[i]) / len(run.kept[i]) / run.visual_tokens[i] for i in indices)
                / len(indices),
                "flops_ratio": sum(flops) / len(flops),
                "n": len(indices),
            }
        )
    if len(rows) > 1:
        rows.append(_mean_row(rows))
    return rows


def _mean_row(rows: list[dict]) -> dict:
    """The unweighted mean over tasks; `retained` is the mean of the tasks' retained (those the full model scores)."""
    mean = {"task": "mean"} | {key: rows[0][key] for key in ("method", "keep", "effective_keep")}
    for key in ("accuracy", "agreement", "visual_tokens_per_layer", "visual_fraction", "flops_ratio"):
        mean[key] = sum(row[key] for row in rows) / len(rows)
    retained = [row["retained"] for row in rows if row["retained"] is not None]
    mean["retained"] = sum(retained) / len(retained) if retained else None
    mean["n"] = sum(row["n"] for row in rows)
    return mean
