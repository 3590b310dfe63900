"""Tiny random-initialised models of every supported family, built from config objects (no download), their
processors (a word-level tokenizer over the tiny vocabulary, the family's stock image processor), and batched
inputs with left padding, images of different sizes, several images per prompt or none. Used by the tests, the
CPU benchmark preset and the no-weights demo."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava", "llava_next")
QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl")
VOCAB, IMAGE_ID, VIDEO_ID, VISION_START, VISION_END, PAD, BOS, EOS = 512, 500, 501, 502, 503, 0, 1, 2
TEXT_IDS = (10, 450)  # ordinary text tokens are drawn from this range

# Image "sizes" per family: Qwen (t, h, w) patch grids; LLaVA-1.5 one fixed size; LLaVA-NeXT (height, width) pixels.
DEFAULT_IMAGES = {
    "qwen2_5_vl": ((1, 12, 12), (1, 8, 20)),
    "qwen2_vl": ((1, 12, 12), (1, 8, 20)),
    "llava": (None, None),
    "llava_next": ((64, 64), (40, 64)),
}


# Per family, two samples with different numbers of visual tokens: Qwen 12x12 vs 8x20 patch grids (36 vs 40 tokens),
# LLaVA-1.5 one vs two images (64 vs 128), LLaVA-NeXT 64x64 vs 40x64 pixels (336 vs 234 with unpadding and newlines).
MIXED_IMAGES = {
    "qwen2_5_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "qwen2_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "llava": [[None], [None, None]],
    "llava_next": [[(64, 64)], [(40, 64)]],
}


# The tiny decoder every family shares: 4 layers, GQA with 4 query heads over 2 KV heads.
TINY_TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
)  # fmt: skip


def _clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0, **text_overrides) -> PreTrainedModel:
    """A tiny random model of `family` (fp32, eval mode) with a 4-layer, GQA (4 query / 2 KV heads) decoder."""
    torch.manual_seed(seed)
    if family in QWEN_FAMILIES:
        mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}
        text = dict(TINY_TEXT, rope_parameters=mrope)
        text.update(text_overrides)
        if family == "qwen2_5_vl":
            vision = dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=16,
                fullatt_block_indexes=[1], patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
            )  # fmt: skip
            config_cls, cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        else:
            vision = dict(
                depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                temporal_patch_size=2,
            )  # fmt: skip
            config_cls, cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        config = config_cls(
            text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
            vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
            bos_token_id=BOS, eos_token_id=EOS,
        )  # fmt: skip
    elif family == "llava":
        config = LlavaConfig(
            vision_config=_clip_config(), text_config=LlamaConfig(**(TINY_TEXT | text_overrides)),
            image_token_id=IMAGE_ID, vision_feature_layer=-2, vision_feature_select_strategy="default",
        )  # fmt: skip
        cls = LlavaForConditionalGeneration
    elif family == "llava_next":
        config = LlavaNextConfig(
            vision_config=_clip_config(), text_config=LlamaConfig(**(TINY_TEXT | text_overrides)),
            image_token_id=IMAGE_ID, vision_feature_layer=-2, vision_feature_select_strategy="default",
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        )  # fmt: skip
        cls = LlavaNextForConditionalGeneration
    else:
        raise ValueError(f"Unknown family {family!r}; expected one of {FAMILIES}.")
    model = cls._from_config(config, dtype=torch.float32).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = PAD
    return model


# Placeholder strings the tiny processors use for the tiny models' special ids.
_SPECIAL = {PAD: "<pad>", BOS: "<s>", EOS: "</s>", VISION_START: "<|vision_start|>", VISION_END: "<|vision_end|>"}
_TEMPLATE = (
    "{%- for message in messages -%}{{ message['role'] + ': ' }}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ image_part }}{%- else -%}{{ part['text'] + ' ' }}{%- endif -%}"
    "{%- endfor -%}{{ '</s> ' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
)


def tiny_processor(model: PreTrainedModel) -> ProcessorMixin:
    """The processor of a `tiny_model`: words "w10" ... "w449" are the ordinary text ids, the image placeholder is
    the model's image token id, and images go through the family's stock (PIL) image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from .evaluation.processor import ImageOnlyQwen2_5_VLProcessor

    family = model.config.model_type
    qwen = family in QWEN_FAMILIES
    image_token = "<|image_pad|>" if qwen else "<image>"
    vocab = {f"w{i}": i for i in range(*TEXT_IDS)} | {text: i for i, text in _SPECIAL.items()}
    vocab |= {image_token: IMAGE_ID, "<|video_pad|>": VIDEO_ID, "user:": 450, "assistant:": 451}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, **special,
                                        extra_special_tokens={"image_token": image_token})  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": [image_token, "<|video_pad|>", *_SPECIAL.values()]})
    image_part = "<|vision_start|><|image_pad|><|vision_end|> " if qwen else "<image> "
    template = _TEMPLATE.replace("image_part", repr(image_part))
    vision = model.config.vision_config
    if qwen:
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size, size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
        )  # fmt: skip
        return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=template)
    tile = {"height": vision.image_size, "width": vision.image_size}
    shared = dict(patch_size=vision.patch_size, vision_feature_select_strategy="default", chat_template=template,
                  num_additional_image_tokens=1, image_token=image_token)  # fmt: skip
    if family == "llava":
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": vision.image_size}, crop_size=tile)
        return LlavaProcessor(image_processor, tokenizer, **shared)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": vision.image_size},
        crop_size=tile,
        image_grid_pinpoints=model.config.image_grid_pinpoints,
    )
    return LlavaNextProcessor(image_processor, tokenizer, **shared)


