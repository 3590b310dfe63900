"""`alvts-eval` end to end on a small random Qwen2.5-VL with a fitted pack (valid JSON and a PNG), and its refusals of
bad methods, budgets, packs and data before any model work."""

import json
import re

import pytest
from conftest import exit_message

import alvts
import alvts.api
import alvts.cli.evaluate as cli
import alvts.evaluation.report
from alvts.calibration import CalibrationConfig, calibrate
from alvts.cli.common import load_checked_config, load_model_and_processor
from alvts.cli.evaluate import BASELINES
from alvts.demo.rows import suite_calibration_rows
from alvts.evaluation.inputs import encode_example
from alvts.evaluation.report import format_table
from alvts.options import settings_of
from alvts.policies import POLICIES

ROW_KEYS = {
    "task",
    "method",
    "keep",
    "effective_keep",
    "accuracy",
    "retained",
    "agreement",
    "visual_tokens_per_layer",
    "flops_ratio",
    "n",
}


def _load(folder):
    path = str(folder)
    return load_model_and_processor(path, path, load_checked_config(path, path), "cpu", "fp32")


def _fit_pack(folder, out, **settings):
    """A small pack for the random-weight Qwen folder, fitted on 4 task-suite prompts."""
    model, processor = _load(folder)
    samples = [encode_example(processor, image, text) for image, text in suite_calibration_rows(4)]
    calibrate(model, samples, CalibrationConfig(rank=4, stage_b_steps=3, **settings), out, base_model=str(folder))
    return out


@pytest.fixture(scope="module")
def pack_folder(qwen_folder, tmp_path_factory):
    return _fit_pack(qwen_folder, tmp_path_factory.mktemp("pack"))


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
    assert report["pack"]["source"] == str(pack_folder) and report["pack"]["rank"] == 4
    assert report["pack"]["layers"] == [0, 1, 2, 3] and len(report["pack"]["fingerprint"]) == 64


@pytest.fixture(scope="module")
def partial_pack(qwen_folder, tmp_path_factory):
    """A pack fitted on layers 0-1 only (`alvts-calibrate --layers 0-1`)."""
    return _fit_pack(qwen_folder, tmp_path_factory.mktemp("partial"), layers=[0, 1])


def test_a_partial_pack_scores_at_every_keep_with_its_uncovered_layers_dense(qwen_folder, partial_pack, tmp_path):
    argv = ["--model", str(qwen_folder), "--pack", str(partial_pack), "--keep", "0.25", "--tasks", "lookup",
            "--num-samples", "2", "--max-new-tokens", "2", "--methods", "alvts,alvts-once,alvts:uncovered=oracle",
            "--json", str(tmp_path / "out.json")]  # fmt: skip
    cli.main(argv)
    rows = {row["method"]: row for row in json.loads((tmp_path / "out.json").read_text())["rows"]}
    # layers 0-1 keep a quarter, layers 2-3 (not in the pack) every token: 0.625 of the visual tokens on average
    assert rows["alvts"]["effective_keep"] == pytest.approx((2 * 0.25 + 2 * 1.0) / 4)
    assert rows["alvts"]["visual_fraction"] == pytest.approx(0.625, abs=2 / 256)
    assert rows["alvts-once"]["visual_fraction"] == pytest.approx(0.625, abs=2 / 256)
    assert rows["alvts:uncovered=oracle"]["visual_fraction"] == pytest.approx(0.25, abs=2 / 256)
    # the same schedule through the Python API
    model, _ = _load(qwen_folder)
    schedule = alvts.api.plan_budget(alvts.resolve_policy(str(partial_pack), model), 4, 0.25)
    assert schedule.ratios == (0.25, 0.25, 1.0, 1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "0"], r"--keep must be a number in \(0, 1\], got '0'"),
        (["--keep", "0.1", "1.5"], r"--keep must be a number in \(0, 1\], got '1.5'"),
        (["--keep", "half"], r"--keep must be a number in \(0, 1\], got 'half'"),
        (["--methods", "fastv,bogus"], "unknown method 'bogus'; known: full, random, oracle"),
        (["--methods", "fastv:depth=3"], r"method 'fastv' has no option 'depth'; its options: k \(an integer >= 0\)"),
        (["--methods", "fastv:k"], "bad option 'k' in method 'fastv:k': write fastv:KEY=VALUE"),
        (["--methods", "alvts:rank=3", "--pack", "p"], "method 'alvts' takes one option, uncovered=POLICY"),
        (["--methods", "alvts:uncovered=bogus", "--pack", "p"], "Unknown policy 'bogus'"),
        (["--methods", "alvts"], "method 'alvts' is the selector pack: pass --pack"),
        (["--methods", "full"], "--methods names no method besides the full model"),
        (["--pack", "/nowhere/pack"], "cannot load the selector pack '/nowhere/pack'"),
        (["--num-samples", "0"], "argument --num-samples: must be an integer >= 1, got '0'"),
        (["--batch-size", "x"], "argument --batch-size: must be an integer >= 1, got 'x'"),
    ],
)
def test_bad_methods_and_budgets_are_refused_before_model_work(argv, message, capsys, no_model):
    err = exit_message(capsys, cli.main, ["--model", "org/model", *argv])
    assert re.search(message, err), err


