"""Where a testbed loses counting and relation at full tokens: what it answers instead, where its first heads look
from the position that predicts the first answer token, and whether the vision tower's tokens hold what a relation
answer needs (a linear probe of each grid shape's neighbours on the projector output).

    python -m alvts.demo.testbed.readout alvts/demo/model --num-per-task 100 --json OUT.json
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from ...evaluation.harness import generate_answers
from ...evaluation.inputs import encode_example
from ...evaluation.processor import load_processor
from ...evaluation.scoring import normalise
from ..tasks import EVAL_SEED, Example, example_seed, make_example
from ..tasks.geometry import nearest_in_direction
from ..tasks.vocab import DIRECTIONS
from ..training_data import NEIGHBOUR_SPLITS, centre_token, held_out, token_targets
from .build import SINK_TOKEN
from .gonogo import testbed_parser, write_json

HEADS = (0, 1)  # the heads the trainer guides at answer positions
PROBE_SEED = EVAL_SEED + 2  # the probe's images: neither training's, the probes', nor the evaluation's


def relation_outcome(example: Example, answer: str) -> str:
    """What a relation answer names: the asked neighbour, the anchor, the anchor's neighbour in another direction,
    another shape in the scene, or nothing in it."""
    objects, query = example.scene["objects"], example.scene["query"]
    names = [normalise(f"{o['colour']} {o['shape']}") for o in objects]
    centres = [o["centre"] for o in objects]
    others = [nearest_in_direction(centres, query["anchor"], d) for d in DIRECTIONS]
    answer = normalise(answer)
    if answer == normalise(example.answer):
        return "right"
    if answer == names[query["anchor"]]:
        return "the anchor"
    if any(i is not None and names[i] == answer for i in others):
        return "anchor's neighbour in another direction"
    return "another shape in the scene" if answer in names else "not in the scene"


def looked_at(model, processor, example: Example) -> dict[str, list[float]]:
    """Per decoder layer, the attention of HEADS (mean) from the prompt's last position: on the sink, on the tokens
    that hold the answer (counting: the counted shapes' centres; relation: the anchor's) and, for relation, on the
    asked neighbour's centre."""
    inputs = encode_example(processor, example.image, example.question)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    ids = inputs["input_ids"][0]
    image = (ids == model.config.image_token_id).nonzero()[:, 0]
    sink = int((ids == processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN)).nonzero()[0, 0])
    size, objects, query = example.image.size[0], example.scene["objects"], example.scene["query"]
    centres = [centre_token(o["centre"], size) for o in objects]
    if example.task == "counting":
        held, target = [c for c, o in zip(centres, objects, strict=True) if o["colour"] == query["colour"]], []
    else:
        held = [centres[query["anchor"]]]
        target = [centres[nearest_in_direction([o["centre"] for o in objects], query["anchor"], query["direction"])]]
    rows = defaultdict(list)
    for layer in attentions:
        weights = layer[0, list(HEADS), -1].mean(0)
        visual = weights[image]
        rows["sink"].append(weights[sink].item())
        rows["held"].append(visual[held].sum().item())
        rows["target"].append(visual[target].sum().item())
    return rows


def neighbour_probe(model, processor, images: int) -> list[float]:
    """Held-out accuracy of a linear probe per neighbour column (colour, shape per direction) at grid shapes' centre
    tokens of the projector output, fitted on half of `images` relation images and tested on the other half."""
    features, targets = [], []
    config = model.config
    for index in range(images):
        example = make_example("relation", example_seed(PROBE_SEED, index))
        pixels = processor.image_processor(images=[example.image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            visual = model.model.get_image_features(
                pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            ).pooler_output  # fmt: skip
        visual = torch.cat(list(visual)) if isinstance(visual, (list, tuple)) else visual.flatten(0, -2)
        neighbours = token_targets(example)[:, 5:]
        at = neighbours[:, 0] >= 0
        features.append(F.rms_norm(visual[at], (visual.shape[-1],)))
        targets.append(neighbours[at])
    features, targets = torch.cat(features), torch.cat(targets)
    half, accuracy = len(features) // 2, []
    for column, classes in enumerate(NEIGHBOUR_SPLITS):
        probe = torch.nn.Linear(features.shape[1], classes)
        optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
        for _ in range(300):
            loss = F.cross_entropy(probe(features[:half]), targets[:half, column])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy.append((probe(features[half:]).argmax(1) == targets[half:, column]).float().mean().item())
    return accuracy


def mean_by_layer(rows: list[list[float]]) -> list[float]:
    """Mean over questions of per-layer values, rounded to 3 places."""
    return [round(sum(values) / len(values), 3) for values in zip(*rows, strict=True)]


def run(model_path: str, num_per_task: int, probe_images: int) -> dict:
    """Outcomes and per-layer looks for counting (by true count) and relation (right against wrong), and the probe."""
    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="eager").eval()
    processor = load_processor(model_path)
    examples = held_out(num_per_task, EVAL_SEED, ("counting", "relation"))
    with torch.no_grad():
        answers = generate_answers(model, processor, [e.image for e in examples], [e.question for e in examples])
    outcomes: dict[str, Counter] = {"counting": Counter(), "relation": Counter()}
    right: dict[str, list[bool]] = {"counting": [], "relation": []}  # per question, for paired comparisons
    looks: dict[str, list[dict]] = defaultdict(list)
    for example, answer in zip(examples, answers, strict=True):
        right[example.task].append(normalise(answer) == normalise(example.answer))
        if example.task == "counting":
            outcomes["counting"][f"{example.answer} -> {normalise(answer)}"] += 1
            group = f"counting, {example.answer} shapes"
        else:
            outcome = relation_outcome(example, answer)
            outcomes["relation"][outcome] += 1
            group = f"relation, {'right' if outcome == 'right' else 'wrong'}"
        looks[group].append(looked_at(model, processor, example))
    by_layer = {
        group: {"n": len(rows)}
        | {part: mean_by_layer([row[part] for row in rows]) for part in ("sink", "held", "target")}
        for group, rows in sorted(looks.items())
    }
    probe = neighbour_probe(model, processor, probe_images)
    return {
        "model": model_path, "num_per_task": num_per_task, "heads": list(HEADS),
        "outcomes": {task: dict(sorted(counts.items())) for task, counts in outcomes.items()},
        "right": right,
        "attention_by_layer": by_layer,
        "neighbour_probe": {"images": probe_images, "accuracy": [round(a, 3) for a in probe]},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = testbed_parser(__doc__, num_per_task=100, selection=False)
    parser.add_argument("--probe-images", type=int, default=200)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = run(args.model, args.num_per_task, args.probe_images)
    for task, counts in result["outcomes"].items():
        print(f"{task} (n = {sum(counts.values())}): {counts}")
    print(f"attention of heads {list(HEADS)} from the prompt's last position, by layer:")
    for group, row in result["attention_by_layer"].items():
        for part in ("sink", "held", "target"):
            if any(row[part]):
                print(f"  {group} (n = {row['n']}), {part}: {row[part]}")
    print(f"neighbour probe, held-out accuracy per column: {result['neighbour_probe']['accuracy']}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
