"""`alvts-calibrate` end to end on a small random Qwen2.5-VL (the demo model's architecture and processor), and its
refusals: bad arguments, unusable data before any model is loaded, weights that are neither local nor downloadable."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import exit_message
from transformers import AutoModelForImageTextToText

import alvts
import alvts.cli.calibrate as cli
import alvts.routing.adapters
from alvts.calibration.config import parse_layers
from alvts.cli.recipes import RECIPES_ENV
from alvts.demo import DEMO_MODEL_PATH
from alvts.demo.tasks import TASK_TYPES, make_example
from alvts.evaluation.inputs import encode_example
from alvts.evaluation.processor import load_processor

FAST = ["--rank", "4", "--num-samples", "4", "--stage-b-steps", "5"]
# One thread: on a busy machine, thread contention makes the fit many times slower.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(cli, "load_model_and_processor", refuse)


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alvts.cli.calibrate", *args]
    return subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("model", ["fixture", "demo"])
def test_subprocess_run_writes_a_pack_that_routes_generation(qwen_folder, tmp_path, model):
    if model == "demo" and not (DEMO_MODEL_PATH / "config.json").is_file():
        pytest.skip("the packaged demo model is not built yet")
    path = qwen_folder if model == "fixture" else DEMO_MODEL_PATH
    out = tmp_path / "pack"
    result = _cli("--model", str(path) if model == "fixture" else "demo", *FAST, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "selector_config.json").is_file() and (out / "selectors.safetensors").is_file()
    assert "recall@0.111 stage A" in result.stdout and f"Saved the selector pack to {out}" in result.stdout
    pack = alvts.SelectorPack.from_pretrained(out)
    loaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert pack.config.rank == 4 and pack.config.layers == list(range(loaded.config.text_config.num_hidden_layers))
    assert pack.config.dataset == {
        "name": "alvts.demo.tasks", "split": "train", "image_column": "image", "text_column": "question",
        "num_samples": 4, "seed": 0,
    }  # fmt: skip

    example = make_example(TASK_TYPES[0], 123)
    batch = encode_example(load_processor(str(path)), example.image, example.question)
    alvts.apply(loaded, str(out), keep=0.5)
    with torch.no_grad():
        generated = loaded.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    n = alvts.routing_state(loaded).visual.sum(1)
    assert (alvts.routing_state(loaded).visual_kept() == n // 2).all()
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_recipe_alias_supplies_defaults_and_the_output_folder(qwen_folder, tmp_path, monkeypatch, capsys, one_thread):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.toml").write_text(
        f'model = "{qwen_folder}"\nrank = 4\nnum_samples = 4\nstage_b_steps = 5\nlayers = "0-1"\ndtype = "fp32"\n'
    )
    monkeypatch.setenv(RECIPES_ENV, str(recipes))
    monkeypatch.chdir(tmp_path)
    cli.main(["--model", "tiny", "--rank", "6", "--device", "cpu"])
    out = tmp_path / "selectors" / "tiny-r6"
    pack = alvts.SelectorPack.from_pretrained(out)
    assert pack.config.rank == 6 and pack.config.layers == [0, 1] and pack.config.dataset["num_samples"] == 4
    assert pack.config.base_model == str(qwen_folder)
    assert set(json.loads((out / "selector_config.json").read_text())["metrics"]) == {"0", "1"}
    assert "Saved the selector pack to selectors/tiny-r6" in capsys.readouterr().out
    err = exit_message(capsys, cli.main, ["--model", "tiny", "--rank", "2", "--out", "selectors/tiny-r6"])
    assert "holds a calibration run with other settings" in err


def test_missing_hub_model_exits_2_saying_how_to_get_it(tmp_path):
    result = _cli("--model", "nonexistent-org/nonexistent-model", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nonexistent-org/nonexistent-model" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "hf download nonexistent-org/nonexistent-model" in result.stderr
    assert not (tmp_path / "selectors").exists()


def test_missing_or_unfit_models_exit_2_before_their_weights_load(qwen_folder, tmp_path, capsys, monkeypatch):
    err = exit_message(capsys, cli.main, ["--model", str(tmp_path / "nowhere"), *FAST, "--out", str(tmp_path / "a")])
    assert f"No model folder at {tmp_path / 'nowhere'}. Pass --model a folder written by save_pretrained" in err
    (tmp_path / "empty").mkdir()
    err = exit_message(capsys, cli.main, ["--model", str(tmp_path / "empty"), *FAST, "--out", str(tmp_path / "a")])
    assert f"Cannot load '{tmp_path / 'empty'}' as an image-text-to-text model" in err and "config.json" in err
    (tmp_path / "empty" / "config.json").write_bytes((qwen_folder / "config.json").read_bytes())  # no weights
    err = exit_message(capsys, cli.main, ["--model", str(tmp_path / "empty"), *FAST, "--out", str(tmp_path / "a")])
    assert f"Cannot load the model in {tmp_path / 'empty'}" in err and "save_pretrained" in err
    err = exit_message(
        capsys, cli.main, ["--model", str(qwen_folder), *FAST, "--layers", "2-4", "--out", str(tmp_path / "b")]
    )
    assert f"--layers asks for layer 4; {qwen_folder} has layers 0-3" in err
    monkeypatch.setattr(alvts.routing.adapters, "ADAPTERS", {})
    err = exit_message(capsys, cli.main, ["--model", str(qwen_folder), *FAST, "--out", str(tmp_path / "c")])
    assert f"alvts does not support '{qwen_folder}' (model_type 'qwen2_5_vl')" in err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_refused_family_exits_2_saying_why_before_its_weights_load(tmp_path, capsys):
    from alvts.routing.adapters.gemma3 import REASON
    from alvts.testing import tiny_model

    tiny_model("gemma3").config.save_pretrained(tmp_path / "gemma3")  # a config, no weights
    err = exit_message(capsys, cli.main, ["--model", str(tmp_path / "gemma3"), *FAST, "--out", str(tmp_path / "a")])
    assert f"alvts does not route '{tmp_path / 'gemma3'}' (model_type 'gemma3'): {REASON}" in err
    assert not (tmp_path / "a").exists()


def test_data_without_the_named_columns_is_refused_before_the_model(qwen_folder, tmp_path, capsys, no_model):
    (tmp_path / "data.jsonl").write_text('{"picture": "a.png", "prompt": "What?"}\n' * 3)
    err = exit_message(
        capsys, cli.main, ["--model", str(qwen_folder), *FAST, "--dataset", str(tmp_path / "data.jsonl")]
    )
    assert "no column 'image' or 'question'" in err and "['picture', 'prompt']" in err and "--image-column" in err


def test_data_with_an_empty_image_column_is_refused_before_the_model(qwen_folder, tmp_path, capsys, no_model):
    (tmp_path / "data.jsonl").write_text('{"image": null, "question": "What?"}\n' * 3)
    err = exit_message(
        capsys, cli.main, ["--model", str(qwen_folder), *FAST, "--dataset", str(tmp_path / "data.jsonl")]
    )
    assert "has no image in column 'image'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rank", "0"], "--rank must be an integer >= 1, got '0'"),
        (["--rank", "-3"], "--rank must be an integer >= 1"),
        (["--rank", "2.5"], "--rank must be an integer >= 1, got '2.5'"),
        (["--rank", "4", "--num-samples", "1"], "--num-samples must be an integer >= 2"),
        (["--stage-b-steps", "-1"], "--stage-b-steps must be an integer >= 0"),
        (["--init", "random"], "--init must be one of 'whitened', 'svd', got 'random'"),
        (["--score", "t2v*v2v"], r"--score must be one of 'v2v\*t2v', 't2v', 'v2v'"),
        (["--loss", "l1"], r"--loss must be one of 'mse\+kl', 'mse'"),
        (["--rank", "4", "--layers", "3-1"], "invalid layer spec '3-1'"),
        (["--rank", "4", "--layers", "first"], "invalid layer spec 'first'"),
        (["--rank", "4", "--default-keep", "1.5"], r"--default-keep must be a number in \(0, 1\]"),
        (["--rank", "4", "--dtype", "int8"], "--dtype must be one of 'bf16', 'fp16', 'fp32', got 'int8'"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys, no_model):
    err = exit_message(capsys, cli.main, ["--model", "org/model", *argv])
    assert "usage: alvts-calibrate" in err
    assert re.search(message, err), err


def test_bad_recipe_values_and_push_without_login_are_refused(tmp_path, monkeypatch, capsys, no_model):
    (tmp_path / "bad.toml").write_text('model = "org/model"\nrank = 4\ndtype = "bfloat16"\n')
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path))
    assert "dtype must be one of 'bf16', 'fp16', 'fp32', got 'bfloat16'" in exit_message(
        capsys, cli.main, ["--model", "bad"]
    )
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    err = exit_message(capsys, cli.main, ["--model", "org/model", "--rank", "4", "--push-to-hub", "me/pack"])
    assert "--push-to-hub needs a Hugging Face login" in err


@pytest.mark.parametrize(
    ("spec", "layers"),
    [("all", None), ("0-3,6", [0, 1, 2, 3, 6]), (" 2 , 0-1", [0, 1, 2]), ("5", [5]), ("1-1,1", [1])],
)
def test_layer_specs(spec, layers):
    assert parse_layers(spec) == layers


def test_default_output_folder_names_the_model_and_rank(monkeypatch):
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    assert cli.parse_args(["--model", "org/Some-VLM", "--rank", "8"]).out == Path("selectors/Some-VLM-r8")
    args = cli.parse_args(["--model", "qwen2.5-vl", "--stage-b-steps", "7", "--out", "x"])
    assert (args.model, args.config.rank, args.config.stage_b_steps, args.dtype) == (
        "Qwen/Qwen2.5-VL-7B-Instruct",
        32,
        7,
        "bf16",
    )
    assert cli.parse_args(["--model", "llava-1.5"]).out == Path("selectors/llava-1.5-r32")
