"""The go/no-go table's recall of answer tokens, from an oracle's recorded choices; the testbed commands' flags."""

import json

import pytest
import torch

from alvts.demo import DEMO_MODEL_PATH
from alvts.demo.tasks import EVAL_SEED
from alvts.demo.testbed import gonogo
from alvts.demo.testbed.gonogo import RecordingOracle, answer_recall, answer_tokens, write_json
from alvts.demo.training_data import held_out


def test_answer_recall_is_the_share_of_answer_tokens_each_layer_kept():
    """Two reading questions: layer 0 keeps every digit of both, layer 1 the first digit of the first and none of the
    second's, so its recall is (1 / digits + 0) / 2; existence has no answer tokens and no row."""
    examples = held_out(2, EVAL_SEED, ("reading", "existence"))
    reading = [e for e in examples if e.task == "reading"]
    digits = [answer_tokens(e) for e in reading]
    spare = [t for t in range(256) if t not in {*digits[0], *digits[1]}]
    width = max(map(len, digits)) + 1

    def row(kept: list[int]) -> list[int]:
        return kept + spare[: width - len(kept)]

    oracle = RecordingOracle(k=width)
    # rows follow the examples' order: reading, existence, reading, existence
    oracle.chosen = {
        0: [torch.tensor([row(digits[0]), row([]), row(digits[1]), row([])])],
        1: [torch.tensor([row(digits[0][:1]), row([]), row([]), row([])])],
    }
    recall = answer_recall(oracle, examples, ("reading", "existence"))
    assert list(recall) == ["reading"]
    assert recall["reading"] == [1.0, round((1 / len(digits[0]) + 0) / 2, 3)]


def test_a_full_token_measurement_refuses_selection_flags_it_would_ignore(capsys):
    """`readout` measures at full tokens on its own tasks: `--keep` and `--tasks` are errors there, not silently
    dropped; the selection commands take them, and each command keeps its own default thread count."""
    full_tokens = gonogo.testbed_parser("", num_per_task=10, selection=False)
    for flag, value in (("--keep", "0.2"), ("--tasks", "lookup")):
        with pytest.raises(SystemExit):
            full_tokens.parse_args(["model", flag, value])
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
    args = gonogo.testbed_parser("", num_per_task=10, threads=1).parse_args(
        ["model", "--keep", "0.2", "--json", "out.json"]
    )
    assert (args.keep, args.tasks, args.threads, args.json) == (0.2, ("lookup", "reading"), 1, "out.json")


def test_the_testbed_commands_take_the_demo_alias():
    """The alias "demo" names the packaged model folder, as in alvts-calibrate and alvts-eval; a path stays as given."""
    parser = gonogo.testbed_parser("", num_per_task=10)
    assert parser.parse_args(["demo"]).model == str(DEMO_MODEL_PATH)
    assert parser.parse_args(["runs/g26"]).model == "runs/g26"


def test_write_json_round_trips(tmp_path):
    write_json(str(tmp_path / "out.json"), {"a": [1, 2]})
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": [1, 2]}
