"""The demo workbench: a procedural task suite, a small Qwen2.5-VL trained on it (shipped inside the package) and
the selector pack fitted on that model. Nothing in the library imports it; the command lines use it as their
offline default (`--model demo`, the task suite as data).

It loads like any Hub checkpoint, offline:

    model = AutoModelForImageTextToText.from_pretrained(alvts.demo.DEMO_MODEL_PATH)
    processor = alvts.load_processor(alvts.demo.DEMO_MODEL_PATH)
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH = Path(__file__).parent / "model"
DEMO_PACK_PATH = Path(__file__).parent / "pack"  # selectors fitted on the shipped model (alvts-calibrate --model demo)
ALIASES = {"demo": DEMO_MODEL_PATH}
# The tasks on which the shipped model reaches the 95% at full tokens (held-out, `python -m
# alvts.demo.experiments --num-per-task 100`: lookup 1.00, reading 1.00, relation 0.99; counting 0.79, existence 0.87)
TASKS_AT_BAR = ("lookup", "reading", "relation")


def is_built() -> bool:
    """Whether the trained demo weights are in the package (a source checkout may lack them)."""
    return (DEMO_MODEL_PATH / "model.safetensors").is_file()


def resolve_model_alias(name: str | Path) -> str:
    """A model alias ("demo") as its local folder; anything else (a path or Hub id) unchanged."""
    return str(ALIASES.get(str(name), name))
