"""The wheel built from pyproject: it ships the demo model, its pack and the calibration recipes as package data,
usable from elsewhere."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alvts.cli.recipes import PACKAGE_RECIPES
from alvts.demo import is_built

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", out]
    subprocess.run(build, check=True, capture_output=True, cwd=out)
    (path,) = out.glob("alvts-*.whl")
    return path


def test_the_wheel_ships_the_recipes(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("alvts/cli/recipes/")}
    assert shipped == {path.name for path in PACKAGE_RECIPES.glob("*.toml")} and shipped
    assert not [name for name in names if ".data/" in name]  # nothing installed outside the package


@pytest.mark.skipif(not is_built(), reason="the demo model is not in this checkout: README, Demo model")
def test_the_wheel_ships_the_model(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert f"alvts/demo/model/{name}" in names
    for name in ("selector_config.json", "selectors.safetensors"):
        assert f"alvts/demo/pack/{name}" in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "import alvts, alvts.demo, transformers\n"
        f"assert alvts.__file__.startswith({str(tmp_path / 'site')!r}), alvts.__file__\n"
        "transformers.AutoModelForImageTextToText.from_pretrained(alvts.demo.DEMO_MODEL_PATH)\n"
        "alvts.load_processor(alvts.demo.DEMO_MODEL_PATH)\n"
        "alvts.SelectorPack.from_pretrained(alvts.demo.DEMO_PACK_PATH)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(tmp_path / "site")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