def _image_pixels(family: str, model: PreTrainedModel, image, gen: torch.Generator) -> tuple[dict, int]:
    """Random pixels for one image and the number of placeholder tokens it becomes in the language model."""
    if family in QWEN_FAMILIES:
        vc = model.config.vision_config
        t, h, w = image
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        pixels = torch.randn(t * h * w, dim, generator=gen)
        n_tokens = t * h * w // vc.spatial_merge_size**2
        return {"pixel_values": pixels, "image_grid_thw": torch.tensor([[t, h, w]])}, n_tokens
    if family == "llava":
        size = model.config.vision_config.image_size
        pixels = torch.randn(1, 3, size, size, generator=gen)
        return {"pixel_values": pixels}, (size // model.config.vision_config.patch_size) ** 2
    tile = model.config.vision_config.image_size
    max_tiles = 1 + max(h * w for h, w in model.config.image_grid_pinpoints) // tile**2
    pixels = torch.randn(1, max_tiles, 3, tile, tile, generator=gen)
    sizes = torch.tensor([image])
    with torch.no_grad():
        feats = model.model.get_image_features(
            pixel_values=pixels.to(model.device, model.dtype), image_sizes=sizes.to(model.device), return_dict=True
        ).pooler_output  # on the model's device: a CUDA model counts its features there
    return {"pixel_values": pixels, "image_sizes": sizes}, int(feats[0].shape[0])


def tiny_inputs(
    model: PreTrainedModel,
    images: Sequence[Sequence] | None = None,
    prefix_len: int = 5,
    suffix_len: int = 7,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A left-padded batch: `images[b]` lists sample b's images (empty = text only), each an image size as in
    `DEFAULT_IMAGES`. Every sample is `prefix text, [images], suffix text`; suffix lengths differ per sample."""
    family = model.config.model_type
    if images is None:
        images = [[img] for img in DEFAULT_IMAGES[family]]
    gen = torch.Generator().manual_seed(seed)
    rows, pixel_parts = [], []
    for b, sample_images in enumerate(images):
        ids = torch.randint(*TEXT_IDS, (prefix_len,), generator=gen).tolist()
        for image in sample_images:
            part, n_tokens = _image_pixels(family, model, image, gen)
            pixel_parts.append(part)
            if family in QWEN_FAMILIES:
                ids += [VISION_START] + [IMAGE_ID] * n_tokens + [VISION_END]
            else:
                ids += [IMAGE_ID] * n_tokens
        ids += torch.randint(*TEXT_IDS, (suffix_len + 2 * b,), generator=gen).tolist()
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in pixel_parts[0] if pixel_parts else ():
        batch[key] = torch.cat([p[key] for p in pixel_parts])
    if family in QWEN_FAMILIES:
        batch["mm_token_type_ids"] = (input_ids == IMAGE_ID).long()
    return batch


def select_sample(batch: dict[str, torch.Tensor], model: PreTrainedModel, b: int, images: Sequence) -> dict:
    """Sample `b` of a `tiny_inputs` batch on its own (padding removed), for batched-vs-single comparisons."""
    keep = batch["attention_mask"][b].bool()
    out = {k: batch[k][b : b + 1, keep] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in batch}
    counts = [len(s) for s in images]
    first, n = sum(counts[:b]), counts[b]
    if n == 0:
        return out
    if model.config.model_type in QWEN_FAMILIES:
        grid = batch["image_grid_thw"]
        rows = grid.prod(-1)
        start = int(rows[:first].sum())
        out["pixel_values"] = batch["pixel_values"][start : start + int(rows[first : first + n].sum())]
        out["image_grid_thw"] = grid[first : first + n]
    else:
        out["pixel_values"] = batch["pixel_values"][first : first + n]
        if "image_sizes" in batch:
            out["image_sizes"] = batch["image_sizes"][first : first + n]
    return out


# Ops whose result decides a host-side shape or value: on CUDA each one waits for the device (a host sync).
_SYNCING_OPS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "allclose", "unique", "_unique2"}
)


class HostSyncCounter(TorchDispatchMode):
    """Counts the tensor ops of a region that make the host wait for the device on CUDA (`.item()`, `bool(t)`,
    `nonzero`, boolean-mask indexing, ...). Runs on any device, so the routing overhead that hurts on a GPU is
    testable on the CPU: `with HostSyncCounter() as syncs: model(**inputs)`, then `syncs.count`, `syncs.ops`."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self._tolist = None

    def __enter__(self):
        # `tolist()` reads the data directly, without dispatching an op: wrap it to count it too
        self._tolist, counter = torch.Tensor.tolist, self

        def tolist(tensor):
            counter.ops.append("tolist")
            return counter._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ()
        )
        if name in _SYNCING_OPS or boolean_index:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))
