"""The task suite as the command lines' default data: calibration prompts and held-out questions."""

import pytest
from PIL import Image

from alvts.demo.rows import suite_calibration_rows, suite_eval_rows
from alvts.demo.tasks import EVAL_SEED, TRAIN_SEED, build_dataset
from alvts.evaluation.data import DataError


def test_default_is_the_task_suite_offline():
    rows = suite_calibration_rows(7)
    assert len(rows) == 7
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image, _ in rows)
    expected = build_dataset(2, seed=TRAIN_SEED)
    assert [text for _, text in rows] == expected["question"][:7]


def test_eval_rows_default_to_held_out_suite_questions_per_task():
    samples = suite_eval_rows(2, ["counting", "reading"])
    held_out = build_dataset(2, seed=EVAL_SEED, tasks=["counting", "reading"])
    assert [(s.question, s.answer, s.task) for s in samples] == list(
        zip(held_out["question"], held_out["answer"], held_out["task"], strict=True)
    )
    with pytest.raises(DataError, match=r"no task \['colour'\]"):
        suite_eval_rows(1, ["colour"])
