"""The testbed trainer's loss pieces: the v2v cross-entropy's shortcut and which answer positions get guides."""

import pytest
import torch

from alvts.demo.testbed.build import build_processor
from alvts.demo.testbed.train import attention_cross_entropy, guided_answers
from alvts.demo.training_data import ANSWER_END, TrainingStream


def test_attention_cross_entropy_is_the_cross_entropy_to_the_masked_softmax():
    """Value and gradients equal those of the textbook form, -sum(target * log_softmax(masked scores)), averaged over
    samples, heads and queries (float64, keys masked at random, targets only on allowed keys)."""
    torch.manual_seed(0)
    n, queries, keys, heads, dim, scaling = 3, 5, 9, 4, 8, 0.3
    q = torch.randn(n, queries, heads, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, keys, heads, dim, dtype=torch.float64, requires_grad=True)
    allowed = torch.rand(n, queries, keys) > 0.4
    allowed[..., 0] = True
    target = torch.rand(n, queries, keys, dtype=torch.float64) * allowed
    target = target / target.sum(-1, keepdim=True)

    ours = attention_cross_entropy(q, k, scaling, allowed, target)
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * scaling
    log_probs = scores.masked_fill(~allowed[:, None], float("-inf")).log_softmax(-1)
    textbook = -torch.where(target[:, None] > 0, target[:, None] * log_probs, 0).sum(-1).mean()

    torch.testing.assert_close(ours, textbook)
    for mine, theirs in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(textbook, (q, k)), strict=True):
        torch.testing.assert_close(mine, theirs)


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
