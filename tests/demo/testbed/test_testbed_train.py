"""The testbed trainer: which answer positions get attention guides."""

import pytest
import torch

from alvts.demo.testbed.build import build_processor
from alvts.demo.testbed.train import guided_answers
from alvts.demo.training_data import ANSWER_END, TrainingStream


def test_guided_answers_takes_the_end_token_only_where_the_guides_have_a_row_for_it():
    end = 9
    labels = torch.tensor([[-100, 5, 6, end, -100], [-100, -100, 5, 6, end]])
    mask = guided_answers(labels, end, torch.tensor([2, 3]))
    assert mask.tolist() == [[False, True, True, False, False], [False, False, True, True, True]]
    with pytest.raises(ValueError, match="row count"):
        guided_answers(labels, end, torch.tensor([1, 3]))


def test_number_end_guides_reading_end_tokens_and_no_others():
    """On real training items: with number_end, reading's end token is guided and lookup's six are not."""
    processor = build_processor()
    end_id = processor.tokenizer.convert_tokens_to_ids(ANSWER_END)
    stream = iter(TrainingStream(processor, ("reading", "lookup"), turns=6, number_end=True))
    reading, lookup = next(stream), next(stream)
    for item, expected_ends in ((reading, 1), (lookup, 0)):
        labels = item["labels"]
        mask = guided_answers(labels, end_id, torch.tensor([len(item["first_attention"])]))
        assert (mask & (labels == end_id)).sum() == expected_ends
        assert mask.sum() == len(item["first_attention"])
