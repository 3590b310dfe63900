"""The demo training loop's pieces that must agree with transformers: the guided rows' attention."""

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from alvts.demo.build import build_config, build_processor, build_tokenizer
from alvts.demo.tasks import make_example
from alvts.demo.train import answer_attention
from alvts.demo.training_data import encode_conversation
from alvts.evaluation.inputs import collate
from alvts.routing import get_adapter


def test_answer_attention_matches_eager_attention_weights():
    """Training runs sdpa and recomputes the guided rows; they must be the rows eager attention would return,
    padding and causality included (a left-padded batch of two prompt lengths)."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(examples_per_task=20)
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, hidden_size=128, num_layers=2)  # 4 query heads over 2 key-value heads
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    examples = [make_example("counting", 0), make_example("relation", 1)]
    items = [encode_conversation(processor, e.image, [(e.question, e.answer)]) for e in examples]
    batch = collate(items, tokenizer.pad_token_id, get_adapter(model))
    labels = batch.pop("labels")
    attn, captured = model.model.language_model.layers[1].self_attn, {}
    attn.register_forward_hook(
        lambda m, args, kwargs, out: captured.update(inputs=(kwargs["hidden_states"], kwargs["position_embeddings"]),
                                                     weights=out[1]),
        with_kwargs=True,
    )  # fmt: skip
    with torch.no_grad():
        model(**batch)
    rows, positions = (labels != -100).nonzero(as_tuple=True)
    assert (batch["attention_mask"] == 0).any()  # the padding path is exercised
    for heads in (1, config.text_config.num_attention_heads):
        ours = answer_attention(attn, *captured["inputs"], batch["attention_mask"], rows, positions, heads)
        torch.testing.assert_close(ours, captured["weights"][rows, :heads, positions], atol=1e-6, rtol=1e-5)
