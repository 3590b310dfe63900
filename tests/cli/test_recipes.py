"""Calibration recipes: the shipped ones, the search order ($ALVTS_RECIPES, ./recipes, the package), checks."""

from pathlib import Path

import pytest

from alvts.cli.recipes import PACKAGE_RECIPES, RECIPES_ENV, available_recipes, find_recipe, load_recipe

SHIPPED = {
    "qwen2.5-vl": ("Qwen/Qwen2.5-VL-7B-Instruct", 32),
    "qwen2.5-vl-3b": ("Qwen/Qwen2.5-VL-3B-Instruct", 32),
    "llava-1.5": ("llava-hf/llava-1.5-7b-hf", 32),
    "llava-next": ("llava-hf/llava-v1.6-vicuna-7b-hf", 32),
    "qwen3-vl": ("Qwen/Qwen3-VL-8B-Instruct", 32),
    "qwen3-vl-moe": ("Qwen/Qwen3-VL-30B-A3B-Instruct", 32),
    "llava-onevision": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", 32),
    "internvl3": ("OpenGVLab/InternVL3-8B-hf", 32),
    "demo": ("demo", 64),
}


@pytest.fixture(autouse=True)
def no_user_recipes(monkeypatch, tmp_path):
    """Each test starts from the checkout's recipes only: no $ALVTS_RECIPES, an empty working directory."""
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def _write(folder: Path, alias: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{alias}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("alias", SHIPPED)
def test_shipped_recipes_load_with_their_model_and_rank(alias):
    recipe = load_recipe(alias)
    assert (recipe["model"], recipe["rank"]) == SHIPPED[alias]
    assert recipe["default_keep"] == pytest.approx(1 / 9)
    assert recipe["stage_b_steps"] == (0 if alias == "demo" else 300)  # the demo's pack is the same without Stage B
    assert recipe["dtype"] in ("bf16", "fp16", "fp32") and recipe["num_samples"] >= 2
    assert (PACKAGE_RECIPES / f"{alias}.toml").read_text().startswith("# ")  # says what it is
    assert find_recipe(alias) == PACKAGE_RECIPES / f"{alias}.toml"


def test_the_recipe_folder_is_never_a_python_package():
    assert {p.suffix for p in PACKAGE_RECIPES.iterdir()} == {".toml"}
    assert set(SHIPPED) <= set(available_recipes())


def test_env_folder_beats_working_directory_beats_package(tmp_path, monkeypatch):
    _write(tmp_path / "recipes", "demo", 'model = "demo"\nrank = 5\n')
    assert load_recipe("demo")["rank"] == 5
    env_recipe = _write(tmp_path / "mine", "demo", 'model = "demo"\nrank = 3\n')
    _write(tmp_path / "mine", "own-model", 'model = "/models/own"\nrank = 8\nlayers = "0-3"\n')
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path / "mine"))
    assert find_recipe("demo") == env_recipe and load_recipe("demo")["rank"] == 3
    assert load_recipe("own-model") == {"model": "/models/own", "rank": 8, "layers": [0, 1, 2, 3]}
    assert {"own-model", "llava-1.5"} <= set(available_recipes())


@pytest.mark.parametrize("name", ["no-such-recipe", "Qwen/Qwen2.5-VL-7B-Instruct", "./demo", "../recipes/demo", ""])
def test_unknown_aliases_paths_and_hub_ids_are_no_recipe(name):
    assert find_recipe(name) is None and load_recipe(name) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model = "demo"\nrank = 4\nrnak = 5\n', r"unknown keys \['rnak'\]"),
        ("rank = 4\n", "does not name its model"),
        ('model = "demo"\nrank = "32"\n', "rank must be an integer >= 1, got '32'"),
        ('model = "demo"\ndefault_keep = true\n', r"default_keep must be a number in \(0, 1\], got True"),
        ('model = "demo"\ninit = "random"\n', "init must be one of 'whitened', 'svd', got 'random'"),
        ('model = "demo"\nlayers = "3-1"\n', "invalid layer spec '3-1'"),
        ('model = "demo"\nrank = \n', "is not valid TOML"),
    ],
)
def test_broken_recipes_are_refused_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "recipes", "broken", text)
    with pytest.raises(ValueError, match=message) as info:
        load_recipe("broken")
    assert str(path) in str(info.value)
