"""Go/no-go table for a trained testbed: held-out accuracy per task at full tokens, per-layer exact-attention oracle
at keep 0.11 and per-layer random at keep 0.11 (every decoder layer routed), with n, 95% Wilson intervals and the
ratio to full; plus, per layer, how often the oracle kept the tokens that hold the answer (chance: the keep ratio).

    python -m alvts.demo.testbed.gonogo /tmp/testbed/run --num-per-task 100 [--tasks lookup,reading]
        [--dense-first 2] [--schedule 0.33,0.09,...]   # also with dense first layers, or one keep ratio per layer
        [--pack PACK]                                   # also a fitted selector pack, under each of those budgets
        [--one-layer]                                   # also the oracle on one layer at a time, the others dense
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ...api import routed
from ...evaluation.harness import generate_answers
from ...evaluation.inputs import prompt_text
from ...evaluation.processor import load_processor
from ...evaluation.report import wilson_interval
from ...evaluation.scoring import normalise
from ...packs import SelectorPack
from ...policies import OraclePolicy, RandomPolicy
from ...routing.policy import LayerInputs
from .. import resolve_model_alias
from ..tasks import EVAL_SEED, Example
from ..tasks.scenes import LOOKUP_GRID, MAX_LOOKUP_GRID
from ..training_data import _digit_centres, centre_token, held_out


@dataclass
class RecordingOracle(OraclePolicy):
    """The oracle, recording each routed layer's top-k visual indices (visual order) at prefill."""

    name = "recording-oracle"
    k: int = 28
    chosen: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        scores = super().scores(inputs)
        visual = scores[inputs.visual].view(scores.shape[0], -1)  # every sample has the same 256 visual tokens
        self.chosen.setdefault(inputs.layer_idx, []).append(visual.topk(self.k, dim=1).indices)
        return scores


def answer_tokens(example: Example) -> list[int]:
    """Visual tokens (raster index) that hold the answer: the asked shape's centre, every digit's centre, or every
    counted shape's centre; none for existence and relation (no single token holds their answer)."""
    size = example.image.size[0]
    if example.task == "reading":
        return [centre_token(point, size) for point in _digit_centres(example.scene)]
    if example.task == "lookup":
        query = example.scene["query"]
        obj = next(o for o in example.scene["objects"] if (o["row"], o["col"]) == (query["row"], query["col"]))
        return [centre_token(obj["centre"], size)]
    if example.task == "counting":
        colour = example.scene["query"]["colour"]
        return [centre_token(o["centre"], size) for o in example.scene["objects"] if o["colour"] == colour]
    return []


def answer_recall(oracle: RecordingOracle, examples: list[Example], tasks: tuple[str, ...]) -> dict[str, list]:
    """Per task with answer tokens, per routed layer: the mean share of each question's answer tokens that the
    oracle kept at prefill."""
    recall: dict = {task: [] for task in tasks if any(answer_tokens(e) for e in examples if e.task == task)}
    for layer in sorted(oracle.chosen):
        chosen = torch.cat(oracle.chosen[layer])
        for task in recall:
            kept = [
                sum(t in set(chosen[i].tolist()) for t in answer_tokens(e)) / len(answer_tokens(e))
                for i, e in enumerate(examples)
                if e.task == task and answer_tokens(e)
            ]
            recall[task].append(round(sum(kept) / len(kept), 3))
    return recall


