"""Pure functions of a scene: the question text and the exact answer re-derived from the scene alone."""

from __future__ import annotations

from .geometry import nearest_in_direction

RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _named(obj: dict) -> str:
    """How a shape is referred to in questions and answers, e.g. 'blue triangle'."""
    return f"{obj['colour']} {obj['shape']}"


def question_for(scene: dict) -> str:
    """Question text for a scene."""
    task, query = scene["task"], scene.get("query", {})
    if task == "lookup":
        return f"What colour is the shape at row {query['row']}, column {query['col']}?"
    if task == "counting":
        return f"How many {query['colour']} shapes are there?"
    if task == "existence":
        return f"Is there a {_named(query)}?"
    if task == "reading":
        return "What number is written?"
    if task == "relation":
        return f"What is {RELATION_PHRASES[query['direction']]} the {_named(scene['objects'][query['anchor']])}?"
    raise ValueError(f"unknown task {task!r}")


def answer_for(scene: dict) -> str:
    """Exact answer for a scene, derived from its objects, text and query only (never from a stored label)."""
    task, objects, query = scene["task"], scene["objects"], scene.get("query", {})
    if task == "lookup":
        return next(obj["colour"] for obj in objects if (obj["row"], obj["col"]) == (query["row"], query["col"]))
    if task == "counting":
        return str(sum(obj["colour"] == query["colour"] for obj in objects))
    if task == "existence":
        present = any(obj["colour"] == query["colour"] and obj["shape"] == query["shape"] for obj in objects)
        return "yes" if present else "no"
    if task == "reading":
        return scene["text"]["value"]
    if task == "relation":
        target = nearest_in_direction([obj["centre"] for obj in objects], query["anchor"], query["direction"])
        if target is None:
            raise ValueError("relation scene has nothing in the asked direction")
        return _named(objects[target])
    raise ValueError(f"unknown task {task!r}")
