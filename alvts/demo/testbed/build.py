"""The testbed's parts before training: the demo's BPE tokenizer, a CLIP PIL image processor at 224 px, an
image-first chat template, and a small `LlavaConfig` (CLIP vision tower + Llama decoder)."""

from __future__ import annotations

from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

from ..build import build_tokenizer
from ..tasks.vocab import BACKGROUND

IMAGE_SIZE = 224  # the suite's 448 px images are resized to 224: 16 x 16 patches of 14 px, one per 28 px of 448
PATCH = 14
IMAGE_TOKEN, SINK_TOKEN = "<|image_pad|>", "<|vision_start|>"
# Qwen's chat format, but the image comes before the question (as in real chat templates); vision_start before the
# image is a "nothing here" sink for the attention guide.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_processor() -> LlavaProcessor:
    """LLaVA processor: the demo tokenizer, CLIP resizing to 224 px normalised so the background is zero."""
    tokenizer = build_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[channel / 255 for channel in BACKGROUND],
        image_std=[0.3, 0.3, 0.3],
    )
    return LlavaProcessor(
        image_processor, tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    )  # fmt: skip


def build_config(
    processor: LlavaProcessor,
    hidden: int = 128,
    layers: int = 12,
    kv_heads: int = 2,
    vision_hidden: int = 128,
    vision_layers: int = 4,
) -> LlavaConfig:
    """CLIP tower (learned absolute positions, CLS dropped by "default") and a narrow Llama decoder with 32-wide
    heads, `kv_heads` of them for keys and values (GQA; as many as query heads: multi-head attention)."""
    tokenizer = processor.tokenizer
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=vision_hidden // 32, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=hidden,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
        eos_token_id=eos, pad_token_id=pad,
    )  # fmt: skip
