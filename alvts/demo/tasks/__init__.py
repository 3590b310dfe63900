"""Deterministic procedural visual tasks (images + questions with exact answers) for training and evaluation."""

from .questions import answer_for, question_for
from .render import encode_png, render_scene
from .scenes import TASK_TYPES, generate_scene
from .suite import (
    EVAL_SEED,
    SEED_STRIDE,
    TRAIN_SEED,
    Example,
    build_dataset,
    example_seed,
    export_dataset,
    make_example,
)

__all__ = [
    "EVAL_SEED",
    "SEED_STRIDE",
    "TASK_TYPES",
    "TRAIN_SEED",
    "Example",
    "answer_for",
    "build_dataset",
    "encode_png",
    "example_seed",
    "export_dataset",
    "generate_scene",
    "make_example",
    "question_for",
    "render_scene",
]
