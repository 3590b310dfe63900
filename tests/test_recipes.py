"""Calibration recipes: the shipped ones, the search order ($ALVTS_RECIPES, ./calibrate, the checkout), checks."""

from pathlib import Path

import pytest

from alvts.recipes import RECIPES_ENV, REPO_RECIPES, available_recipes, find_recipe, load_recipe

SHIPPED = {
    "qwen2.5-vl": ("Qwen/Qwen2.5-VL-7B-Instruct", 32),
    "qwen2.5-vl-3b": ("Qwen/Qwen2.5-VL-3B-Instruct", 32),
    "llava-1.5": ("llava-hf/llava-1.5-7b-hf", 32),
    "llava-next": ("llava-hf/llava-v1.6-vicuna-7b-hf", 32),
    "demo": ("demo", 16),
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
    assert recipe["default_keep"] == pytest.approx(1 / 9) and recipe["stage_b_steps"] > 0
    assert recipe["dtype"] in ("bf16", "fp16", "fp32") and recipe["num_samples"] >= 2
    assert (REPO_RECIPES / f"{alias}.toml").read_text().startswith("# ")  # says what it is
    assert find_recipe(alias) == REPO_RECIPES / f"{alias}.toml"


def test_the_recipe_folder_is_never_a_python_package():
    assert {p.suffix for p in REPO_RECIPES.iterdir()} == {".toml"}
    assert set(SHIPPED) <= set(available_recipes())


def test_env_folder_beats_working_directory_beats_checkout(tmp_path, monkeypatch):
    _write(tmp_path / "calibrate", "demo", 'model = "demo"\nrank = 5\n')
    assert load_recipe("demo")["rank"] == 5
    env_recipe = _write(tmp_path / "mine", "demo", 'model = "demo"\nrank = 3\n')
    _write(tmp_path / "mine", "own-model", 'model = "/models/own"\nrank = 8\nlayers = "0-3"\n')
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path / "mine"))
    assert find_recipe("demo") == env_recipe and load_recipe("demo")["rank"] == 3
    assert load_recipe("own-model") == {"model": "/models/own", "rank": 8, "layers": "0-3"}
    assert {"own-model", "llava-1.5"} <= set(available_recipes())


@pytest.mark.parametrize("name", ["no-such-recipe", "Qwen/Qwen2.5-VL-7B-Instruct", "./demo", "../calibrate/demo", ""])
def test_unknown_aliases_paths_and_hub_ids_are_no_recipe(name):
    assert find_recipe(name) is None and load_recipe(name) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model = "demo"\nrank = 4\nrnak = 5\n', r"unknown keys \['rnak'\]"),
        ("rank = 4\n", "does not name its model"),
        ('model = "demo"\nrank = "32"\n', "rank = '32' is not of type int"),
        ('model = "demo"\ndefault_keep = true\n', "is not of type float or int"),
        ('model = "demo"\nrank = \n', "is not valid TOML"),
    ],
)
def test_broken_recipes_are_refused_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "calibrate", "broken", text)
    with pytest.raises(ValueError, match=message) as info:
        load_recipe("broken")
    assert str(path) in str(info.value)
