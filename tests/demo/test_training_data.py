"""The demo model's training data: multi-turn conversations about one image and dense per-token targets."""

import random

import pytest
import torch

from alvts.demo.build import build_processor, build_tokenizer
from alvts.demo.tasks import TASK_TYPES, answer_for, make_example
from alvts.demo.tasks.scenes import COLOUR_NAMES
from alvts.demo.tasks.vocab import DIRECTIONS, SHAPES
from alvts.demo.training_data import (
    FIELDS,
    NUM_CENTRE_CLASSES,
    PALETTE,
    answer_guides,
    conversation,
    encode_conversation,
    token_targets,
)
from alvts.evaluation.inputs import encode_example


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(examples_per_task=20))


@pytest.mark.parametrize("task", TASK_TYPES)
def test_conversation_starts_with_the_example_and_never_repeats_a_question(task):
    example = make_example(task, 3)
    turns = conversation(example, 4, random.Random(0))
    assert turns[0] == (example.question, example.answer, example.scene)
    assert len({question for question, _, _ in turns}) == len(turns)
    # lookup and existence always have 3 more queries; reading has none; the others as many as the scene allows
    assert len(turns) == {"lookup": 4, "existence": 4, "reading": 1}.get(task, len(turns)) <= 4


def test_extra_turns_ask_about_the_same_scene():
    example = make_example("counting", 7)
    for question, answer, scene in conversation(example, 4, random.Random(0)):
        colour = question.split()[2]
        assert scene["query"] == {"colour": colour}
        assert answer == answer_for({**example.scene, "query": {"colour": colour}})


def test_first_turn_is_what_inference_sees_and_labels_cover_every_answer(processor):
    example = make_example("lookup", 1)
    turns = [(question, answer) for question, answer, _ in conversation(example, 3, random.Random(0))]
    prompt = encode_example(processor, example.image, example.question)["input_ids"][0]
    encoded = encode_conversation(processor, example.image, turns)
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    assert torch.equal(ids[: len(prompt)], prompt) and (labels[: len(prompt)] == -100).all()
    assert processor.tokenizer.decode(labels[labels != -100]) == "".join(f"{answer}<|im_end|>" for _, answer in turns)
    single = encode_conversation(processor, example.image, [(example.question, example.answer)])["labels"][0]
    assert processor.tokenizer.decode(single[single != -100]) == f"{example.answer}<|im_end|>"


@pytest.mark.parametrize("task", TASK_TYPES)
def test_each_answer_token_has_one_guide_row(task):
    tokenizer = build_tokenizer()
    for seed in range(10):
        example = make_example(task, seed)
        answer = tokenizer(example.answer, add_special_tokens=False).input_ids
        fields, first, second = answer_guides(example.scene, 448)
        assert len(answer) == len(fields) == len(first) == len(second), (example.answer, answer)


def test_token_targets_mark_colours_and_centres_where_the_scene_puts_them():
    example = make_example("lookup", 2)
    targets = token_targets(example)
    assert targets.shape == (256, 5 + 2 * len(DIRECTIONS))
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


def test_neighbour_targets_at_the_anchor_give_the_relation_answer():
    """What a relation question asks is stored at its anchor's centre token, so finding the anchor answers it."""
    for seed in range(20):
        example = make_example("relation", seed)
        query = example.scene["query"]
        anchor = example.scene["objects"][query["anchor"]]
        column = 5 + 2 * list(DIRECTIONS).index(query["direction"])
        colour, shape = token_targets(example)[_token(anchor["centre"]), column : column + 2].tolist()
        assert f"{COLOUR_NAMES[colour - 1]} {SHAPES[shape - 1]}" == example.answer
    neighbours = token_targets(make_example("relation", 0))[:, 5:]
    assert ((neighbours >= 0).all(1).sum(), (neighbours == 0).sum()) == (16, 4 * 4 * 2)  # 16 shapes; 4 x 4 edges
    assert (token_targets(make_example("counting", 0))[:, 5:] == -100).all()  # only grid scenes have neighbours


def _token(point):
    return int(point[1] * 448) // 28 * 16 + int(point[0] * 448) // 28


@pytest.mark.parametrize("grid", [4, 6])
def test_answer_guides_look_at_the_object_that_holds_the_answer(grid):
    lookup = make_example("lookup", 2, lookup_grid=grid)
    query = lookup.scene["query"]
    target = next(o for o in lookup.scene["objects"] if (o["row"], o["col"]) == (query["row"], query["col"]))
    fields, first, second = answer_guides(lookup.scene, 448)
    assert first.shape == second.shape == (1, 257)
    assert first[0, 1 + _token(target["centre"])] == 1 and not second.any()
    asked = dict(zip(FIELDS, fields[0].tolist(), strict=True))
    assert (asked["task"], asked["row"], asked["col"], asked["colour"]) == (
        TASK_TYPES.index("lookup"),
        query["row"] - 1,
        query["col"] - 1,
        -100,
    )


def test_counting_guides_give_the_sink_one_share_per_counted_shape():
    example = make_example("counting", 5)
    _, first, _ = answer_guides(example.scene, 448)
    count = int(example.answer)
    assert first[0, 0] == pytest.approx(1 / (count + 1))  # the sink's share encodes the count
    assert (first[0, 1:] > 0).sum() == count
    for obj in example.scene["objects"]:
        assert (first[0, 1 + _token(obj["centre"])] > 0) == (obj["colour"] == example.scene["query"]["colour"])


def test_existence_guides_look_at_the_sink_when_the_object_is_absent():
    examples = [make_example("existence", seed) for seed in range(20)]
    for example in examples:
        _, first, _ = answer_guides(example.scene, 448)
        assert (first[0, 0] == 1) == (example.answer == "no")
    assert {e.answer for e in examples} == {"yes", "no"}


def test_reading_and_relation_guides_have_one_row_per_answer_token():
    reading = make_example("reading", 0)
    fields, first, _ = answer_guides(reading.scene, 448)
    digits = token_targets(reading)[:, 4]
    assert len(fields) == len(reading.answer)
    assert all(digits[first[i, 1:] > 0].tolist() == [i + 1] for i in range(len(fields)))  # digit i looks at digit i
    relation = make_example("relation", 0)
    fields, first, second = answer_guides(relation.scene, 448)
    anchor = relation.scene["objects"][relation.scene["query"]["anchor"]]
    answer = next(o for o in relation.scene["objects"] if f"{o['colour']} {o['shape']}" == relation.answer)
    assert len(fields) == 2 and fields[:, list(FIELDS).index("part")].tolist() == [0, 1]
    assert (first[:, 1 + _token(anchor["centre"])] == 1).all() and (second[:, 1 + _token(answer["centre"])] == 1).all()


def test_number_end_adds_a_row_that_looks_at_the_last_digit_and_asks_nothing():
    reading = make_example("reading", 0)
    fields, first, second = answer_guides(reading.scene, 448)
    end_fields, end_first, end_second = answer_guides(reading.scene, 448, number_end=True)
    assert len(end_fields) == len(reading.answer) + 1
    assert torch.equal(end_first[:-1], first) and torch.equal(end_first[-1], first[-1])
    assert (end_fields[-1] == -100).all() and (end_second[-1] == 0).all()
    lookup = make_example("lookup", 0)
    plain, with_end = answer_guides(lookup.scene, 448), answer_guides(lookup.scene, 448, number_end=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_end, strict=True))  # other tasks unchanged
