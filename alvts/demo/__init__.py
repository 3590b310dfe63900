"""The demo workbench: a procedural task suite, a small LLaVA trained on it (the testbed's design, shipped inside the
package) and the selector pack fitted on that model. Nothing in the library imports it; the command lines use it as
their offline default (`--model demo`, the task suite as data). The first demo, a 4-layer Qwen2.5-VL, stays in
`v1/` (source tree only) as a hard case and as the vLLM suite's trained model.

It loads like any Hub checkpoint, offline:

    model = AutoModelForImageTextToText.from_pretrained(alvts.demo.DEMO_MODEL_PATH)
    processor = alvts.load_processor(alvts.demo.DEMO_MODEL_PATH)
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH = Path(__file__).parent / "model"
DEMO_PACK_PATH = Path(__file__).parent / "pack"  # selectors fitted on the shipped model (alvts-calibrate --model demo)
V1_MODEL_PATH, V1_PACK_PATH = Path(__file__).parent / "v1" / "model", Path(__file__).parent / "v1" / "pack"
ALIASES = {"demo": DEMO_MODEL_PATH}
# The tasks on which the shipped model reaches the 95% at full tokens (200 held-out questions per task,
# `python -m alvts.demo.testbed.gonogo alvts/demo/model --tasks all five --num-per-task 200`: lookup 1.00, reading
# 0.995, relation 0.975, existence 0.965; counting 0.935 falls short)
TASKS_AT_BAR = ("lookup", "reading", "existence", "relation")


def is_built() -> bool:
    """Whether the trained demo weights are in the package (a source checkout may lack them)."""
    return (DEMO_MODEL_PATH / "model.safetensors").is_file()


def resolve_model_alias(name: str | Path) -> str:
    """A model alias ("demo") as its local folder; anything else (a path or Hub id) unchanged."""
    return str(ALIASES.get(str(name), name))
