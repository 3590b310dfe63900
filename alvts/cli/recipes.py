"""Calibration recipes: `<alias>.toml` files whose values are `alvts-calibrate`'s defaults for one model. A recipe
sets any `CalibrationConfig` setting, plus the model and the data (`RUN_KEYS`).

Searched in order: the folder named by $ALVTS_RECIPES, `./recipes/` under the working directory, and the recipes
shipped in this package (`alvts/cli/recipes/`). The first file found wins.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..calibration.config import CalibrationConfig
from ..options import Setting, check_settings, setting, settings_of

RECIPES_ENV = "ALVTS_RECIPES"
PACKAGE_RECIPES = Path(__file__).parent / "recipes"
MODEL = Setting(str, "recipe alias, 'demo', local model folder or Hub model id")


@dataclass
class CalibrationData:
    """What a recipe says besides the calibration settings: the data and how the model loads (each a flag)."""

    dataset: str | None = setting(
        None, str, "Hub dataset id, or a local folder / .jsonl / .json / .parquet file; unset: the demo's task suite",
        optional=True,
    )  # fmt: skip
    split: str = setting("train", str, "dataset split")
    image_column: str = setting("image", str, "column of images or image paths")
    text_column: str = setting("question", str, "column of prompts, e.g. questions")
    num_samples: int = setting(256, int, "calibration samples", low=2)
    dtype: str | None = setting(
        None, str, "model weights dtype; unset: bf16 on CUDA, fp32 on CPU", choices=("bf16", "fp16", "fp32"),
        optional=True,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_settings(self)


RECIPE_KEYS: dict[str, Setting] = {"model": MODEL} | settings_of(CalibrationData) | settings_of(CalibrationConfig)
_ALIAS = re.compile(r"[A-Za-z0-9][\w.-]*")  # a bare name: paths and Hub ids ("org/name") are never aliases


def recipe_dirs() -> list[Path]:
    """The folders searched for recipes, in order."""
    env = os.environ.get(RECIPES_ENV)
    return ([Path(env).expanduser()] if env else []) + [Path.cwd() / "recipes", PACKAGE_RECIPES]


def find_recipe(alias: str) -> Path | None:
    """The recipe file for `alias`, or None when `alias` is no recipe (then it is a model path or Hub id)."""
    if not _ALIAS.fullmatch(alias):
        return None
    return next((d / f"{alias}.toml" for d in recipe_dirs() if (d / f"{alias}.toml").is_file()), None)


def available_recipes() -> list[str]:
    """Aliases of every recipe found, for help texts."""
    return sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.toml") if _ALIAS.fullmatch(p.stem)})


def load_recipe(alias: str) -> dict | None:
    """The checked values of `alias`'s recipe, or None when there is none; a broken recipe raises a ValueError."""
    path = find_recipe(alias)
    if path is None:
        return None
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"Recipe {path} is not valid TOML: {err}.") from None
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"Recipe {path} has unknown keys {unknown}; known keys: {', '.join(RECIPE_KEYS)}.")
    if "model" not in recipe:
        raise ValueError(f'Recipe {path} does not name its model: add `model = "<Hub id or path>"`.')
    for key, value in recipe.items():
        spec = RECIPE_KEYS[key]
        from_text = isinstance(value, str) and spec.parse_text is not None  # layers = "0-3"
        try:
            recipe[key] = spec.parse(key, value) if from_text else spec.check(key, value)
        except ValueError as err:
            raise ValueError(f"Recipe {path}: {err}.") from None
    return recipe
