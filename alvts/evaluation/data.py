"""Calibration and evaluation data: rows from a local folder or file, or a Hub dataset, checked (columns present,
every row has an image and a prompt, and an answer to score) before any model is loaded. (The command lines' default,
the demo's built-in task suite, lives in `alvts.demo`.)"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from datasets import Dataset, Image, IterableDataset, load_dataset
from datasets.exceptions import DatasetsError
from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
COLUMN_FLAGS = "--image-column / --text-column"
EVAL_COLUMN_FLAGS = "--image-column / --text-column / --answer-column"


class DataError(ValueError):
    """Data that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class EvalSample:
    """One question to score: its image, the exact answer, and the task it belongs to (for per-task tables)."""

    image: PILImage.Image
    question: str
    answer: str
    task: str


def load_calibration_rows(
    dataset: str,
    split: str = "train",
    image_column: str = "image",
    text_column: str = "question",
    num_samples: int = 256,
    seed: int = 0,
) -> list[tuple[PILImage.Image, str]]:
    """Up to `num_samples` (RGB image, prompt) pairs, or a DataError saying what is wrong and how to fix it.

    A local folder or .jsonl / .json / .parquet file is shuffled with `seed` before the rows are taken; a Hub dataset
    id is streamed and its first rows taken.
    """
    name, rows, folder = _open(dataset, split, seed)
    try:
        _check_columns(name, _column_names(rows), (image_column, text_column))
        rows = rows.select_columns(list(dict.fromkeys([image_column, text_column])))
        rows = _first(name, rows, folder, image_column, num_samples)
        pairs = [_pair(name, i, row, image_column, text_column) for i, row in enumerate(rows)]
    except (OSError, DatasetsError) as err:
        raise DataError(f"Cannot read the rows of {name}: {err}") from None
    if len(pairs) < 2:
        raise DataError(f"{name} has {len(pairs)} row(s) in split {split!r}; calibration needs at least 2.")
    return pairs


def load_eval_rows(
    dataset: str,
    split: str = "train",
    image_column: str = "image",
    text_column: str = "question",
    answer_column: str = "answer",
    task_column: str = "task",
    num_samples: int = 100,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
) -> list[EvalSample]:
    """Questions with answers to score, or a DataError saying what is wrong and how to fix it.

    The data is opened as for calibration and `num_samples` rows are taken in all; a missing `task_column` puts
    every row in one task named after the dataset; `tasks` keeps the rows of those tasks only.
    """
    name, rows, folder = _open(dataset, split, seed)
    try:
        columns = _column_names(rows)
        _check_columns(name, columns, (image_column, text_column, answer_column), EVAL_COLUMN_FLAGS)
        has_task = task_column in columns
        if tasks and has_task:
            wanted = set(tasks)
            rows = rows.filter(lambda row: row[task_column] in wanted)
        samples = []
        for i, row in enumerate(_first(name, rows, folder, image_column, num_samples)):
            image, question = _pair(name, i, row, image_column, text_column, EVAL_COLUMN_FLAGS)
            answer = row[answer_column]
            if answer is None or not str(answer).strip():
                raise DataError(
                    f"Row {i} of {name} has no answer in column {answer_column!r}; name the answer "
                    f"column with --answer-column, or drop the rows without one."
                )
            task = str(row[task_column]) if has_task else Path(dataset).stem or dataset
            samples.append(EvalSample(image, question, str(answer), task))
    except (OSError, DatasetsError) as err:
        raise DataError(f"Cannot read the rows of {name}: {err}") from None
    if not samples:
        raise DataError(f"{name} has no rows in split {split!r}{f' for tasks {list(tasks)}' if tasks else ''}.")
    return samples


def _first(name: str, rows: Dataset | IterableDataset, folder: Path | None, image_column: str, n: int) -> Iterable:
    """The first `n` rows, with image paths (local data) decoded as images."""
    if isinstance(rows, Dataset):
        rows = rows.select(range(min(n, len(rows))))
        if folder is not None and getattr(rows.features[image_column], "dtype", None) in ("string", "large_string"):
            rows = _cast_paths(name, rows, image_column, folder)
    return islice(rows, n)


