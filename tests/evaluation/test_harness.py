"""The evaluation harness on every family, through the family's processor: a batch of two prompts of different
lengths (and, for LLaVA-NeXT, images with different tile counts) answers as each prompt alone, routed or not, and
`evaluate` scores it."""

import pytest
import torch
from PIL import Image

import alvts
from alvts.evaluation.data import EvalSample
from alvts.evaluation.harness import evaluate, generate_answers
from alvts.evaluation.inputs import collate, encode_example
from alvts.routing import get_adapter
from alvts.testing import tiny_model, tiny_processor

# two images of different sizes and two questions of different lengths: the prompts differ in length in every family
IMAGES = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (64, 32), (30, 30, 200))]
QUESTIONS = ["w10 w11 w12", "w20 w21 w22 w23 w24 w25 w26"]


@pytest.fixture
def family_model(family):
    return tiny_model(family, "sdpa"), tiny_processor(tiny_model(family, "sdpa"))


def test_a_batch_of_different_prompts_collates_as_the_family_reads_it(family_model):
    model, processor = family_model
    items = [encode_example(processor, image, q) for image, q in zip(IMAGES, QUESTIONS, strict=True)]
    lengths = [item["input_ids"].shape[1] for item in items]
    assert lengths[0] != lengths[1]
    batch = collate(items, processor.tokenizer.pad_token_id, get_adapter(model), padding_side="left")
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for key in get_adapter(model).image_input_keys:
        if key in items[0]:  # image tensors keep their per-image rows; nothing is padded like text
            assert batch[key].shape[0] == sum(item[key].shape[0] for item in items)
    with torch.no_grad():
        model(**batch)


@pytest.mark.parametrize("policy, keep", [("full", 1.0), ("oracle", 0.5)])
def test_batched_answers_equal_single_answers(family_model, policy, keep):
    model, processor = family_model
    with alvts.routed(model, policy, keep=keep):
        batched = generate_answers(model, processor, IMAGES, QUESTIONS, batch_size=2, max_new_tokens=4)
        single = [generate_answers(model, processor, [i], [q], batch_size=1, max_new_tokens=4)[0]
                  for i, q in zip(IMAGES, QUESTIONS, strict=True)]  # fmt: skip
    assert batched == single
    if policy == "full":
        assert batched == generate_answers(model, processor, IMAGES, QUESTIONS, batch_size=2, max_new_tokens=4)


def test_evaluate_scores_every_family(family_model):
    model, processor = family_model
    stock = generate_answers(model, processor, IMAGES, QUESTIONS, batch_size=2, max_new_tokens=4)
    samples = [
        EvalSample(IMAGES[0], QUESTIONS[0], stock[0], "a"),  # the stock model's own answer: full accuracy 1
        EvalSample(IMAGES[1], QUESTIONS[1], "no such answer", "b"),  # never answered: accuracy 0 everywhere
    ]
    rows = evaluate(model, processor, samples, {"oracle": "oracle"}, [0.5], batch_size=2, max_new_tokens=4,
                    progress=False)  # fmt: skip
    by_key = {(row["task"], row["method"]): row for row in rows}
    assert by_key["a", "full"]["accuracy"] == 1 and by_key["b", "full"]["accuracy"] == 0
    assert by_key["mean", "full"]["agreement"] == 1 and by_key["mean", "full"]["flops_ratio"] == 1
    assert by_key["b", "oracle"]["accuracy"] == 0 and by_key["b", "oracle"]["retained"] is None
    oracle = by_key["mean", "oracle"]
    assert oracle["effective_keep"] == pytest.approx(0.5) and oracle["flops_ratio"] < 1
    assert oracle["visual_fraction"] == pytest.approx(0.5, abs=0.05)
