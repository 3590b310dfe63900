"""The demo model's parts before training: a small byte-level BPE tokenizer over the task suite's language, the
stock Qwen2.5-VL image processor, a Qwen-style chat template, and a small `Qwen2_5_VLConfig`."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

from ..evaluation.processor import ImageOnlyQwen2_5_VLProcessor
from .tasks import TASK_TYPES, generate_scene, question_for
from .tasks.vocab import BACKGROUND

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)  # fmt: skip
# Qwen's chat format without its default system prompt, except that a message's text comes before its images: the
# question is then in context while the image is read, which a from-scratch model this small needs to learn
# where to look (image first, every task stalled at its answer prior). Each image part becomes vision_start,
# image_pad, vision_end.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
TOKENIZER_LOOKUP_GRID = 4
IMAGE_SIZE = 448  # 32 x 32 patches of 14 px, merged 2 x 2: 256 visual tokens


def build_tokenizer(vocab_size: int = 400, examples_per_task: int = 200) -> PreTrainedTokenizerFast:
    """Byte-level BPE fitted on the suite's questions and answers, with enough merges that every word is one token
    (an answer's first token then carries the whole answer); digits stay single tokens, so numbers read digit by
    digit. The corpus draws lookups on `TOKENIZER_LOOKUP_GRID` grids, as when the tokenizer was first fitted, so the
    tokenizer stays the same whatever grid the suite asks about (row and column numbers are digits: single tokens)."""
    scenes = [
        generate_scene(task, seed, lookup_grid=TOKENIZER_LOOKUP_GRID)
        for task in TASK_TYPES
        for seed in range(examples_per_task)
    ]
    corpus = [text for scene, answer in scenes for text in (question_for(scene), answer)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus + ["user", "assistant", "system"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )  # fmt: skip


def build_processor(tokenizer: PreTrainedTokenizerFast) -> ImageOnlyQwen2_5_VLProcessor:
    """The stock Qwen2-VL PIL image processor (14 px patches, 2 x 2 merge) with the demo tokenizer and template."""
    pixels = IMAGE_SIZE * IMAGE_SIZE
    # Normalised so the suite's background is exactly zero: at init, with CLIP statistics, the background dominates
    # every visual token and a from-scratch model learns to ignore the image (every task stays at chance).
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 4 * pixels},
        image_mean=[channel / 255 for channel in BACKGROUND],
        image_std=[0.3, 0.3, 0.3],
    )
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 192, num_layers: int = 4) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL: 2-block ViT (64 wide, full attention), GQA decoder with 32-wide heads."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 5 // 2,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // 32, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 100.0},
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )  # fmt: skip
    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden_size, window_size=112,
        fullatt_block_indexes=[0, 1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
    )  # fmt: skip
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )  # fmt: skip