def _open(dataset: str, split: str, seed: int) -> tuple[str, Dataset | IterableDataset, Path | None]:
    """A name for messages, the rows to draw from, and the folder relative image paths point into (local data)."""
    path = Path(dataset).expanduser()
    if path.exists():
        return dataset, _load_local(path, split).shuffle(seed=seed), path if path.is_dir() else path.parent
    return f"Hub dataset {dataset!r}", _open_hub(dataset, split), None


def _load_local(path: Path, split: str) -> Dataset:
    """A local folder or file through the builder its files call for: imagefolder, json or parquet."""
    if path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unsupported file type; use a folder, or a .jsonl, .json or .parquet file.")
        kwargs = {"data_files": [str(path)]}
    else:
        files = sorted(p for p in path.iterdir() if p.is_file())
        parquet = [str(p) for p in files if p.suffix.lower() == ".parquet"]
        json = [str(p) for p in files if p.suffix.lower() in (".jsonl", ".json")]
        if any(p.name in METADATA_FILES for p in files) or not (parquet or json):
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
                raise DataError(f"{path} holds no images and no .jsonl, .json or .parquet files: no rows to use.")
            builder, kwargs = "imagefolder", {"data_dir": str(path)}
        else:
            builder, kwargs = ("parquet", {"data_files": parquet}) if parquet else ("json", {"data_files": json})
    try:
        splits = load_dataset(builder, **kwargs)
    except (OSError, ValueError, DatasetsError) as err:
        raise DataError(f"Cannot load {path} as {builder} data: {err}") from None
    if split not in splits:
        raise DataError(f"{path} has no split {split!r}; pass --split with one of {sorted(splits)}.")
    return splits[split]


def _open_hub(dataset: str, split: str) -> IterableDataset:
    """A Hub dataset split, streamed so that only the rows taken are downloaded."""
    try:
        return load_dataset(dataset, split=split, streaming=True)
    except (OSError, ValueError, DatasetsError) as err:
        raise DataError(
            f"Cannot load {dataset!r}: it is not a local folder or file, and as a Hub dataset it failed ({err}). "
            "Check the path, the dataset id and --split; offline (HF_HUB_OFFLINE=1), only cached datasets load."
        ) from None


def _column_names(rows: Dataset | IterableDataset) -> list[str]:
    """Column names; a stream that does not declare its features shows them in its first row."""
    return rows.column_names or list(next(iter(rows), {}))


def _check_columns(name: str, columns: list[str], wanted: Sequence[str], flags: str = COLUMN_FLAGS) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{name} has no column {' or '.join(map(repr, missing))}; its columns are {columns}. Name the columns "
            f"to use with {flags}."
        )


def _cast_paths(name: str, rows: Dataset, column: str, folder: Path) -> Dataset:
    """Image file paths (relative to `folder`, or absolute) as decoded images; empty paths stay empty."""
    paths = [str(folder / path) if path else None for path in rows[column]]
    missing = next((path for path in paths if path is not None and not Path(path).is_file()), None)
    if missing is not None:
        raise DataError(
            f"Column {column!r} of {name} holds text that is no image file ({missing!r} does not exist): name the "
            f"column of images or image paths (relative to the data file) with {COLUMN_FLAGS}."
        )
    return rows.remove_columns(column).add_column(column, paths).cast_column(column, Image())


def _pair(
    name: str, i: int, row: dict, image_column: str, text_column: str, flags: str = COLUMN_FLAGS
) -> tuple[PILImage.Image, str]:
    """One checked (RGB image, prompt) pair."""
    image, text = row[image_column], row[text_column]
    if image is None or (isinstance(image, PILImage.Image) and 0 in image.size):
        raise DataError(
            f"Row {i} of {name} has no image in column {image_column!r}. Calibration needs an image in every row: "
            f"name the column that holds them with {flags}, or drop the rows without one."
        )
    if not isinstance(image, PILImage.Image):
        raise DataError(
            f"Column {image_column!r} of {name} holds {type(image).__name__} values, not images; name the image "
            f"column with {flags}."
        )
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"Row {i} of {name} has no prompt text in column {text_column!r} (found {text!r}); name a column of "
            f"question or instruction strings with {flags}."
        )
    return image.convert("RGB"), text
