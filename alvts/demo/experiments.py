"""Does the demo model use its visual tokens? Accuracy per task at full tokens, with blank images, and at keep ratio
`keep` per layer through the runtime: random tokens, the oracle's top-k, and a fitted selector pack if given.

    python -m alvts.demo.experiments --num-per-task 100 [--pack selectors/demo] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from .. import RandomPolicy, SelectorPack, routed
from ..evaluate import accuracy_by_task, generate_answers
from ..processor import load_processor
from ..tasks import EVAL_SEED, TASK_TYPES
from ..tasks.vocab import BACKGROUND
from . import DEMO_MODEL_PATH
from .data import held_out


def run(
    model_path: str, num_per_task: int, keep: float, seed: int, batch_size: int, pack: str | None = None
) -> dict[str, dict[str, float]]:
    """Accuracy per task (and mean) for each condition: full, blank, random / oracle / the pack at `keep`."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, seed)
    images = [example.image for example in examples]
    blanks = [Image.new("RGB", image.size, BACKGROUND) for image in images]
    questions = [example.question for example in examples]
    tasks, answers = [e.task for e in examples], [e.answer for e in examples]

    def score(images: list[Image.Image], policy=None) -> dict[str, float]:
        with nullcontext() if policy is None else routed(model, policy, keep=keep):
            return accuracy_by_task(tasks, answers, generate_answers(model, processor, images, questions, batch_size))

    table = {
        "full": score(images),
        "blank image": score(blanks),
        f"random keep {keep}": score(images, RandomPolicy(seed)),
        f"oracle keep {keep}": score(images, "oracle"),
    }
    if pack is not None:
        table[f"selector keep {keep}"] = score(images, SelectorPack.from_pretrained(pack))
    return table


def print_table(table: dict[str, dict[str, float]], num_per_task: int) -> None:
    columns = (*TASK_TYPES, "mean")
    print(f"{'condition':<22}" + "".join(f"{c:>11}" for c in columns) + f"   (n={num_per_task} per task)")
    for condition, row in table.items():
        print(f"{condition:<22}" + "".join(f"{row[c]:>11.3f}" for c in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL_PATH))
    parser.add_argument("--num-per-task", type=int, default=100)
    parser.add_argument("--keep", type=float, default=0.11)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="base seed of the held-out examples")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--pack", help="a selector pack (folder or Hub id) to score as well")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    table = run(args.model, args.num_per_task, args.keep, args.seed, args.batch_size, args.pack)
    print_table(table, args.num_per_task)
    if args.json:
        Path(args.json).write_text(json.dumps({"n_per_task": args.num_per_task, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
