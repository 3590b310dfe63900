"""The lmms-eval wrapper against a stand-in for lmms-eval's documented interface (lmms-eval itself needs torchvision,
which has no CPU build here): the entry point resolves, the base model answers routed, and what the evaluator sets
on the model reaches the base. The same checks were run by hand against lmms-eval 0.7.3 (see issue 7's note)."""

import importlib
import sys
from importlib.metadata import entry_points

import pytest

import alvts
from alvts.demo.tasks import make_example
from alvts.evaluation.harness import generate_answers
from alvts.evaluation.processor import load_processor

STUB = {
    "lmms_eval/__init__.py": "",
    "lmms_eval/api/__init__.py": "",
    "lmms_eval/api/model.py": """
class lmms:
    is_simple = True

    def __init__(self):
        self._rank, self._world_size, self.cache_hook, self.task_dict = 0, 1, None, {}

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size
""",
    "lmms_eval/models/registry_v2.py": """
from dataclasses import dataclass

@dataclass(frozen=True)
class ModelManifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
""",
    "lmms_eval/models/__init__.py": '''
from transformers import AutoModelForImageTextToText
from alvts.evaluation.harness import generate_answers
from alvts.evaluation.processor import load_processor
from lmms_eval.api.model import lmms


class StubVLM(lmms):
    """Like lmms-eval's simple HF models: loads `pretrained`, reads each request's image through task_dict."""

    def __init__(self, pretrained):
        super().__init__()
        self._model = AutoModelForImageTextToText.from_pretrained(pretrained).eval()
        self.processor = load_processor(pretrained)
        self._rank, self._world_size = 3, 8

    @property
    def model(self):
        return self._model

    def generate_until(self, requests):
        args = [r.args for r in requests]
        images = [to_visual(self.task_dict[task][split][doc])[0] for _, _, to_visual, doc, task, split in args]
        return generate_answers(self.model, self.processor, images, [a[0] for a in args], max_new_tokens=3)


class StubChatVLM(StubVLM):
    is_simple = False


def get_model(name, force_simple=False):
    if name != "stub_vlm":
        raise ValueError(f"Model {name!r} not found")
    return StubVLM if force_simple else StubChatVLM
''',
}


class Request:
    def __init__(self, question, doc_id):
        self.args = (question, {"max_new_tokens": 3}, lambda doc: [doc["image"]], doc_id, "suite", "test")


@pytest.fixture
def lmms_eval_stub(tmp_path, monkeypatch):
    for path, text in STUB.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("alvts.integrations.lmms_eval")
    for name in [n for n in sys.modules if n.startswith(("lmms_eval", "alvts.integrations.lmms_eval"))]:
        del sys.modules[name]


def test_entry_point_names_both_kinds_of_wrapper(lmms_eval_stub):
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "alvts"]
    manifest = entry.load()()
    assert manifest.model_id == "alvts"
    for path, is_simple in ((manifest.simple_class_path, True), (manifest.chat_class_path, False)):
        module, name = path.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name).is_simple is is_simple


def test_base_model_answers_routed_and_sees_what_the_evaluator_sets(lmms_eval_stub, qwen_folder):
    examples = [make_example("lookup", 3), make_example("counting", 4)]
    docs = {"suite": {"test": {i: {"image": e.image} for i, e in enumerate(examples)}}}
    requests = [Request(e.question, i) for i, e in enumerate(examples)]
    model = lmms_eval_stub.RoutedSimpleLMM(base="stub_vlm", pretrained=str(qwen_folder), policy="oracle", keep="0.25")
    model.task_dict = docs
    assert model.base.task_dict is docs and (model.rank, model.world_size) == (3, 8)
    answers = model.generate_until(requests)
    assert alvts.routing_state(model.model).visual_kept().tolist() == [[64, 64]] * 4  # floor(0.25 * 256) per layer
    processor = load_processor(qwen_folder)
    with alvts.routed(model.base.model.__class__.from_pretrained(qwen_folder).eval(), "oracle", keep=0.25) as same:
        expected = generate_answers(same, processor, [e.image for e in examples], [e.question for e in examples], 16, 3)
    assert answers == expected
    chat = lmms_eval_stub.RoutedChatLMM(base="stub_vlm", pretrained=str(qwen_folder), policy="full")
    assert type(chat.base).__name__ == "StubChatVLM" and alvts.get_router(chat.model) is not None


def test_model_args_need_exactly_one_of_pack_and_policy(lmms_eval_stub, qwen_folder):
    for extra in ({}, {"pack": "org/pack", "policy": "oracle"}):
        with pytest.raises(ValueError, match="add pack=PATH_OR_HUB_ID or policy=NAME"):
            lmms_eval_stub.RoutedSimpleLMM(base="stub_vlm", pretrained=str(qwen_folder), **extra)
