"""The shipped demo model (the 12-layer LLaVA of `alvts/demo/testbed`): loads offline through the Auto classes,
answers held-out questions of the tasks it masters at full tokens, needs its image, and keeps the regime in which
layer-wise selection can be judged: at keep 0.11 on every layer the exact-attention oracle keeps what random
selection loses. A regression in the model or in the runtime fails here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from scipy.stats import binom, norm
from transformers import AutoModelForImageTextToText

from alvts.api import routed
from alvts.demo import DEMO_MODEL_PATH, TASKS_AT_BAR, is_built, resolve_model_alias
from alvts.demo.tasks import EVAL_SEED, TASK_TYPES
from alvts.demo.tasks.vocab import BACKGROUND
from alvts.demo.testbed.build import build_processor
from alvts.demo.training_data import held_out
from alvts.evaluation.harness import generate_answers
from alvts.evaluation.processor import load_processor
from alvts.evaluation.report import wilson_interval
from alvts.evaluation.scoring import accuracy_by_task
from alvts.policies import OraclePolicy, RandomPolicy

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PER_TASK = 20  # a block used by neither training (TRAIN_SEED) nor the README's evaluation (EVAL_SEED)
BLOCK = EVAL_SEED + 2
BONFERRONI_Z = float(norm.ppf(1 - 0.05 / len(TASK_TYPES) / 2))  # two-sided, 0.05 shared by the tasks: 2.576
RECORDED = Path(DEMO_MODEL_PATH).parent / "testbed" / "results" / "g26_gonogo.json"  # 200 per task, EVAL_SEED
needs_model = pytest.mark.skipif(
    not is_built(), reason="the demo model is not in this checkout: python -m alvts.demo.testbed.train (README)"
)


@pytest.fixture(scope="module")
def demo():
    return AutoModelForImageTextToText.from_pretrained(DEMO_MODEL_PATH).eval(), load_processor(DEMO_MODEL_PATH)


def _accuracy(demo, examples, images=None, policy=None):
    model, processor = demo
    images = images or [e.image for e in examples]
    if policy is None:
        answers = generate_answers(model, processor, images, [e.question for e in examples])
    else:
        with routed(model, policy, keep=0.11):
            answers = generate_answers(model, processor, images, [e.question for e in examples])
    return accuracy_by_task([e.task for e in examples], [e.answer for e in examples], answers)


def test_alias_names_the_packaged_folder():
    assert resolve_model_alias("demo") == str(DEMO_MODEL_PATH)
    assert resolve_model_alias("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"


@needs_model
def test_loads_offline_through_the_auto_classes():
    code = (
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "import alvts.demo\n"
        "path = alvts.demo.DEMO_MODEL_PATH\n"
        "model = AutoModelForImageTextToText.from_pretrained(path)\n"
        "config = model.config\n"
        "print(type(model).__name__, config.text_config.num_hidden_layers, config.vision_config.model_type)\n"
        "print(type(AutoProcessor.from_pretrained(path)).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=OFFLINE, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["LlavaForConditionalGeneration 12 clip_vision_model", "LlavaProcessor"]


@needs_model
def test_the_trainer_builds_the_tokenizer_the_shipped_model_was_trained_with():
    """The trainer fits its tokenizer anew each run; it must give the shipped model's token ids, whatever the suite's
    lookup grid."""
    shipped = load_processor(DEMO_MODEL_PATH).tokenizer
    assert build_processor().tokenizer.get_vocab() == shipped.get_vocab()


@needs_model
def test_answers_from_the_image(demo):
    """The tasks at the bar (`TASKS_AT_BAR`) reach the issue's 95% at full tokens on 200 held-out questions (README);
    on this smaller block their hits must not reject a rate of 95% (exact binomial, one-sided, at the tasks' shared
    0.05: at most 4 misses in 20), and with blank images they fall by at least 30 points. Every
    task stays within what the recorded 200-question measurement allows for 20 questions: at least the lower end of
    that rate's Wilson interval at n = 20, at 99% per task so that the five tasks together hold at 95% (Bonferroni)."""
    examples = held_out(PER_TASK, BLOCK)
    full = _accuracy(demo, examples)
    recorded = json.loads(RECORDED.read_text())["rows"]["full"]
    for task in TASK_TYPES:
        lowest = wilson_interval(recorded[task]["acc"], PER_TASK, z=BONFERRONI_Z)[0]
        assert full[task] >= lowest, (task, full, recorded[task])
    at_bar = [e for e in examples if e.task in TASKS_AT_BAR]
    blank = _accuracy(demo, at_bar, images=[Image.new("RGB", e.image.size, BACKGROUND) for e in at_bar])
    for task in TASKS_AT_BAR:
        assert binom.cdf(round(full[task] * PER_TASK), PER_TASK, 0.95) >= 0.05 / len(TASK_TYPES), (task, full)
        assert blank[task] <= full[task] - 0.3, (task, full, blank)


@needs_model
def test_the_oracle_keeps_what_random_selection_loses_at_keep_0_11(demo):
    """The issue's go/no-go bar, on the two tasks it names: routing every layer at keep 0.11, the oracle keeps at
    least 85% of full accuracy and random selection at most 60%."""
    examples = held_out(PER_TASK, BLOCK, ("lookup", "reading"))
    full = _accuracy(demo, examples)
    oracle = _accuracy(demo, examples, policy=OraclePolicy())
    random = _accuracy(demo, examples, policy=RandomPolicy(0))
    for task in ("lookup", "reading"):
        assert oracle[task] >= 0.85 * full[task], (task, full, oracle)
        assert random[task] <= 0.6 * full[task], (task, full, random)
