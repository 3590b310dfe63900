"""Calibration recipes: `calibrate/<alias>.toml` files whose values are `alvts-calibrate`'s defaults for one model.

Searched in order: the folder named by $ALVTS_RECIPES, `./calibrate/` under the working directory, `calibrate/` at
the root of a source or editable checkout of alvts, and the copy a wheel installs under `<prefix>/share/alvts/`.
The first file found wins.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

RECIPES_ENV = "ALVTS_RECIPES"
REPO_RECIPES = Path(__file__).resolve().parents[1] / "calibrate"
INSTALLED_RECIPES = Path(sys.prefix) / "share" / "alvts" / "calibrate"  # pyproject's data-files put them here
# Every key a recipe may set, with its type; each is the `alvts-calibrate` option of the same name.
RECIPE_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "rank": int,
    "num_samples": int,
    "default_keep": (float, int),
    "stage_b_steps": int,
    "dtype": str,
    "dataset": str,
    "split": str,
    "image_column": str,
    "text_column": str,
    "layers": str,
    "loss": str,
    "seed": int,
}
_ALIAS = re.compile(r"[A-Za-z0-9][\w.-]*")  # a bare name: paths and Hub ids ("org/name") are never aliases


def recipe_dirs() -> list[Path]:
    """The folders searched for recipes, in order."""
    env = os.environ.get(RECIPES_ENV)
    return ([Path(env).expanduser()] if env else []) + [Path.cwd() / "calibrate", REPO_RECIPES, INSTALLED_RECIPES]


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
        expected = RECIPE_KEYS[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ValueError(f"Recipe {path}: {key} = {value!r} is not of type {names}.")
    return recipe