def kept_per_layer(model, processor, keep: float) -> int:
    """Visual tokens a layer keeps at `keep`: the floor of that share of one image's tokens, at least one."""
    visual = (processor.image_processor.crop_size["height"] // model.config.vision_config.patch_size) ** 2
    return max(1, math.floor(keep * visual))


def run(
    model_path: str,
    tasks: tuple[str, ...],
    num_per_task: int,
    keep: float,
    batch_size: int,
    dense_first: int = 0,
    schedule: list[float] | None = None,
    pack: str | None = None,
    one_layer: bool = False,
    lookup_grid: int = LOOKUP_GRID,
) -> dict:
    """Accuracy per task and condition, the oracle's per-layer recall of the answer tokens and the visual tokens'
    norm at each decoder layer's input; with dense_first, also oracle and random with that many dense first layers;
    with a schedule (one keep ratio per decoder layer), also oracle and random under it; with a selector pack, also
    the pack under each budget; with one_layer, also the oracle at keep on one layer at a time, every other dense.
    Lookups are asked on `lookup_grid` x `lookup_grid` grids."""
    layers = AutoConfig.from_pretrained(model_path).text_config.num_hidden_layers
    if schedule and len(schedule) != layers:
        raise ValueError(
            f"--schedule has {len(schedule)} keep ratios but the model has {layers} decoder layers: give one per layer"
        )
    selectors = SelectorPack.from_pretrained(pack) if pack else None
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, EVAL_SEED, tasks, lookup_grid)
    images, questions = [e.image for e in examples], [e.question for e in examples]
    oracle = RecordingOracle(k=kept_per_layer(model, processor, keep))
    t2v_oracle = RecordingOracle(k=oracle.k, score="t2v")
    conditions = {
        "full": None, f"oracle@{keep}": (oracle, keep), f"oracle t2v@{keep}": (t2v_oracle, keep),
        f"random@{keep}": (RandomPolicy(0), keep),
    }  # fmt: skip
    budgets = {f"@{keep}": keep}
    if dense_first:
        budgets[f" d{dense_first}"] = [1.0] * dense_first + [keep] * (layers - dense_first)
    if schedule:
        budgets[f" sched {sum(schedule) / len(schedule):.2f}"] = schedule
    for suffix, budget in list(budgets.items())[1:]:
        conditions |= {f"oracle{suffix}": (OraclePolicy(), budget), f"random{suffix}": (RandomPolicy(0), budget)}
    if selectors is not None:
        conditions |= {f"pack{suffix}": (selectors, budget) for suffix, budget in budgets.items()}
    for layer in range(layers) if one_layer else ():
        alone = [keep if i == layer else 1.0 for i in range(layers)]
        conditions[f"oracle L{layer} only"] = (OraclePolicy(), alone)
    table: dict = {
        "model": model_path, "num_per_task": num_per_task, "keep": keep, "schedule": schedule, "pack": pack,
        "lookup_grid": lookup_grid, "rows": {},
    }  # fmt: skip
    for name, condition in conditions.items():
        started = time.perf_counter()
        with torch.no_grad(), routed(model, *condition) if condition is not None else torch.no_grad():
            predictions = generate_answers(model, processor, images, questions, batch_size)
        row = {}
        for task in tasks:
            hits = [normalise(p) == normalise(e.answer) for p, e in zip(predictions, examples, strict=True)
                    if e.task == task]  # fmt: skip
            accuracy = sum(hits) / len(hits)
            row[task] = {"acc": accuracy, "n": len(hits), "ci": wilson_interval(accuracy, len(hits))}
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["samples"] = [p for p, _ in zip(predictions, range(6), strict=False)]
        table["rows"][name] = row
        print(name, json.dumps(row), flush=True)
    table["answer_token_recall_by_layer"] = answer_recall(oracle, examples, tasks)
    table["answer_token_recall_by_layer_t2v"] = answer_recall(t2v_oracle, examples, tasks)
    layers = sorted(oracle.chosen)
    sets = {layer: torch.cat(oracle.chosen[layer]) for layer in layers}
    jaccard = []
    for a, b in zip(layers, layers[4:], strict=False):
        pairs = [(set(x.tolist()), set(y.tolist())) for x, y in zip(sets[a], sets[b], strict=True)]
        jaccard.append(round(sum(len(x & y) / len(x | y) for x, y in pairs) / len(pairs), 3))
    table["jaccard_l_l_plus_4"] = jaccard
    inputs = processor(
        images=images[:10], text=[prompt_text(processor, q) for q in questions[:10]], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    image = inputs["input_ids"] == model.config.image_token_id
    table["visual_norm_by_layer_input"] = [round(h[image].norm(dim=-1).mean().item(), 1) for h in states]
    return table


def testbed_parser(
    doc: str, num_per_task: int, threads: int = 2, selection: bool = True, lookup_grid: bool = False
) -> argparse.ArgumentParser:
    """The arguments every testbed measurement takes: a model folder, questions per task, CPU threads and where to
    write the JSON; with `selection`, also the tasks and the keep ratio (a measurement at full tokens takes neither);
    with `lookup_grid`, also the side of the lookup grids asked."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=resolve_model_alias, help='a model folder, or "demo" for the shipped one')
    parser.add_argument("--num-per-task", type=int, default=num_per_task)
    if selection:
        parser.add_argument("--tasks", type=lambda text: tuple(text.split(",")), default=("lookup", "reading"))
        parser.add_argument("--keep", type=float, default=0.11)
    if lookup_grid:
        parser.add_argument(
            "--lookup-grid", type=int, choices=range(1, MAX_LOOKUP_GRID + 1), default=LOOKUP_GRID, help="a grid's side"
        )
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--json", help="also write the result here")
    return parser


def write_json(path: str | None, result: dict) -> None:
    """Write a measurement's result where `--json` says, if it says."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def print_table(table: dict, tasks: tuple[str, ...]) -> None:
    """One line per condition and task: accuracy, n, Wilson interval, ratio to full."""
    full = table["rows"]["full"]
    print(f"{'condition':<18}{'task':<10}{'acc':>6}{'n':>5}{'95% Wilson':>16}{'/ full':>8}")
    for name, row in table["rows"].items():
        for task in tasks:
            cell = row[task]
            ratio = cell["acc"] / full[task]["acc"] if full[task]["acc"] else float("nan")
            lo, hi = cell["ci"]
            print(f"{name:<18}{task:<10}{cell['acc']:>6.2f}{cell['n']:>5}   [{lo:.2f}, {hi:.2f}]{ratio:>8.2f}")
    for task, values in table["answer_token_recall_by_layer"].items():
        print(f"oracle recall of {task} answer tokens by layer (chance {table['keep']}): {values}")
    for task, values in table["answer_token_recall_by_layer_t2v"].items():
        print(f"t2v oracle recall of {task} answer tokens by layer: {values}")
    print(f"oracle Jaccard layer l vs l+4 (mean over questions): {table['jaccard_l_l_plus_4']}")
    print(f"visual tokens' mean norm at each layer's input (full tokens): {table['visual_norm_by_layer_input']}")


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = testbed_parser(__doc__, num_per_task=100, lookup_grid=True)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--dense-first", type=int, default=0, help="also route with this many dense first layers")
    parser.add_argument(
        "--schedule",
        type=lambda text: [float(k) for k in text.split(",")],
        help="also route with these keep ratios, one per decoder layer (e.g. layer 0 kept wider at the same mean)",
    )
    parser.add_argument("--pack", help="also route with this selector pack (folder) under each budget")
    parser.add_argument("--one-layer", action="store_true", help="also the oracle on one layer at a time")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    table = run(
        args.model, args.tasks, args.num_per_task, args.keep, args.batch_size,
        dense_first=args.dense_first, schedule=args.schedule, pack=args.pack, one_layer=args.one_layer,
        lookup_grid=args.lookup_grid,
    )  # fmt: skip
    print_table(table, args.tasks)
    write_json(args.json, table)


if __name__ == "__main__":
    main()
