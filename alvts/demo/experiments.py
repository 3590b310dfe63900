"""Does the demo model use its visual tokens? Accuracy per task at full tokens, with blank images, and at keep ratio
`keep` per layer through the runtime: random tokens, the oracle's top-k, and a fitted selector pack if given.
With --attention, instead: where the answer position of counting and existence questions looks (attention_shares,
for the first demo's Qwen2.5-VL, whose vision-start token is the guided sink).

    python -m alvts.demo.experiments --num-per-task 100 [--pack alvts/demo/pack] [--json OUT]
    python -m alvts.demo.experiments --attention --num-per-task 100 --model alvts/demo/v1/model
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from ..api import routed
from ..evaluation.harness import generate_answers
from ..evaluation.inputs import encode_example
from ..evaluation.processor import load_processor
from ..evaluation.scoring import accuracy_by_task
from ..packs import SelectorPack
from ..policies import RandomPolicy
from . import DEMO_MODEL_PATH
from .tasks import EVAL_SEED, TASK_TYPES
from .tasks.vocab import BACKGROUND
from .training_data import centre_token, held_out


def run(
    model_path: str,
    num_per_task: int,
    keep: float,
    seed: int,
    batch_size: int,
    pack: str | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Accuracy per task (and mean) for each condition: full, blank, random / oracle / the pack at `keep`."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, seed)
    images = [example.image for example in examples]
    blanks = [Image.new("RGB", image.size, BACKGROUND) for image in images]
    questions = [example.question for example in examples]
    tasks, answers = [e.task for e in examples], [e.answer for e in examples]

    conditions = [
        ("full", images, None),
        ("blank image", blanks, None),
        (f"random keep {keep}", images, RandomPolicy(seed)),
        (f"oracle keep {keep}", images, "oracle"),
    ]
    if pack is not None:
        conditions.append((f"selector keep {keep}", images, SelectorPack.from_pretrained(pack)))
    table = {}
    for i, (name, inputs, policy) in enumerate(conditions):
        print(f"({i + 1}/{len(conditions)}) {name}", flush=True)
        with nullcontext() if policy is None else routed(model, policy, keep=keep):
            predictions = generate_answers(model, processor, inputs, questions, batch_size, progress=progress)
        table[name] = accuracy_by_task(tasks, answers, predictions)
    return table


@torch.no_grad()
def attention_shares(model_path: str, num_per_task: int, seed: int, layer: int = 2) -> dict[str, dict[str, float]]:
    """Counting and existence, grouped by true count or by query kind (positive, or the negative's POPE mode): mean
    accuracy of the first answer token and how the guided heads (the first half) of `layer`, the first layer training
    teaches where to look, split the answer position's attention between the sink ("nothing here"), the asked-for
    objects and the objects that match in part (existence: colour or shape) or not at all (counting: other colours).
    Training's target is the sink alone for an absent object and 1 / (n + 1) of it for a count of n."""
    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="eager").eval()
    processor, config = load_processor(model_path), model.config
    heads = config.text_config.num_attention_heads // 2
    groups: dict[str, list[list[float]]] = {}
    for example in held_out(num_per_task, seed, ("counting", "existence")):
        inputs = encode_example(processor, example.image, example.question)
        out = model(**inputs, output_attentions=True)
        ids, attention = inputs["input_ids"][0], out.attentions[layer][0, :heads, -1].mean(0)
        visual, query = attention[ids == config.image_token_id], example.scene["query"]
        full = 1 if example.task == "counting" else 2  # attributes a counted or an existing object shares with query
        shares = torch.zeros(full + 1)
        for obj in example.scene["objects"]:
            matched = (obj["colour"] == query["colour"]) + (obj["shape"] == query.get("shape"))
            shares[matched] += visual[centre_token(obj["centre"], example.image.size[0])]
        answer = processor.tokenizer.decode(out.logits[0, -1].argmax()).strip()
        case = example.answer if example.task == "counting" else example.scene["negative_mode"] or "positive"
        sink = attention[ids == config.vision_start_token_id].item()
        groups.setdefault(f"{example.task} {case}", []).append(
            [float(answer == example.answer), sink, shares[full].item(), shares[full - 1].item()]
        )
    table = {}
    for key, rows in sorted(groups.items()):
        accuracy, sink, asked, partial = torch.tensor(rows).T
        table[key] = {
            "n": len(rows), "accuracy": accuracy.mean().item(), "sink": sink.mean().item(),
            "sink sd": sink.std().item() if len(rows) > 1 else 0.0, "asked-for": asked.mean().item(),
            "partial / other": partial.mean().item(),
        }  # fmt: skip
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
    parser.add_argument("--attention", action="store_true", help="where counting and existence answers look, instead")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.attention:
        shares = attention_shares(args.model, args.num_per_task, args.seed)
        print(f"{'group':<24}{'n':>5}" + "".join(f"{name:>17}" for name in next(iter(shares.values())) if name != "n"))
        for group, row in shares.items():
            print(f"{group:<24}{row['n']:>5}" + "".join(f"{v:>17.3f}" for k, v in row.items() if k != "n"))
        if args.json:
            Path(args.json).write_text(json.dumps(shares, indent=2) + "\n")
        return
    table = run(args.model, args.num_per_task, args.keep, args.seed, args.batch_size, args.pack)
    print_table(table, args.num_per_task)
    if args.json:
        Path(args.json).write_text(json.dumps({"n_per_task": args.num_per_task, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
