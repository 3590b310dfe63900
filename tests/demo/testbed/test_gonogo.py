"""The go/no-go table's recall of answer tokens, from an oracle's recorded choices."""

import torch

from alvts.demo.tasks import EVAL_SEED
from alvts.demo.testbed.gonogo import RecordingOracle, answer_recall, answer_tokens
from alvts.demo.training_data import held_out


def test_answer_recall_is_the_share_of_answer_tokens_each_layer_kept():
    """Two reading questions: layer 0 keeps every digit of both, layer 1 the first digit of the first and none of the
    second's, so its recall is (1 / digits + 0) / 2; existence has no answer tokens and no row."""
    examples = held_out(2, EVAL_SEED, ("reading", "existence"))
    reading = [e for e in examples if e.task == "reading"]
    digits = [answer_tokens(e) for e in reading]
    spare = [t for t in range(256) if t not in {*digits[0], *digits[1]}]
    width = max(map(len, digits)) + 1

    def row(kept: list[int]) -> list[int]:
        return kept + spare[: width - len(kept)]

    oracle = RecordingOracle(k=width)
    # rows follow the examples' order: reading, existence, reading, existence
    oracle.chosen = {
        0: [torch.tensor([row(digits[0]), row([]), row(digits[1]), row([])])],
        1: [torch.tensor([row(digits[0][:1]), row([]), row([]), row([])])],
    }
    recall = answer_recall(oracle, examples, ("reading", "existence"))
    assert list(recall) == ["reading"]
    assert recall["reading"] == [1.0, round((1 / len(digits[0]) + 0) / 2, 3)]