def test_missing_plotting_is_refused_before_model_work(capsys, no_model, monkeypatch):
    def no_matplotlib():
        raise ImportError("Plotting needs matplotlib: pip install 'alvts[plot]'")

    monkeypatch.setattr(alvts.evaluation.report, "check_plotting", no_matplotlib)
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
    assert repr(once["oracle-once"]) == "SelectOncePolicy(OraclePolicy(chunk_size=512, score='v2v*t2v'))"
    assert once["alvts-once"] == cli.PackMethod(once=True)
    assert cli.parse_methods("alvts:uncovered=oracle", "p", 0)["alvts:uncovered=oracle"].uncovered == "oracle"


def _bad_values(spec):
    """For one declared option: a value of the wrong type and one out of its range (None where it has none)."""
    wrong_type = "abc" if spec.kind in (int, float) else None
    if spec.choices is not None:
        return [wrong_type, "no-such-choice"]
    if spec.kind is int:
        return [wrong_type, "1.5", str(int(spec.low) - 1) if spec.low is not None else None]
    return [wrong_type]


OPTION_CASES = [
    (name, key, value)
    for name in POLICIES
    for key, spec in settings_of(POLICIES[name]).items()
    for value in _bad_values(spec)
    if value is not None
]


@pytest.mark.parametrize(("name", "key", "value"), OPTION_CASES)
def test_every_bad_option_of_every_policy_exits_2_before_any_model_work(name, key, value, capsys, no_model):
    err = exit_message(capsys, cli.main, ["--model", "org/model", "--methods", f"{name}:{key}={value}"])
    assert f"method {name!r}: {key} must be " in err and repr(value) in err
    assert "Traceback" not in err


def test_the_options_cases_cover_every_option_of_every_policy():
    options = {(name, key) for name in POLICIES for key in settings_of(POLICIES[name])}
    assert options == {(name, key) for name, key, _ in OPTION_CASES}
    assert {"fastv", "pdrop", "v2drop", "random", "random-dense", "oracle"} <= {name for name, _ in options}


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("v2drop:dense_layers=10", r"v2drop:dense_layers=10 keeps every layer of this 4-layer decoder dense"),
        ("fastv:k=4", r"fastv:k=4 keeps every layer of this 4-layer decoder dense"),
        ("random-dense:dense_layers=4", "random-dense:dense_layers=4 keeps every layer"),
        ("pdrop:stages=5", r"pdrop:stages=5 needs at least as many layers; this decoder has 4"),
    ],
)
def test_options_the_model_cannot_take_exit_2_before_its_weights_load(
    qwen_folder, method, message, capsys, monkeypatch
):
    monkeypatch.setattr(cli, "load_model_and_processor", lambda *a, **k: pytest.fail("weights loaded"))
    err = exit_message(capsys, cli.main, ["--model", str(qwen_folder), "--methods", method])
    assert re.search(message, err), err
