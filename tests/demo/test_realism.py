"""The realism measurements: the oracle's per-layer sets from the stock model, their overlaps, and the thirds."""

import pytest
import torch

import alvts
from alvts.demo import DEMO_MODEL_PATH, realism
from alvts.demo.realism import jaccard, layer_overlaps, oracle_sets, thirds
from alvts.demo.training_data import held_out
from alvts.evaluation.inputs import encode_example
from alvts.testing import tiny_model, tiny_processor


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("qwen2_5_vl", "sdpa")
    return model, tiny_processor(model)


def test_oracle_sets_hold_k_visual_tokens_per_layer_and_match_the_routed_oracle_at_layer_0(tiny):
    model, processor = tiny
    example = held_out(1, 7, ["lookup"])[0]
    inputs = encode_example(processor, example.image, "w10 w11 w12")
    visual = inputs["input_ids"][0] == model.config.image_token_id
    sets = oracle_sets(model, inputs, keep=0.25)
    k = int(visual.sum()) // 4
    assert sets.shape == (4, int(visual.sum())) and sets.sum(1).tolist() == [k] * 4
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        model(**inputs)
        routed_layer_0 = alvts.routing_state(model).selected[0][0][visual]
    assert torch.equal(routed_layer_0, sets[0])  # layer 0 sees the same input routed or not


def test_overlaps_and_thirds():
    a, b = torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    assert (jaccard(a, a), jaccard(a, b), jaccard(a, ~a)) == (1.0, pytest.approx(1 / 3), 0.0)
    assert thirds(12) == {"first third": [0, 1, 2, 3], "middle third": [4, 5, 6, 7], "last third": [8, 9, 10, 11]}
    assert sum(map(len, thirds(16).values())) == 16 and thirds(16)["middle third"] == list(range(5, 11))


def test_layer_overlaps_compare_layers_questions_and_chance(tiny):
    model, processor = tiny
    overlaps = layer_overlaps(model, processor, held_out(1, 7, ["lookup", "counting"]), keep=0.25, gap=1)
    assert set(overlaps) == {"layer l vs l+1", "two questions, same layer", "two random sets"}
    assert all(0 <= value <= 1 for value in overlaps.values())


def test_the_demo_alias_loads_the_shipped_folder(monkeypatch):
    """`--model demo` names the packaged model, as it does for alvts-calibrate and alvts-eval."""
    loaded = []

    def record(path, *args, **kwargs):
        loaded.append(str(path))
        raise RuntimeError("stop after the path is known")

    monkeypatch.setattr(realism.AutoModelForImageTextToText, "from_pretrained", record)
    with pytest.raises(RuntimeError, match="stop after"):
        realism.main(["--model", "demo", "--num-per-task", "1"])
    assert loaded == [str(DEMO_MODEL_PATH)]
