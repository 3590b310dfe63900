"""The demo model's training data: multi-turn conversations about one image and dense per-token targets."""

import random

import pytest
import torch

from alvts.demo.build import build_processor, build_tokenizer
from alvts.demo.data import (
    NUM_CENTRE_CLASSES,
    PALETTE,
    conversation,
    encode_conversation,
    relevant_tokens,
    token_targets,
)
from alvts.inputs import encode_example
from alvts.tasks import TASK_TYPES, answer_for, make_example
from alvts.tasks.vocab import SHAPES


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(examples_per_task=20))


@pytest.mark.parametrize("task", TASK_TYPES)
def test_conversation_starts_with_the_example_and_never_repeats_a_question(task):
    example = make_example(task, 3)
    turns = conversation(example, 4, random.Random(0))
    assert turns[0] == (example.question, example.answer)
    assert len({question for question, _ in turns}) == len(turns)
    # lookup and existence always have 3 more queries; reading has none; the others as many as the scene allows
    assert len(turns) == {"lookup": 4, "existence": 4, "reading": 1}.get(task, len(turns)) <= 4


def test_extra_turns_ask_about_the_same_scene():
    example = make_example("counting", 7)
    for question, answer in conversation(example, 4, random.Random(0)):
        colour = question.split()[2]
        assert answer == answer_for({**example.scene, "query": {"colour": colour}})


def test_first_turn_is_what_inference_sees_and_labels_cover_every_answer(processor):
    example = make_example("lookup", 1)
    turns = conversation(example, 3, random.Random(0))
    single = encode_example(processor, example.image, example.question, example.answer)
    assert all(torch.equal(v, encode_conversation(processor, example.image, turns[:1])[k]) for k, v in single.items())
    encoded = encode_conversation(processor, example.image, turns)
    labels = encoded["labels"][0]
    expected = "".join(answer + "<|im_end|>" for _, answer in turns)
    assert processor.tokenizer.decode(labels[labels != -100]) == expected
    n = single["input_ids"].shape[1]
    assert torch.equal(encoded["input_ids"][0, :n], single["input_ids"][0])


def test_token_targets_mark_colours_and_centres_where_the_scene_puts_them():
    example = make_example("lookup", 2)
    targets = token_targets(example)
    assert targets.shape == (256, 5)
    assert torch.equal(targets[:, 2] * 16 + targets[:, 3], torch.arange(256))  # row, column in raster order
    for obj in example.scene["objects"]:
        x, y = obj["centre"]
        token = int(y * 448) // 28 * 16 + int(x * 448) // 28
        assert targets[token, 1] == 1 + SHAPES.index(obj["shape"])
        assert PALETTE[targets[token, 0]] is not None  # a shape colour, not the background
    assert (targets[:, 1] > 0).sum() == len(example.scene["objects"])
    assert targets[:, 1].max() < NUM_CENTRE_CLASSES


def test_token_targets_number_the_digits_left_to_right():
    example = make_example("reading", 0)
    targets = token_targets(example)
    digits = targets[targets[:, 4] > 0]
    assert digits[:, 4].tolist() == list(range(1, len(example.answer) + 1))  # raster order is reading order
    assert [str(c - 1 - len(SHAPES)) for c in digits[:, 1].tolist()] == list(example.answer)


def test_relevant_tokens_cover_the_object_or_digits_that_hold_the_answer():
    lookup = make_example("lookup", 2)
    query = lookup.scene["query"]
    target = lookup.scene["objects"][(query["row"] - 1) * 4 + query["col"] - 1]
    x, y = target["centre"]
    mask = relevant_tokens(lookup)
    assert mask.shape == (1, 256) and mask[0, int(y * 448) // 28 * 16 + int(x * 448) // 28]
    others = [obj for obj in lookup.scene["objects"] if obj is not target]
    assert not any(mask[0, int(o["centre"][1] * 448) // 28 * 16 + int(o["centre"][0] * 448) // 28] for o in others)
    reading = make_example("reading", 0)
    digits = relevant_tokens(reading)
    centres = token_targets(reading)[:, 4]
    assert len(digits) == len(reading.answer)
    assert all(digits[i, centres == i + 1].all() for i in range(len(digits)))  # digit i's mask holds its centre
    absent = next(e for e in (make_example("existence", s) for s in range(20)) if e.answer == "no")
    assert relevant_tokens(absent).shape == (0, 256)
