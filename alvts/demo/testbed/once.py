"""What select-once keeps: a selector pack routed at one keep ratio on every layer, per layer and selected once
(`SelectOncePolicy`), with each routed layer's top k recorded at prefill. Per task, the share of each question's grid
shape centres, and of the centre tokens its answer needs (relation: the anchor's and the answer's; lookup: the asked
cell's), that each layer keeps, and both policies' accuracy. Layer 0's choice is what select-once keeps everywhere, so
where it already holds every centre, selecting per layer has nothing to add.

    python -m alvts.demo.testbed.once demo --pack alvts/demo/pack --tasks relation,lookup --num-per-task 200
"""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText

from ...api import resolve_policy, routed
from ...evaluation.harness import generate_answers
from ...evaluation.processor import load_processor
from ...evaluation.report import wilson_interval
from ...evaluation.scoring import accuracy_by_task
from ...policies.baselines import SelectOncePolicy
from ...routing.policy import LayerInputs, Policy
from ..tasks import EVAL_SEED, Example
from ..tasks.geometry import nearest_in_direction
from ..tasks.scenes import LOOKUP_GRID
from ..training_data import centre_token, held_out
from .gonogo import kept_per_layer, testbed_parser, write_json

TASKS = ("relation", "lookup")  # the tasks whose answers live in grid shape centres


def needed_tokens(example: Example) -> dict[str, int]:
    """The centre tokens (raster index) that a relation answer needs, {"anchor", "answer"}; a lookup one, {"answer"}."""
    objects, query, size = example.scene["objects"], example.scene["query"], example.image.size[0]
    if example.task == "lookup":
        asked = next(o for o in objects if (o["row"], o["col"]) == (query["row"], query["col"]))
        return {"answer": centre_token(asked["centre"], size)}
    answer = nearest_in_direction([o["centre"] for o in objects], query["anchor"], query["direction"])
    anchor = query["anchor"]
    return {
        "anchor": centre_token(objects[anchor]["centre"], size),
        "answer": centre_token(objects[answer]["centre"], size),
    }


def record_top_k(policy: Policy, k: int) -> dict[int, list[torch.Tensor]]:
    """Make `policy` record, at every call of its `scores`, the top `k` visual tokens of each sample (visual order)
    under the routed layer's index; returns the record, filled as the policy routes."""
    chosen: dict[int, list[torch.Tensor]] = {}
    scores = policy.scores

    def recording(inputs: LayerInputs) -> torch.Tensor:
        result = scores(inputs)
        visual = result[inputs.visual].view(result.shape[0], -1)  # every sample has the same visual tokens
        chosen.setdefault(inputs.layer_idx, []).append(visual.topk(k, dim=1).indices)
        return result

    policy.scores = recording
    return chosen


def kept_shares(chosen: dict[int, list[torch.Tensor]], examples: list[Example]) -> dict[str, dict[str, list[float]]]:
    """Per task and layer: the mean share of each question's shape centres kept ("centres"), and how often each of
    its `needed_tokens` is kept."""
    sets = [[set(row.tolist()) for row in torch.cat(rows)] for _, rows in sorted(chosen.items())]
    shares: dict = {}
    for task in dict.fromkeys(e.task for e in examples):
        asked = [(i, e) for i, e in enumerate(examples) if e.task == task]
        centres = {i: {centre_token(o["centre"], e.image.size[0]) for o in e.scene["objects"]} for i, e in asked}
        needed = {i: needed_tokens(e) for i, e in asked}
        row = shares.setdefault(task, {})
        for kept in sets:
            row.setdefault("centres", []).append(
                sum(len(c & kept[i]) / len(c) for i, c in centres.items()) / len(asked)
            )
            for name in needed[asked[0][0]]:
                row.setdefault(name, []).append(
                    sum(tokens[name] in kept[i] for i, tokens in needed.items()) / len(asked)
                )
    return {task: {name: [round(v, 3) for v in values] for name, values in row.items()} for task, row in shares.items()}


def run(
    model_path: str,
    pack: str,
    tasks: tuple[str, ...],
    num_per_task: int,
    keep: float,
    batch_size: int,
    lookup_grid: int = LOOKUP_GRID,
) -> dict:
    """Both policies' accuracy and `kept_shares` on the same held-out questions (lookups on `lookup_grid` grids)."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, EVAL_SEED, tasks, lookup_grid)
    k = kept_per_layer(model, processor, keep)
    result: dict = {
        "model": model_path, "pack": pack, "keep": keep, "k": k, "num_per_task": num_per_task,
        "lookup_grid": lookup_grid,
    }  # fmt: skip
    for name, wrap in (("per-layer", lambda policy: policy), ("once", SelectOncePolicy)):
        policy = wrap(resolve_policy(pack, model))
        chosen = record_top_k(policy, k)
        with torch.no_grad(), routed(model, policy, keep):
            predictions = generate_answers(
                model, processor, [e.image for e in examples], [e.question for e in examples], batch_size
            )
        accuracy = accuracy_by_task([e.task for e in examples], [e.answer for e in examples], predictions)
        accuracy = {
            task: {"acc": accuracy[task], "n": num_per_task, "ci": wilson_interval(accuracy[task], num_per_task)}
            for task in tasks
        }
        result[name] = {"accuracy": accuracy, "kept_by_layer": kept_shares(chosen, examples)}
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = testbed_parser(__doc__, num_per_task=100, lookup_grid=True)
    parser.add_argument("--pack", required=True, help="the selector pack (folder) to route with")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.set_defaults(tasks=TASKS)
    args = parser.parse_args(argv)
    if stray := [task for task in args.tasks if task not in TASKS]:
        parser.error(f"--tasks {stray}: only {list(TASKS)} have answers in grid shape centres; drop the others")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = run(args.model, args.pack, args.tasks, args.num_per_task, args.keep, args.batch_size, args.lookup_grid)
    for name in ("per-layer", "once"):
        cells = [
            f"{task} {c['acc']:.3f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"
            for task, c in result[name]["accuracy"].items()
        ]
        print(f"{name}: accuracy (n = {args.num_per_task} per task, 95% Wilson) {', '.join(cells)}")
        for task, row in result[name]["kept_by_layer"].items():
            for what, values in row.items():
                print(f"  {task} {what} kept by layer: {values}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
