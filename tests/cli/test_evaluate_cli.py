"""`alvts-eval` end to end on a small random Qwen2.5-VL with a fitted pack (valid JSON and a PNG), and its refusals of
bad methods, budgets, packs and data before any model work."""

import json
import re

import pytest
from conftest import exit_message

import alvts.cli.evaluate as cli
from alvts.calibration import CalibrationConfig, calibrate
from alvts.cli.common import load_model_and_processor
from alvts.cli.evaluate import BASELINES
from alvts.data import load_calibration_rows
from alvts.inputs import encode_example
from alvts.report import format_table

ROW_KEYS = {
    "task",
    "method",
    "keep",
    "accuracy",
    "retained",
    "agreement",
    "visual_tokens_per_layer",
    "flops_ratio",
    "n",
}


@pytest.fixture(scope="module")
def pack_folder(qwen_folder, tmp_path_factory):
    model, processor = load_model_and_processor(str(qwen_folder), "cpu", "fp32")
    samples = [encode_example(processor, image, text) for image, text in load_calibration_rows(None, num_samples=4)]
    out = tmp_path_factory.mktemp("pack")
    calibrate(model, samples, CalibrationConfig(rank=4, stage_b_steps=3), out, base_model=str(qwen_folder))
    return out


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as reading the model's config."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was touched before the arguments were checked")

    monkeypatch.setattr(cli, "load_checked_config", refuse)
    monkeypatch.setattr(cli, "load_model_and_processor", refuse)


def test_end_to_end_writes_json_and_png(qwen_folder, pack_folder, tmp_path, capsys):
    argv = ["--model", str(qwen_folder), "--pack", str(pack_folder), "--keep", "0.25", "0.6", "--tasks",
            "lookup,counting", "--num-samples", "2", "--batch-size", "3", "--max-new-tokens", "3",
            "--methods", "alvts,oracle,fastv,random", "--json", str(tmp_path / "out.json"), "--plot",
            str(tmp_path / "out.png")]  # fmt: skip
    cli.main(argv)
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["model"] == str(qwen_folder) and set(report["versions"]) >= {"alvts", "torch", "transformers"}
    rows = report["rows"]
    scored = [row for row in rows if "note" not in row]
    assert all(set(row) >= ROW_KEYS for row in scored)
    assert {(r["method"], r["keep"]) for r in scored} == {
        ("full", 1.0),
        *((m, k) for m in ("alvts", "oracle", "random") for k in (0.25, 0.6)),
        ("fastv", 0.6),
    }
    fastv = [row for row in rows if row["method"] == "fastv" and row["keep"] == 0.25]
    assert fastv and all("out of reach" in row["note"] for row in fastv)  # dense in 2 of 4 layers: 0.5 at least
    for row in scored:
        assert row["n"] == (4 if row["task"] == "mean" else 2)
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1
        if row["method"] == "full":
            assert row["agreement"] == 1 and row["flops_ratio"] == 1 and row["visual_fraction"] == 1
        else:  # 256 visual tokens per image: the budget is floor(keep * 256) at every layer, or the staged mean
            assert row["visual_fraction"] == pytest.approx(row["keep"], abs=2 / 256)
            assert row["flops_ratio"] < 1
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_table(rows) in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "0"], r"--keep values must be in \(0, 1\]"),
        (["--keep", "0.1", "1.5"], r"--keep values must be in \(0, 1\].*\[1.5\]"),
        (["--keep", "half"], "invalid float value: 'half'"),
        (["--methods", "fastv,bogus"], "unknown method 'bogus' in --methods"),
        (["--methods", "fastv:depth=3"], "bad option 'depth=3' for method 'fastv'.*KEY one of \\['k'\\]"),
        (["--methods", "alvts"], "method 'alvts' is the selector pack: pass --pack"),
        (["--methods", "full"], "--methods names no method besides the full model"),
        (["--pack", "/nowhere/pack"], "cannot load the selector pack '/nowhere/pack'"),
        (["--num-samples", "0"], "--num-samples, --batch-size and --max-new-tokens must be at least 1"),
    ],
)
def test_bad_methods_and_budgets_are_refused_before_model_work(argv, message, capsys, no_model):
    err = exit_message(capsys, cli.main, ["--model", "org/model", *argv])
    assert re.search(message, err), err


def test_missing_plotting_is_refused_before_model_work(capsys, no_model, monkeypatch):
    def no_matplotlib():
        raise ImportError("Plotting needs matplotlib: pip install 'alvts[plot]'")

    monkeypatch.setattr(cli, "check_plotting", no_matplotlib)
    assert "pip install 'alvts[plot]'" in exit_message(capsys, cli.main, ["--model", "org/model", "--plot", "x.png"])


def test_unknown_tasks_are_refused_before_the_weights_load(qwen_folder, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_model_and_processor", lambda *a, **k: pytest.fail("weights loaded"))
    err = exit_message(capsys, cli.main, ["--model", str(qwen_folder), "--tasks", "lookup,colour"])
    assert "The task suite has no task ['colour']" in err


def test_default_methods_are_the_pack_then_every_baseline():
    assert list(cli.parse_methods(None, "some/pack", 0)) == ["alvts", *BASELINES]
    assert list(cli.parse_methods(None, None, 0)) == list(BASELINES)
    methods = cli.parse_methods("fastv:k=1,random:seed=3,pdrop:stages=2", None, 5)
    assert (methods["fastv:k=1"].k, methods["random:seed=3"].seed, methods["pdrop:stages=2"].stages) == (1, 3, 2)
    assert cli.parse_methods("random", None, 5)["random"].seed == 5
    once = cli.parse_methods("oracle-once,alvts-once", "some/pack", 0)
    assert repr(once["oracle-once"]) == "SelectOncePolicy(OraclePolicy())" and once["alvts-once"] == "alvts-once"
