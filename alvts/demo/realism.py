"""Does a testbed behave like a real LVLM where token selection is concerned? One command measures what published
analyses of real models report, on any model alvts routes:

- the blank image: accuracy without visual information (real models fall to chance);
- whether layers pick different tokens: the Jaccard overlap of the exact-attention oracle's top-k sets at layer l
  and l + gap (real models: different layers look at different regions), and of two questions about one image at the
  same layer (importance depends on the question), each beside the overlap of two random k-sets;
- where tokens may go missing: accuracy with random selection in only the first, middle or last third of the layers
  (real models: late layers tolerate it).

    python -m alvts.demo.realism --model alvts/demo/model --num-per-task 50
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from ..api import routed
from ..evaluation.harness import generate_answers
from ..evaluation.inputs import encode_example
from ..evaluation.processor import load_processor
from ..evaluation.scoring import accuracy_by_task
from ..policies import RandomPolicy
from ..policies.importance import attention_importance
from ..routing import get_adapter
from . import DEMO_MODEL_PATH, resolve_model_alias
from .tasks import EVAL_SEED, TASK_TYPES, Example
from .tasks.vocab import BACKGROUND
from .training_data import conversation, held_out


@torch.no_grad()
def oracle_sets(model, inputs: dict[str, torch.Tensor], keep: float) -> torch.Tensor:
    """`(layers, N)` bool over the input's N visual tokens, in order: the top `max(1, floor(keep * N))` of each
    layer by the exact-attention importance, in the stock model (every token through every layer) for one
    single-sample input. Indexed by visual token, so two prompts about one image compare token by token."""
    adapter = get_adapter(model)
    layers = adapter.decoder_layers(model)
    visual = adapter.visual_mask(model, inputs)
    valid = inputs.get("attention_mask", torch.ones_like(visual)).bool()
    scores: list[torch.Tensor] = []

    def score(layer, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        normed = adapter.input_norm(layer)(hidden)
        importance = attention_importance(
            adapter.attention(layer), normed, kwargs["position_embeddings"], visual & valid, valid
        )
        scores.append(importance[0])

    handles = [layer.register_forward_pre_hook(score, with_kwargs=True) for layer in layers]
    try:
        model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    visual_scores = torch.stack(scores)[:, visual[0] & valid[0]]
    k = max(1, int(visual_scores.shape[1] * keep + 1e-6))
    top = visual_scores.topk(k, dim=-1).indices
    return torch.zeros_like(visual_scores, dtype=torch.bool).scatter(1, top, True)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two bool sets."""
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


def layer_overlaps(model, processor, examples: Sequence[Example], keep: float, gap: int) -> dict[str, float]:
    """Mean Jaccard overlaps of the oracle's sets: layer l vs l + gap (one question), two questions about one image
    at the same layer, and two random sets of the same size (the floor both are read against)."""
    across, questions, chance = [], [], []
    generator = torch.Generator().manual_seed(0)
    for example in examples:
        turns = conversation(example, 2, random.Random(example.seed))
        sets = [
            oracle_sets(
                model, {k: v.to(model.device) for k, v in encode_example(processor, example.image, q).items()}, keep
            )  # fmt: skip
            for q, _, _ in turns
        ]
        first = sets[0]
        across += [jaccard(first[i], first[i + gap]) for i in range(len(first) - gap)]
        if len(sets) == 2:
            questions += [jaccard(a, b) for a, b in zip(*sets, strict=True)]
        n, k = int(first[0].numel()), int(first[0].sum())
        draws = [torch.zeros(n, dtype=torch.bool).index_fill(0, torch.randperm(n, generator=generator)[:k], True)
                 for _ in range(2)]  # fmt: skip
        chance.append(jaccard(*draws))
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return {
        f"layer l vs l+{gap}": mean(across),
        "two questions, same layer": mean(questions),
        "two random sets": mean(chance),
    }


def thirds(num_layers: int) -> dict[str, list[int]]:
    """The first, middle and last third of the layers (the middle takes what rounding leaves)."""
    third = num_layers // 3
    return {
        "first third": list(range(third)),
        "middle third": list(range(third, num_layers - third)),
        "last third": list(range(num_layers - third, num_layers)),
    }


def run(
    model_path: str, num_per_task: int, keep: float, gap: int, seed: int, batch_size: int,
    tasks: Sequence[str] = TASK_TYPES,
) -> dict:  # fmt: skip
    """The accuracy table (full, blank, random at `keep` in one third of the layers) and the overlaps."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, seed, tasks)
    images = [e.image for e in examples]
    questions, tasks, answers = [e.question for e in examples], [e.task for e in examples], [e.answer for e in examples]
    num_layers = len(get_adapter(model).decoder_layers(model))

    def accuracy(inputs: list[Image.Image], schedule: list[float] | None = None) -> dict[str, float]:
        if schedule is None:
            return accuracy_by_task(tasks, answers, generate_answers(model, processor, inputs, questions, batch_size))
        with routed(model, RandomPolicy(seed), keep=schedule):
            return accuracy_by_task(tasks, answers, generate_answers(model, processor, inputs, questions, batch_size))

    table = {"full": accuracy(images), "blank image": accuracy([Image.new("RGB", i.size, BACKGROUND) for i in images])}
    for name, layers in thirds(num_layers).items():
        table[f"random {keep} in {name}"] = accuracy(images, [keep if i in layers else 1.0 for i in range(num_layers)])
    overlaps = layer_overlaps(model, processor, examples[: min(len(examples), 10 * len(set(tasks)))], keep, gap)
    return {"n_per_task": num_per_task, "accuracy": table, "oracle overlap (Jaccard)": overlaps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=resolve_model_alias, default=str(DEMO_MODEL_PATH), help='a model folder, Hub id or "demo"'
    )
    parser.add_argument("--num-per-task", type=int, default=50)
    parser.add_argument("--keep", type=float, default=0.11)
    parser.add_argument("--gap", type=int, default=4, help="layers between the two sets compared (l and l + gap)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--tasks", type=lambda text: tuple(text.split(",")), default=TASK_TYPES,
                        help="task types, comma-separated (a testbed trained on some)")  # fmt: skip
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = run(args.model, args.num_per_task, args.keep, args.gap, args.seed, args.batch_size, args.tasks)
    print(f"accuracy (n={args.num_per_task} per task)")
    for condition, row in result["accuracy"].items():
        print(f"  {condition:<28}" + "  ".join(f"{task} {value:.2f}" for task, value in row.items()))
    print("oracle top-k overlap (Jaccard; 10 images per task)")
    for name, value in result["oracle overlap (Jaccard)"].items():
        print(f"  {name:<28}{value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
