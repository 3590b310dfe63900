"""The first demo (v1, `alvts/demo/v1`): its Qwen2.5-VL processor, and the trained model the vLLM suite uses loads
offline and answers held-out questions of the tasks it masters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from packaging.version import Version
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from alvts.demo import V1_MODEL_PATH
from alvts.demo.build import build_config, build_processor, build_tokenizer
from alvts.demo.experiments import attention_shares
from alvts.demo.tasks import EVAL_SEED
from alvts.demo.tasks.vocab import BACKGROUND
from alvts.demo.training_data import held_out
from alvts.evaluation.harness import generate_answers
from alvts.evaluation.processor import ImageOnlyQwen2_5_VLProcessor, load_processor
from alvts.evaluation.scoring import accuracy_by_task

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# measured on 100 held-out questions per task (alvts/demo/v1/README.md); counting 0.79 and existence 0.87 fall short,
# and reading since the suite's numbers start in any column (v1 learned them in column 1: it reads 0.04 of them)
TASKS_AT_BAR = ("lookup", "relation")
needs_model = pytest.mark.skipif(
    not (V1_MODEL_PATH / "model.safetensors").is_file(), reason="alvts/demo/v1/model is missing from this checkout"
)


@pytest.fixture(scope="module")
def demo():
    return AutoModelForImageTextToText.from_pretrained(V1_MODEL_PATH).eval(), load_processor(V1_MODEL_PATH)


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(examples_per_task=20))


@pytest.fixture
def saved(processor, tmp_path):
    """A folder holding the demo processor and config, as a checkpoint has them."""
    processor.save_pretrained(tmp_path)
    build_config(processor.tokenizer).save_pretrained(tmp_path)
    return tmp_path


@needs_model
def test_loads_offline_through_the_auto_classes():
    # AutoImageProcessor builds the PIL processor without torchvision from transformers 5.19 (before, it refuses)
    auto_image = is_torchvision_available() or Version(transformers.__version__) >= Version("5.19")
    code = (
        "from transformers import AutoModelForImageTextToText, AutoTokenizer, AutoImageProcessor\n"
        "import alvts, alvts.demo\n"
        "path = alvts.demo.V1_MODEL_PATH\n"
        "print(type(AutoModelForImageTextToText.from_pretrained(path)).__name__)\n"
        "print(type(alvts.load_processor(path)).__name__, len(AutoTokenizer.from_pretrained(path)))\n"
        + ("print(type(AutoImageProcessor.from_pretrained(path)).__name__)\n" if auto_image else "")
    )
    out = subprocess.run([sys.executable, "-c", code], env=OFFLINE, capture_output=True, text=True, check=True)
    lines = out.stdout.split("\n")
    assert lines[0] == "Qwen2_5_VLForConditionalGeneration"
    assert lines[1].split()[0].endswith("Qwen2_5_VLProcessor")
    assert not auto_image or lines[2].startswith("Qwen2VLImageProcessor")


@needs_model
def test_answers_held_out_questions_from_the_image(demo):
    """The tasks v1 masters (`TASKS_AT_BAR`) reach 95% at full tokens on a block used by neither training nor the
    evaluation, and fall with a blank image."""
    model, processor = demo
    examples = held_out(20, EVAL_SEED + 2, TASKS_AT_BAR)
    tasks, answers, questions = [e.task for e in examples], [e.answer for e in examples], [e.question for e in examples]
    images = [e.image for e in examples]
    full = accuracy_by_task(tasks, answers, generate_answers(model, processor, images, questions))
    blanks = [Image.new("RGB", image.size, BACKGROUND) for image in images]
    blank = accuracy_by_task(tasks, answers, generate_answers(model, processor, blanks, questions))
    for task in TASKS_AT_BAR:
        assert full[task] >= 0.95, (task, full)
        assert blank[task] <= full[task] - 0.3, (task, full, blank)


@pytest.mark.parametrize(("size", "grid"), [((448, 448), (1, 32, 32)), ((336, 224), (1, 16, 24))])
def test_processor_turns_an_image_into_the_documented_token_count(processor, size, grid):
    out = processor(
        images=[Image.new("RGB", size)], text=["<|vision_start|><|image_pad|><|vision_end|>hi"], return_tensors="pt"
    )
    tokens = grid[1] * grid[2] // 4  # 14 px patches merged 2 x 2: one token per 28 x 28 pixels
    assert out["image_grid_thw"].tolist() == [list(grid)]
    assert out["pixel_values"].shape == (grid[1] * grid[2], 3 * 2 * 14 * 14)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (out["input_ids"] == image_token_id).sum() == tokens == size[0] * size[1] // 28**2


def test_processor_round_trip(processor, saved):
    assert json.loads((saved / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    example = held_out(1, EVAL_SEED)[0]
    kwargs = {
        "images": [example.image],
        "text": ["<|vision_start|><|image_pad|><|vision_end|>" + example.question],
        "return_tensors": "pt",
    }
    before, after = processor(**kwargs), load_processor(saved)(**kwargs)
    assert before.keys() == after.keys()
    assert all((before[key] == after[key]).all() for key in before)


def test_auto_processor_or_the_image_only_fallback(saved):
    if is_torchvision_available():
        assert type(AutoProcessor.from_pretrained(saved)).__name__ == "Qwen2_5_VLProcessor"
    else:  # transformers 5.23 needs torchvision for any Qwen-VL processor (huggingface/transformers#48558)
        with pytest.raises(ImportError, match="Torchvision"):
            AutoProcessor.from_pretrained(saved)
        assert isinstance(load_processor(saved), ImageOnlyQwen2_5_VLProcessor)


@needs_model
def test_attention_shares_split_the_answer_attention_and_agree_with_greedy_answers(demo):
    """The diagnosis of `python -m alvts.demo.experiments --attention`: its first-token accuracy is generate()'s on
    the same questions, and the sink, asked-for and partial shares are parts of one attention row."""
    model, processor = demo
    shares = attention_shares(str(V1_MODEL_PATH), 6, EVAL_SEED)
    examples = held_out(6, EVAL_SEED, ("counting", "existence"))
    answers = generate_answers(model, processor, [e.image for e in examples], [e.question for e in examples])
    greedy = accuracy_by_task([e.task for e in examples], [e.answer for e in examples], answers)
    for task in ("counting", "existence"):
        rows = [row for group, row in shares.items() if group.startswith(task)]
        assert sum(row["n"] for row in rows) == 6
        assert sum(row["accuracy"] * row["n"] for row in rows) / 6 == pytest.approx(greedy[task])
    for row in shares.values():
        parts = (row["sink"], row["asked-for"], row["partial / other"])
        assert all(0 <= part <= 1 for part in parts) and sum(parts) <= 1 + 1e-5
    negatives = [row for group, row in shares.items() if group.startswith("existence") and "positive" not in group]
    assert negatives and all(row["asked-for"] == 0 for row in negatives)
