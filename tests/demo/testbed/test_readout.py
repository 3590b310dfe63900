"""The readout diagnostic's classes of relation answers, on a real relation scene."""

from alvts.demo.tasks import make_example
from alvts.demo.tasks.geometry import nearest_in_direction
from alvts.demo.tasks.vocab import COMBOS, DIRECTIONS
from alvts.demo.testbed.readout import relation_outcome


def test_relation_outcome_names_what_the_answer_points_at():
    """From the scene itself: the asked neighbour is right, the anchor and its other neighbours are named as such,
    another shape of the grid is "another shape", and a shape the grid lacks is "not in the scene"."""
    example = make_example("relation", 3)
    objects, query = example.scene["objects"], example.scene["query"]
    names = [f"{o['colour']} {o['shape']}" for o in objects]
    centres = [o["centre"] for o in objects]
    around = {d: nearest_in_direction(centres, query["anchor"], d) for d in DIRECTIONS}
    asked = around.pop(query["direction"])
    others = [i for i in around.values() if i is not None]
    far = next(i for i in range(len(objects)) if i not in {query["anchor"], asked, *others})
    assert relation_outcome(example, names[asked]) == "right"
    assert relation_outcome(example, names[query["anchor"]]) == "the anchor"
    assert relation_outcome(example, names[others[0]]) == "anchor's neighbour in another direction"
    assert relation_outcome(example, names[far]) == "another shape in the scene"
    absent = next(f"{colour} {shape}" for colour, shape in COMBOS if f"{colour} {shape}" not in names)
    assert relation_outcome(example, absent) == "not in the scene"
