"""Tests of the procedural task suite: determinism, answers re-derived from scenes, dataset build and export."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Image, Value, load_dataset

from alvts.demo.tasks import (
    EVAL_SEED,
    TASK_TYPES,
    TRAIN_SEED,
    answer_for,
    build_dataset,
    encode_png,
    example_seed,
    export_dataset,
    generate_scene,
    make_example,
    question_for,
    render_scene,
)
from alvts.demo.tasks.font import GLYPH_GAP, GLYPH_HEIGHT, GLYPH_WIDTH, GLYPHS
from alvts.demo.tasks.geometry import is_unambiguous, overlaps
from alvts.demo.tasks.vocab import BACKGROUND, COLOURS, DIRECTIONS, NEGATIVE_MODES, POPULAR_TOP_K, POPULARITY, SHAPES

SIZE = 224  # fast tests render at 224 px (8x8 visual tokens of 28 px)
SEEDS = range(50)


def _digest(task: str, seed: int) -> str:
    """Hash of everything an example stores, to compare examples across processes."""
    example = make_example(task, seed, SIZE)
    payload = encode_png(example.image) + json.dumps([example.question, example.answer, example.scene]).encode()
    return hashlib.sha256(payload).hexdigest()


def test_task_types():
    assert TASK_TYPES == ("lookup", "counting", "existence", "reading", "relation")


@pytest.mark.parametrize("task", TASK_TYPES)
def test_same_seed_same_example(task):
    first, second = make_example(task, 7, SIZE), make_example(task, 7, SIZE)
    assert encode_png(first.image) == encode_png(second.image)
    assert (first.question, first.answer, first.scene) == (second.question, second.answer, second.scene)
    assert (first.task, first.seed) == (task, 7)


@pytest.mark.parametrize("task", TASK_TYPES)
def test_different_seeds_different_images(task):
    assert len({encode_png(make_example(task, seed, SIZE).image) for seed in range(6)}) == 6


def test_deterministic_across_processes():
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('suite', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(' '.join(module._digest(task, 3) for task in module.TASK_TYPES))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash salt than this process
    out = subprocess.run(
        [sys.executable, "-c", code, __file__], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [_digest(task, 3) for task in TASK_TYPES]


@pytest.mark.parametrize("task", TASK_TYPES)
def test_answer_rederived_from_scene(task):
    for seed in SEEDS:
        scene, answer = generate_scene(task, seed)
        stored = json.loads(json.dumps(scene))
        assert stored == scene
        assert answer_for(stored) == answer, (task, seed, scene)
    example = make_example(task, 11, SIZE)
    stored = json.loads(json.dumps(example.scene))
    assert (question_for(stored), answer_for(stored)) == (example.question, example.answer)
    assert encode_png(render_scene(stored, SIZE)) == encode_png(example.image)


def test_answers_in_closed_vocabularies():
    for seed in SEEDS:
        assert make_example("lookup", seed, SIZE).answer in COLOURS
        assert generate_scene("counting", seed)[1] in {str(n) for n in range(1, 5)}
        assert generate_scene("existence", seed)[1] in {"yes", "no"}
        text = generate_scene("reading", seed)[1]
        assert text.isdigit() and 3 <= len(text) <= 5 and text[0] != "0"
        colour, shape = generate_scene("relation", seed)[1].split()
        assert colour in COLOURS and shape in SHAPES


@pytest.mark.parametrize("task", ["counting", "existence", "reading", "relation"])
def test_scattered_objects_do_not_overlap(task):
    for seed in range(20):
        scene, _ = generate_scene(task, seed)
        boxes = [obj["bbox"] for obj in scene["objects"]] + ([scene["text"]["bbox"]] if "text" in scene else [])
        assert all(0 <= value <= 1 for box in boxes for value in box)
        assert not any(overlaps(a, b, gap=0) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_existence_covers_answers_and_negative_modes():
    scenes = [generate_scene("existence", seed) for seed in range(60)]
    assert {answer for _, answer in scenes} == {"yes", "no"}
    assert {scene["negative_mode"] for scene, answer in scenes if answer == "no"} == set(NEGATIVE_MODES)
    for scene, answer in scenes:
        present = [(obj["colour"], obj["shape"]) for obj in scene["objects"]]
        colour, shape = scene["query"]["colour"], scene["query"]["shape"]
        mode = scene["negative_mode"]
        assert (mode is None) == (answer == "yes")
        if mode == "popular":
            assert (colour, shape) in [combo for combo in POPULARITY if combo not in present][:POPULAR_TOP_K]
        if mode == "adversarial":
            assert any(c == colour and s != shape for c, s in present)
            assert any(s == shape and c != colour for c, s in present)


def test_relation_answers_unambiguous():
    for seed in SEEDS:
        scene, answer = generate_scene("relation", seed)
        objects, query = scene["objects"], scene["query"]
        names = [f"{obj['colour']} {obj['shape']}" for obj in objects]
        assert len(set(names)) == len(names)
        assert is_unambiguous([obj["centre"] for obj in objects], query["anchor"], query["direction"])
        assert answer in names and answer != names[query["anchor"]]


def test_relation_answer_is_the_grid_neighbour():
    for seed in SEEDS:
        scene, answer = generate_scene("relation", seed)
        anchor = scene["objects"][scene["query"]["anchor"]]
        dx, dy = DIRECTIONS[scene["query"]["direction"]]
        (neighbour,) = [o for o in scene["objects"] if (o["row"], o["col"]) == (anchor["row"] + dy, anchor["col"] + dx)]
        assert answer == f"{neighbour['colour']} {neighbour['shape']}"


def test_counting_shapes_fill_one_token_each_with_empty_tokens_between_at_448():
    token = 28
    for seed in range(20):
        scene, _ = generate_scene("counting", seed)
        cells = []
        for obj in scene["objects"]:
            x0, y0, x1, y1 = (round(v * 448) for v in obj["bbox"])
            assert x0 // token == (x1 - 1) // token and y0 // token == (y1 - 1) // token  # inside one token
            cells.append((y0 // token, x0 // token))
        for i, (r, c) in enumerate(cells):
            assert all(max(abs(r - r2), abs(c - c2)) > 1 for r2, c2 in cells[i + 1 :])


def test_reading_digits_fill_one_token_each_at_448():
    token = 28
    lines, columns = set(), set()
    for seed in range(20):
        scene, text = generate_scene("reading", seed)
        x0, y0, _, y1 = (round(v * 448) for v in scene["text"]["bbox"])
        assert y0 % token == 0 and y1 - y0 == token
        assert x0 // token >= 1 and x0 // token + len(text) <= 448 // token - 1  # inside the margins
        lines.add(y0 // token)
        columns.add(x0 // token)
        pitch = (GLYPH_WIDTH + GLYPH_GAP) * 448 // scene["text"]["units"]
        for index in range(len(text)):
            left = x0 + index * pitch
            right = left + GLYPH_WIDTH * 448 // scene["text"]["units"] - 1
            assert left // token == right // token == x0 // token + index
    assert len(lines) > 5 and len(columns) > 5  # numbers start anywhere, in both directions


def test_reading_digits_drawn_where_scene_says():
    for seed in range(10):
        example = make_example("reading", seed, SIZE)
        text = example.scene["text"]
        scale = SIZE // text["units"]
        x0, y0 = round(text["bbox"][0] * SIZE), round(text["bbox"][1] * SIZE)
        for index, char in enumerate(text["value"]):
            left = x0 + index * (GLYPH_WIDTH + GLYPH_GAP) * scale
            bits = tuple(
                "".join(
                    "." if example.image.getpixel((left + col * scale, y0 + row * scale)) == BACKGROUND else "#"
                    for col in range(GLYPH_WIDTH)
                )
                for row in range(GLYPH_HEIGHT)
            )
            assert bits == GLYPHS[char]
    assert len(set(GLYPHS.values())) == 10


@pytest.mark.parametrize("size", [224, 280, 448])
def test_image_size_honoured(size):
    image = make_example("relation", 0, size).image
    assert image.size == (size, size) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == BACKGROUND
    assert make_example("relation", 0).image.size == (448, 448)


@pytest.mark.parametrize("grid", [4, 6])
def test_a_lookup_grid_has_one_shape_per_cell_each_centred_in_its_own_token(grid):
    """Every cell holds one shape whose centre token no other shape shares (at 448 px), so a 6 x 6 lookup has 36
    candidate tokens: more than keep 0.11 (28 of 256) holds."""
    for seed in range(5):
        example = make_example("lookup", seed, lookup_grid=grid)
        objects, query = example.scene["objects"], example.scene["query"]
        cells = [(row, col) for row in range(1, 1 + grid) for col in range(1, 1 + grid)]
        assert sorted((o["row"], o["col"]) for o in objects) == cells
        assert 1 <= query["row"] <= grid and 1 <= query["col"] <= grid
        assert example.answer == answer_for(example.scene)
        tokens = {(int(o["centre"][1] * 448) // 28, int(o["centre"][0] * 448) // 28) for o in objects}
        assert len(tokens) == grid * grid


def test_lookup_grid_out_of_range():
    for grid in (0, 8):
        with pytest.raises(ValueError, match=r"lookup grid's side must be in \[1, 7\]"):
            make_example("lookup", 0, lookup_grid=grid)


def test_image_size_too_small():
    with pytest.raises(ValueError, match="image_size"):
        make_example("lookup", 0, 32)


def test_unknown_task():
    with pytest.raises(ValueError, match="valid tasks: lookup, counting, existence, reading, relation"):
        make_example("colouring", 0)
    with pytest.raises(ValueError, match="'colouring'"):
        build_dataset(1, tasks=["lookup", "colouring"])


def test_build_dataset():
    ds = build_dataset(2, seed=TRAIN_SEED, tasks=["lookup", "reading"], image_size=SIZE)
    assert ds.column_names == ["image", "question", "answer", "task", "scene", "seed"]
    assert isinstance(ds.features["image"], Image) and ds.features["seed"] == Value("int64")
    assert ds["task"] == ["lookup", "reading", "lookup", "reading"]
    assert ds["seed"] == [example_seed(TRAIN_SEED, index) for index in (0, 0, 1, 1)]
    row = ds[3]
    example = make_example(row["task"], row["seed"], SIZE)
    assert encode_png(row["image"]) == encode_png(example.image)
    assert json.loads(row["scene"]) == example.scene and row["answer"] == answer_for(json.loads(row["scene"]))
    assert len(build_dataset(1, image_size=SIZE)) == len(TASK_TYPES)
    held_out = build_dataset(2, seed=EVAL_SEED, tasks=["lookup"], image_size=SIZE)
    assert not set(held_out["seed"]) & set(ds["seed"])


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet"])
def test_export_round_trip(tmp_path, fmt):
    ds = build_dataset(1, seed=1, tasks=["counting", "existence", "relation"], image_size=SIZE)
    path = export_dataset(ds, tmp_path / "out", format=fmt)
    if fmt == "imagefolder":
        loaded = load_dataset("imagefolder", data_dir=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    else:
        loaded = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded.column_names) == sorted(ds.column_names)
    assert len(loaded) == len(ds)
    for original, reloaded in zip(ds, loaded, strict=True):
        assert encode_png(reloaded.pop("image")) == encode_png(original.pop("image"))
        assert reloaded == original


def test_export_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="imagefolder, parquet"):
        export_dataset(build_dataset(1, tasks=["lookup"], image_size=SIZE), tmp_path, format="csv")
