"""Qwen3-VL, dense and MoE: the Qwen2.5-VL layout (M-RoPE, flattened patches with (t, h, w) grids, videos as
frames split by timestamp text) plus DeepStack.

DeepStack adds visual features to the hidden states of the visual positions after each of the first decoder layers,
in the language model's own loop, outside the layers. A routed layer scatters its output back into the whole
sequence before that loop runs on, so the addition reaches every visual token, skipped or not: a token skipped by
layer i keeps its layer input and still receives that layer's DeepStack features, as in the stock model.

In the MoE decoder each layer's sparse block sees only the tokens that go through the layer (text and the kept
visual tokens): its router logits and expert loads count those tokens only.
"""

from . import register_adapter
from .qwen2_vl import QwenVLAdapter


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    model_classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
