"""Examples and Hugging Face datasets of the procedural task suite, with deterministic seeds and disk export.

Seeds: example i of a split built from base seed b has example seed b * SEED_STRIDE + i, and the scene RNG is keyed
by (task, example seed), so every row is reproducible with make_example(row["task"], row["seed"]). Training uses
TRAIN_SEED (0); evaluation uses EVAL_SEED (10_000) or any other base seed, whose example seeds are disjoint from
training as long as num_per_task <= SEED_STRIDE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from .questions import question_for
from .render import encode_png, render_scene
from .scenes import LOOKUP_GRID, TASK_TYPES, check_task, generate_scene

SEED_STRIDE = 1_000_000
TRAIN_SEED = 0
EVAL_SEED = 10_000
FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "task": Value("string"),
        "scene": Value("string"),
        "seed": Value("int64"),
    }
)


@dataclass
class Example:
    """One rendered image with its question, exact answer and the scene it was drawn from."""

    image: PILImage.Image
    question: str
    answer: str
    task: str
    scene: dict
    seed: int


def make_example(task: str, seed: int, image_size: int = 448, lookup_grid: int = LOOKUP_GRID) -> Example:
    """Deterministic example for (task, seed); 448 px gives 16x16 = 256 visual tokens at 28 px per token."""
    scene, answer = generate_scene(task, seed, lookup_grid)
    image = render_scene(scene, image_size)
    return Example(image=image, question=question_for(scene), answer=answer, task=task, scene=scene, seed=seed)


def example_seed(base_seed: int, index: int) -> int:
    """Seed of the index-th example of a split; each base seed owns a disjoint block of SEED_STRIDE seeds."""
    if base_seed < 0 or not 0 <= index < SEED_STRIDE:
        raise ValueError(f"need base_seed >= 0 and 0 <= index < {SEED_STRIDE}, got {base_seed}, {index}")
    return base_seed * SEED_STRIDE + index


def build_dataset(
    num_per_task: int, seed: int = TRAIN_SEED, tasks: Sequence[str] | None = None, image_size: int = 448
) -> Dataset:
    """Dataset of num_per_task examples per task, interleaved by index so any prefix is balanced across tasks."""
    tasks = TASK_TYPES if tasks is None else tuple(tasks)
    for task in tasks:
        check_task(task)
    rows: dict[str, list] = {name: [] for name in FEATURES}
    for index in range(num_per_task):
        for task in tasks:
            example = make_example(task, example_seed(seed, index), image_size)
            rows["image"].append({"bytes": encode_png(example.image), "path": None})
            rows["question"].append(example.question)
            rows["answer"].append(example.answer)
            rows["task"].append(task)
            rows["scene"].append(json.dumps(example.scene, sort_keys=True))
            rows["seed"].append(example.seed)
    return Dataset.from_dict(rows, features=FEATURES)


def export_dataset(ds: Dataset, out_dir: str | Path, format: str = "imagefolder") -> Path:
    """Write ds for load_dataset: PNG files + metadata.jsonl ("imagefolder") or one data.parquet file ("parquet")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if format == "parquet":
        path = out / "data.parquet"
        ds.to_parquet(str(path))
        return path
    if format != "imagefolder":
        raise ValueError(f"unknown export format {format!r}; valid formats: imagefolder, parquet")
    raw = ds.cast_column("image", Image(decode=False))
    width = max(6, len(str(len(raw))))
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index, row in enumerate(raw):
            image = row.pop("image")
            file_name = f"{index:0{width}d}.png"
            (out / file_name).write_bytes(image["bytes"] or Path(image["path"]).read_bytes())
            metadata.write(json.dumps({"file_name": file_name, **row}) + "\n")
    return out
