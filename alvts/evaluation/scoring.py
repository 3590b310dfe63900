"""How an answer is scored against the expected one, and accuracy per task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence


def normalise(answer: str) -> str:
    """Case, surrounding space and a trailing full stop do not count against an answer."""
    return answer.strip().rstrip(".").strip().lower()


SCORERS: dict[str, Callable[[str, str], bool]] = {
    "normalised": lambda answer, prediction: normalise(answer) == normalise(prediction),
    "exact": lambda answer, prediction: answer.strip() == prediction.strip(),
}


def accuracy_by_task(
    tasks: Sequence[str], answers: Sequence[str], predictions: Sequence[str], scorer: str = "normalised"
) -> dict[str, float]:
    """Accuracy per task, plus "mean": the unweighted mean over tasks."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for task, answer, prediction in zip(tasks, answers, predictions, strict=True):
        hits[task].append(SCORERS[scorer](answer, prediction))
    accuracy = {task: sum(values) / len(values) for task, values in hits.items()}
    return {**accuracy, "mean": sum(accuracy.values()) / len(accuracy)}
