"""Which part of routing one decoder layer breaks a testbed's answers: teacher-forced exact match (every answer token
right) when, at that layer only, the visual tokens the oracle leaves out at prefill (keep 0.11) are hidden from one
kind of query, or skip the layer. Routing the layer does all of it at once.

    python -m alvts.demo.testbed.decompose alvts/demo/model --layer 1 --tasks lookup,reading --num-per-task 30
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

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
from .gonogo import RecordingOracle

CONDITIONS = ("none", "routed", "skip", "visual queries", "prompt queries", "answer queries")
HIDDEN = -math.inf


def masks(condition: str, heads: int, length: int, text: torch.Tensor, first_answer: int, kept, left_out):
    """(heads, length, length) additive mask for `condition` at the routed layer, and the tokens that skip it."""
    mask = torch.zeros(heads, length, length)
    rows = text.nonzero()[:, 0]
    queries = {
        "routed": [rows, kept],
        "visual queries": [kept],
        "prompt queries": [rows[rows < first_answer]],
        "answer queries": [rows[rows >= first_answer]],
    }.get(condition.split(", head")[0], [])
    head = slice(None) if ", head" not in condition else int(condition.rsplit(" ", 1)[1])
    for query_rows in queries:
        mask[head, query_rows[:, None], left_out[None]] = HIDDEN
    return mask, left_out if condition in ("routed", "skip") else None


def run(model_path: str, layer_idx: int, tasks: tuple[str, ...], num_per_task: int, keep: float) -> dict:
    """Exact match per task and condition, with n and 95% Wilson intervals."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = load_processor(model_path)
    text_config = model.config.text_config
    heads, layers = text_config.num_attention_heads, text_config.num_hidden_layers
    conditions = (*CONDITIONS, *(f"answer queries, head {h}" for h in range(heads)))
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
        for condition in conditions:
            active["mask"], active["skip"] = masks(
                condition, heads, len(labels), text, int(answer[0]) - 1, visual[indices], visual[left]
            )
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--tasks", type=lambda text: tuple(text.split(",")), default=("lookup", "reading"))
    parser.add_argument("--num-per-task", type=int, default=30)
    parser.add_argument("--keep", type=float, default=0.11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = run(args.model, args.layer, args.tasks, args.num_per_task, args.keep)
    print(f"layer {args.layer}, keep {args.keep}: teacher-forced exact match, n = {args.num_per_task} per task")
    for condition, row in table["rows"].items():
        cells = "  ".join(f"{t} {c['acc']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]" for t, c in row.items())
        print(f"{condition:<24}{cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
