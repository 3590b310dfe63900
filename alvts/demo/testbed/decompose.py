"""Which part of routing one decoder layer breaks a testbed's answers: teacher-forced exact match (every answer token
right) when, at that layer only, the visual tokens the oracle leaves out at prefill (keep 0.11) are hidden from one
kind of query, or skip the layer. Routing the layer does all of it at once.

    python -m alvts.demo.testbed.decompose alvts/demo/model --layer 1 --tasks lookup,reading --num-per-task 30
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaAttention, eager_attention_forward

from ...api import routed
from ...evaluation.inputs import prompt_text
from ...evaluation.processor import load_processor
from ...evaluation.report import wilson_interval
from ..tasks import EVAL_SEED
from ..training_data import encode_conversation, held_out
from .gonogo import RecordingOracle, testbed_parser, write_json

HIDDEN = -math.inf
# condition: (which queries the left-out tokens are hidden from, whether the left-out tokens skip the layer)
CONDITIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "none": ((), False),
    "routed": (("text", "kept"), True),
    "skip": ((), True),
    "visual queries": (("kept",), False),
    "prompt queries": (("prompt",), False),
    "answer queries": (("answer",), False),
}


def hiding_mask(
    hidden_from: tuple[str, ...], head: int | None, shape: tuple[int, int], queries: dict, left_out: torch.Tensor
) -> torch.Tensor:
    """(heads, length) = `shape`: an additive (heads, length, length) mask that hides the `left_out` keys from the
    `hidden_from` query rows (`queries[kind]`, positions), in one head or (head None) in all of them."""
    heads, length = shape
    mask = torch.zeros(heads, length, length)
    for kind in hidden_from:
        mask[slice(None) if head is None else head, queries[kind][:, None], left_out[None]] = HIDDEN
    return mask


def run(model_path: str, layer_idx: int, tasks: tuple[str, ...], num_per_task: int, keep: float) -> dict:
    """Exact match per task and condition, with n and 95% Wilson intervals."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    text_config = model.config.text_config
    heads, layers = text_config.num_attention_heads, text_config.num_hidden_layers
    conditions = {name: (*value, None) for name, value in CONDITIONS.items()}
    conditions |= {f"answer queries, head {h}": (("answer",), False, h) for h in range(heads)}
    active: dict = {}

    def attention(module, query, key, value, attention_mask, **kwargs):
        """Eager attention plus the active mask at the routed layer (sdpa for every other module)."""
        if not isinstance(module, LlamaAttention):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        attention_mask = torch.full((query.shape[2], key.shape[2]), HIDDEN).triu(1)[None, None]  # one unpadded sequence
        if module.layer_idx == layer_idx and "mask" in active:
            attention_mask = attention_mask + active["mask"][None]
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    def skip(module, args, kwargs, output):
        """Tokens that skip the layer leave it as they entered."""
        if active.get("skip") is None:
            return output
        entering = kwargs.get("hidden_states", args[0] if args else None)
        states = output[0] if isinstance(output, tuple) else output
        states = states.clone()
        states[0, active["skip"]] = entering[0, active["skip"]]
        return (states, *output[1:]) if isinstance(output, tuple) else states

    schedule = [1.0] * layers
    schedule[layer_idx] = keep
    examples = held_out(num_per_task, EVAL_SEED, tasks)
    chosen = []  # per example, the oracle's kept visual indices at the layer, from the prompt alone (prefill)
    for example in examples:
        prompt = processor(images=[example.image], text=[prompt_text(processor, example.question)], return_tensors="pt")
        visual_count = int((prompt["input_ids"] == model.config.image_token_id).sum())
        oracle = RecordingOracle(k=max(1, math.floor(keep * visual_count)))
        with torch.no_grad(), routed(model, oracle, keep=schedule):
            model(**prompt)
        chosen.append(oracle.chosen[layer_idx][0][0])

    AttentionInterface.register("alvts_decompose", attention)
    model.set_attn_implementation("alvts_decompose")
    model.model.language_model.layers[layer_idx].register_forward_hook(skip, with_kwargs=True)
    hits = {task: dict.fromkeys(conditions, 0) for task in tasks}
    for example, indices in zip(examples, chosen, strict=True):
        encoded = encode_conversation(processor, example.image, [(example.question, example.answer)])
        labels = encoded.pop("labels")[0]
        visual = (encoded["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
        left = torch.ones(len(visual), dtype=torch.bool)
        left[indices] = False
        text = torch.ones(len(labels), dtype=torch.bool)
        text[visual] = False
        answer = (labels != -100).nonzero()[:, 0]
        rows = text.nonzero()[:, 0]
        first = int(answer[0]) - 1  # the position that predicts the first answer token
        queries = {"text": rows, "kept": visual[indices], "prompt": rows[rows < first], "answer": rows[rows >= first]}
        for condition, (hidden_from, skips, head) in conditions.items():
            active["mask"] = hiding_mask(hidden_from, head, (heads, len(labels)), queries, visual[left])
            active["skip"] = visual[left] if skips else None
            with torch.no_grad():
                logits = model(**encoded).logits[0]
            hits[example.task][condition] += int((logits[answer - 1].argmax(-1) == labels[answer]).all())
    table = {"model": model_path, "layer": layer_idx, "keep": keep, "num_per_task": num_per_task, "rows": {}}
    for condition in conditions:
        table["rows"][condition] = {}
        for task in tasks:
            accuracy = hits[task][condition] / num_per_task
            table["rows"][condition][task] = {
                "acc": accuracy, "n": num_per_task, "ci": wilson_interval(accuracy, num_per_task)
            }  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = testbed_parser(__doc__, num_per_task=30, threads=1)
    parser.add_argument("--layer", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = run(args.model, args.layer, args.tasks, args.num_per_task, args.keep)
    print(f"layer {args.layer}, keep {args.keep}: teacher-forced exact match, n = {args.num_per_task} per task")
    for condition, row in table["rows"].items():
        cells = "  ".join(f"{t} {c['acc']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]" for t, c in row.items())
        print(f"{condition:<24}{cells}")
    write_json(args.json, table)


if __name__ == "__main__":
    main()
