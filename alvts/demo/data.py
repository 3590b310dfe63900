"""The demo model's training stream and held-out splits of the task suite."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import IterableDataset

from ..inputs import encode_example
from ..tasks import TASK_TYPES, TRAIN_SEED, Example, example_seed, make_example


class TrainingStream(IterableDataset):
    """Endless training examples, task types in turn, example seeds from the training block: deterministic order."""

    def __init__(self, processor, tasks: Sequence[str] = TASK_TYPES, start: int = 0):
        self.processor, self.tasks, self.start = processor, tuple(tasks), start

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            task = self.tasks[index % len(self.tasks)]
            example = make_example(task, example_seed(TRAIN_SEED, index // len(self.tasks)))
            yield {**encode_example(self.processor, example.image, example.question, example.answer), "task": task}
            index += 1


def held_out(num_per_task: int, base_seed: int, tasks: Sequence[str] = TASK_TYPES) -> list[Example]:
    """Examples from a seed block disjoint from training, interleaved by task."""
    return [make_example(task, example_seed(base_seed, i)) for i in range(num_per_task) for task in tasks]
