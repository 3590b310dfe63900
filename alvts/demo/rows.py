"""The task suite as the command lines' default data: calibration prompts from the training seeds, and held-out
questions with answers from the evaluation seeds (disjoint from training)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from ..evaluation.data import DataError, EvalSample
from .tasks import EVAL_SEED, TASK_TYPES, TRAIN_SEED, build_dataset

SUITE_NAME = "alvts.demo.tasks"  # how the task suite is named in a pack's dataset info and in reports


def suite_calibration_rows(num_samples: int) -> list[tuple[Image.Image, str]]:
    """`num_samples` (RGB image, question) pairs, balanced across tasks."""
    rows = build_dataset(math.ceil(num_samples / len(TASK_TYPES)), TRAIN_SEED)
    rows = rows.select(range(min(num_samples, len(rows))))
    return [(row["image"].convert("RGB"), row["question"]) for row in rows]


def suite_eval_rows(num_per_task: int, tasks: Sequence[str] | None = None) -> list[EvalSample]:
    """`num_per_task` held-out questions per task (all tasks, or `tasks`)."""
    unknown = sorted(set(tasks or ()) - set(TASK_TYPES))
    if unknown:
        raise DataError(f"The task suite has no task {unknown}; its tasks are {', '.join(TASK_TYPES)}.")
    suite = build_dataset(num_per_task, EVAL_SEED, tasks)
    return [EvalSample(r["image"].convert("RGB"), r["question"], r["answer"], r["task"]) for r in suite]
