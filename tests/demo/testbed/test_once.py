"""`once`: the tokens a grid answer needs, the recording of a policy's top k, the shares kept, and its task check."""

from types import SimpleNamespace

import pytest
import torch

from alvts.demo.tasks import make_example
from alvts.demo.testbed import once
from alvts.demo.training_data import centre_token


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_needed_tokens_are_the_centres_of_the_anchor_and_of_the_shape_the_answer_names(seed):
    """Relation: the anchor's centre and that of the shape its answer's words name; lookup: the centre of the asked
    cell's shape, whose colour is the answer."""
    relation, lookup = make_example("relation", seed), make_example("lookup", seed)
    size, objects = relation.image.size[0], relation.scene["objects"]
    named = next(o for o in objects if f"{o['colour']} {o['shape']}" == relation.answer)
    anchor = objects[relation.scene["query"]["anchor"]]
    assert once.needed_tokens(relation) == {
        "anchor": centre_token(anchor["centre"], size), "answer": centre_token(named["centre"], size)
    }  # fmt: skip
    query = lookup.scene["query"]
    asked = next(o for o in lookup.scene["objects"] if (o["row"], o["col"]) == (query["row"], query["col"]))
    assert asked["colour"] == lookup.answer
    assert once.needed_tokens(lookup) == {"answer": centre_token(asked["centre"], size)}


def test_record_top_k_keeps_each_calls_best_visual_tokens_and_returns_the_scores_unchanged():
    """Two samples, positions [text, v0, v1, v2, text]: the top 2 of the visual scores, in visual order, per layer."""
    scores = torch.tensor([[9.0, 0.1, 0.7, 0.3, 9.0], [9.0, 0.5, 0.2, 0.9, 9.0]])
    policy = SimpleNamespace(scores=lambda inputs: scores * (inputs.layer_idx + 1))
    chosen = once.record_top_k(policy, 2)
    visual = torch.tensor([[False, True, True, True, False]] * 2)
    for layer in (0, 1):
        assert torch.equal(policy.scores(SimpleNamespace(visual=visual, layer_idx=layer)), scores * (layer + 1))
    assert {layer: [rows.tolist() for rows in kept] for layer, kept in chosen.items()} == {
        0: [[[1, 2], [2, 0]]], 1: [[[1, 2], [2, 0]]]
    }  # fmt: skip


def test_kept_shares_count_centres_and_needed_tokens_per_question():
    """Layer 0 keeps every centre of the first lookup question and none of the second; layer 1 only each question's
    asked centre: centres (1 + 0) / 2 and the mean of 1 / (each question's centres), answers 1/2 and 1."""
    examples = [make_example("lookup", 0), make_example("lookup", 1)]
    size = examples[0].image.size[0]
    centres = [[centre_token(o["centre"], size) for o in e.scene["objects"]] for e in examples]
    spare = next(t for t in range(256) if t not in centres[1])
    answers = [once.needed_tokens(e)["answer"] for e in examples]
    chosen = {
        0: [torch.tensor([centres[0], [spare] * len(centres[0])])],
        1: [torch.tensor([[answers[0]], [answers[1]]])],
    }
    one_each = sum(1 / len(set(c)) for c in centres) / 2
    shares = once.kept_shares(chosen, examples)
    assert shares == {"lookup": {"centres": [0.5, round(one_each, 3)], "answer": [0.5, 1.0]}}


def test_tasks_without_grid_answers_are_refused_before_the_model_loads(capsys):
    with pytest.raises(SystemExit):
        once.main(["demo", "--pack", "nowhere", "--tasks", "relation,reading"])
    assert "--tasks ['reading']: only ['relation', 'lookup']" in capsys.readouterr().err
