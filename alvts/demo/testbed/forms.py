"""Which part of a selector's form matters: the oracle score from the layer's real q and k, with or without RoPE,
per head or with the heads' logits merged into one softmax (what a merged-form selector emulates at full rank), at
keep 0.11 on every layer.

    python -m alvts.demo.testbed.forms DIR --num-per-task 40 [--tasks lookup,reading]
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForImageTextToText

from ...api import routed
from ...evaluation.harness import generate_answers
from ...evaluation.processor import load_processor
from ...evaluation.scoring import accuracy_by_task
from ...policies import OraclePolicy
from ...policies.importance import received_attention_log_scores, rotated_queries_keys
from ...routing.policy import LayerInputs, Policy
from ..tasks import EVAL_SEED
from ..training_data import held_out
from .gonogo import testbed_parser, write_json


class RealQueriesKeys(Policy):
    """The received-attention score from the layer's own q and k: `rope` or not, `merged` heads or per head."""

    name = "real-qk"

    def __init__(self, rope: bool, merged: bool):
        self.rope, self.merged = rope, merged

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        attention = inputs.attention
        if self.rope:
            q, k = rotated_queries_keys(attention, inputs.normed, inputs.position_embeddings)
        else:
            identity = torch.ones_like(inputs.position_embeddings[0]), torch.zeros_like(inputs.position_embeddings[1])
            q, k = rotated_queries_keys(attention, inputs.normed, identity)  # cos 1, sin 0: no rotation
        scale = attention.scaling
        if self.merged:  # sum of the heads' logits / heads = the mean logit, in one softmax
            heads = q.shape[1]
            q, k = (t.transpose(1, 2).flatten(2)[:, None] for t in (q, k))
            scale = scale / heads
        return received_attention_log_scores(q, k, scale, inputs.visual, inputs.valid)


FORMS = {
    "oracle (per head, RoPE)": OraclePolicy(),
    "merged heads, RoPE": RealQueriesKeys(rope=True, merged=True),
    "per head, no RoPE": RealQueriesKeys(rope=False, merged=False),
    "merged heads, no RoPE": RealQueriesKeys(rope=False, merged=True),
}


def main(argv: list[str] | None = None) -> None:
    """Command line: accuracy per task for each form, at keep --keep on every layer."""
    parser = testbed_parser(__doc__, num_per_task=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = load_processor(args.model)
    examples = held_out(args.num_per_task, EVAL_SEED, args.tasks)
    images, questions = [e.image for e in examples], [e.question for e in examples]
    table = {}
    for name, policy in FORMS.items():
        with torch.no_grad(), routed(model, policy, args.keep):
            answers = generate_answers(model, processor, images, questions)
        table[name] = accuracy_by_task([e.task for e in examples], [e.answer for e in examples], answers)
        print(name, json.dumps(table[name]), flush=True)
    write_json(args.json, table)


if __name__ == "__main__":
    main()
