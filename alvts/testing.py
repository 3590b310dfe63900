"""Tiny random-initialised models of every supported family, built from config objects (no download), their
processors (a word-level tokenizer over the tiny vocabulary, the family's stock image processor), and batched
inputs with left padding, images of different sizes, several images per prompt or none. Used by the tests, the
CPU benchmark preset and the no-weights demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SiglipVisionConfig,
)

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava", "llava_next", "qwen3_vl", "qwen3_vl_moe", "llava_onevision", "internvl")
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl", *QWEN3_FAMILIES)
REFUSED_FAMILIES = ("gemma3",)  # tiny models exist, for the tests of the refusal
VIDEO_FAMILIES = (*QWEN_FAMILIES, "llava_onevision")  # take `pixel_values_videos`
VOCAB, IMAGE_ID, VIDEO_ID, VISION_START, VISION_END, PAD, BOS, EOS = 512, 500, 501, 502, 503, 0, 1, 2
TEXT_IDS = (10, 450)  # ordinary text tokens are drawn from this range

# Image "sizes" per family: Qwen (t, h, w) patch grids; LLaVA-1.5 and Gemma 3 one fixed size; LLaVA-NeXT and
# LLaVA-OneVision (height, width) pixels; InternVL a number of tiles (16 tokens each).
DEFAULT_IMAGES = {
    "qwen2_5_vl": ((1, 12, 12), (1, 8, 20)),
    "qwen2_vl": ((1, 12, 12), (1, 8, 20)),
    "llava": (None, None),
    "llava_next": ((64, 64), (40, 64)),
    "qwen3_vl": ((1, 12, 12), (1, 8, 20)),
    "qwen3_vl_moe": ((1, 12, 12), (1, 8, 20)),
    "llava_onevision": ((64, 64), (40, 64)),
    "internvl": (1, 2),
    "gemma3": (None, None),
}


# Per family, two samples with different numbers of visual tokens: Qwen 12x12 vs 8x20 patch grids (36 vs 40 tokens),
# LLaVA-1.5 one vs two images (64 vs 128), LLaVA-NeXT 64x64 vs 40x64 pixels (336 vs 234 with unpadding and newlines).
MIXED_IMAGES = {
    "qwen2_5_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "qwen2_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "llava": [[None], [None, None]],
    "llava_next": [[(64, 64)], [(40, 64)]],
    "qwen3_vl": [[(1, 12, 12)], [(1, 8, 20)]],
    "qwen3_vl_moe": [[(1, 12, 12)], [(1, 8, 20)]],
    "llava_onevision": [[(64, 64)], [(40, 64)]],  # 336 vs 234, as LLaVA-NeXT
    "internvl": [[1], [2]],  # one tile vs two: 16 vs 32
}


class Video(NamedTuple):
    """A video in `tiny_inputs`: for Qwen families a (t, h, w) patch grid (t temporal patches of two frames each),
    for LLaVA-OneVision `(frames,)`."""

    size: tuple[int, ...]


# The tiny decoder every family shares: 4 layers, GQA with 4 query heads over 2 KV heads.
TINY_TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
)  # fmt: skip


def _clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )


def _siglip_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )


GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _qwen3_config(family: str, text_overrides: dict) -> Qwen3VLConfig | Qwen3VLMoeConfig:
    """Qwen3-VL (dense or MoE: 4 experts, 2 per token, in every layer) with DeepStack after layers 0 and 1."""
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True, "rope_theta": 1e4}
    text = dict(TINY_TEXT, head_dim=16, rope_parameters=mrope)
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    text.update(text_overrides)
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
    )  # fmt: skip
    config_cls = Qwen3VLMoeConfig if family == "qwen3_vl_moe" else Qwen3VLConfig
    return config_cls(
        text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, pad_token_id=PAD,
    )  # fmt: skip


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0, **text_overrides) -> PreTrainedModel:
    """A tiny random model of `family` (fp32, eval mode) with a 4-layer, GQA (4 query / 2 KV heads) decoder."""
    torch.manual_seed(seed)
    if family in QWEN3_FAMILIES:
        config = _qwen3_config(family, text_overrides)
        cls = Qwen3VLMoeForConditionalGeneration if family == "qwen3_vl_moe" else Qwen3VLForConditionalGeneration
    elif family in QWEN_FAMILIES:
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
    elif family == "llava_onevision":
        config = LlavaOnevisionConfig(
            vision_config=_siglip_config(), text_config=Qwen2Config(**(TINY_TEXT | text_overrides)),
            image_token_index=IMAGE_ID, video_token_index=VIDEO_ID, vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=GRID_PINPOINTS,
        )  # fmt: skip
        cls = LlavaOnevisionForConditionalGeneration
    elif family == "internvl":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=[32, 32], patch_size=[4, 4])  # fmt: skip
        config = InternVLConfig(
            vision_config=vision, text_config=Qwen2Config(**(TINY_TEXT | text_overrides)), image_token_id=IMAGE_ID,
            image_seq_length=16, downsample_ratio=0.5,
        )  # fmt: skip
        cls = InternVLForConditionalGeneration
    elif family == "gemma3":  # 3 sliding-window layers (window 8) and one global one, as Gemma 3's 5:1 pattern
        layer_types = ["sliding_attention"] * 3 + ["full_attention"]
        text = dict(TINY_TEXT, head_dim=16, query_pre_attn_scalar=16, sliding_window=8, layer_types=layer_types)
        config = Gemma3Config(
            text_config=text | text_overrides, vision_config=_siglip_config(), mm_tokens_per_image=16,
            image_token_index=IMAGE_ID, boi_token_index=VISION_START, eoi_token_index=VISION_END,
        )  # fmt: skip
        cls = Gemma3ForConditionalGeneration
    else:
        raise ValueError(f"Unknown family {family!r}; expected one of {FAMILIES + REFUSED_FAMILIES}.")
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


class _ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` without its video processor (transformers cannot build one without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, **kwargs)


class _ImageOnlyInternVLProcessor(InternVLProcessor):
    """`InternVLProcessor` without its video processor (transformers cannot build one without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, **kwargs)


# InternVL's tokenizer names its image tokens; `<img>` and `</img>` wrap each image's `<IMG_CONTEXT>` slots
_INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def tiny_processor(model: PreTrainedModel) -> ProcessorMixin:
    """The processor of a `tiny_model`: words "w10" ... "w449" are the ordinary text ids, the image placeholder is
    the model's image token id, and images go through the family's stock (PIL) image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from .evaluation.processor import ImageOnlyQwen2_5_VLProcessor

    family = model.config.model_type
    qwen = family in QWEN_FAMILIES
    image_token = {"internvl": "<IMG_CONTEXT>"}.get(family, "<|image_pad|>" if qwen else "<image>")
    video_token = "<|video_pad|>" if qwen else "<video>"
    named = {"image_token": image_token, "video_token": video_token}
    vocab = {f"w{i}": i for i in range(*TEXT_IDS)} | {text: i for i, text in _SPECIAL.items()}
    vocab |= {image_token: IMAGE_ID, video_token: VIDEO_ID, "user:": 450, "assistant:": 451}
    if family == "internvl":
        vocab |= {"<img>": VISION_START, "</img>": VISION_END}
        named = _INTERNVL_TOKENS | {"video_token": video_token}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, **special, extra_special_tokens=named)
    extra = [t for t in vocab if t.startswith("<") and t not in special.values()]
    tokenizer.add_special_tokens({"additional_special_tokens": [*extra, *special.values()]})
    image_part = "<|vision_start|><|image_pad|><|vision_end|> " if qwen else f"{image_token} "
    template = _TEMPLATE.replace("image_part", repr(image_part))
    vision = model.config.vision_config
    if qwen:
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size, size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
        )  # fmt: skip
        return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=template)
    if family == "internvl":
        size = dict(zip(("height", "width"), vision.image_size, strict=True))
        image_processor = GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=4)
        return _ImageOnlyInternVLProcessor(
            image_processor, tokenizer, image_seq_length=model.config.image_seq_length, chat_template=template
        )
    tile = {"height": vision.image_size, "width": vision.image_size}
    if family == "llava_onevision":
        image_processor = LlavaOnevisionImageProcessorPil(
            size=tile, crop_size=tile, image_grid_pinpoints=model.config.image_grid_pinpoints
        )
        return _ImageOnlyOnevisionProcessor(
            image_processor, tokenizer, num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
            vision_feature_select_strategy="full", chat_template=template, image_token=image_token,
            video_token=video_token,
        )  # fmt: skip
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
    if family in ("llava", "gemma3"):
        size = model.config.vision_config.image_size
        pixels = torch.randn(1, 3, size, size, generator=gen)
        tokens = getattr(model.config, "mm_tokens_per_image", (size // model.config.vision_config.patch_size) ** 2)
        return {"pixel_values": pixels}, tokens
    if family == "internvl":  # `image` tiles, each `image_seq_length` tokens
        size = model.config.vision_config.image_size
        pixels = torch.randn(image, 3, *size, generator=gen)
        return {"pixel_values": pixels}, image * model.config.image_seq_length
    tile = model.config.vision_config.image_size
    max_tiles = 1 + max(h * w for h, w in model.config.image_grid_pinpoints) // tile**2
    pixels = torch.randn(1, max_tiles, 3, tile, tile, generator=gen)
    sizes = torch.tensor([image])
    with torch.no_grad():
        feats = model.model.get_image_features(
            pixel_values=pixels.to(model.device, model.dtype), image_sizes=sizes.to(model.device), return_dict=True
        ).pooler_output  # on the model's device: a CUDA model counts its features there
    return {"pixel_values": pixels, "image_sizes": sizes}, int(feats[0].shape[0])


def _video_pixels(family: str, model: PreTrainedModel, video: Video, gen: torch.Generator) -> tuple[dict, int]:
    """Random pixels for one video and the number of placeholder tokens it becomes in the language model."""
    if family in QWEN_FAMILIES:
        part, n_tokens = _image_pixels(family, model, video.size, gen)
        part = {"pixel_values_videos": part["pixel_values"], "video_grid_thw": part["image_grid_thw"]}
        if family == "qwen2_5_vl":  # seconds per temporal patch: the M-RoPE time step of this video
            part["second_per_grid_ts"] = torch.tensor([0.5])
        return part, n_tokens
    if family != "llava_onevision":
        raise ValueError(f"The tiny {family} models take no videos; families with videos: {VIDEO_FAMILIES}.")
    (frames,) = video.size
    tile, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    pixels = torch.randn(1, frames, 3, tile, tile, generator=gen)
    pooled = -(-tile // patch // 2)  # each frame's patch grid pooled 2x2 (rounding up), as the processor counts
    return {"pixel_values_videos": pixels}, frames * pooled**2 + 1  # one `image_newline` slot ends the video


def _placeholders(family: str, item, n_tokens: int, gen: torch.Generator) -> list[int]:
    """The token ids one image or video occupies in a prompt, as the family's processor lays them out."""
    if not isinstance(item, Video):
        if family in (*QWEN_FAMILIES, "gemma3"):  # between begin / end-of-image tokens
            return [VISION_START] + [IMAGE_ID] * n_tokens + [VISION_END]
        return [IMAGE_ID] * n_tokens
    if family in QWEN3_FAMILIES:  # one block per temporal patch, each after its timestamp (a text token here)
        t = item.size[0]
        per_frame = [VISION_START] + [VIDEO_ID] * (n_tokens // t) + [VISION_END]
        return [tok for _ in range(t) for tok in [int(torch.randint(*TEXT_IDS, (1,), generator=gen)), *per_frame]]
    if family in QWEN_FAMILIES:
        return [VISION_START] + [VIDEO_ID] * n_tokens + [VISION_END]
    return [VIDEO_ID] * n_tokens


def tiny_inputs(
    model: PreTrainedModel,
    images: Sequence[Sequence] | None = None,
    prefix_len: int = 5,
    suffix_len: int = 7,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A left-padded batch: `images[b]` lists sample b's images and videos (empty = text only), each an image size
    as in `DEFAULT_IMAGES` or a `Video`. Every sample is `prefix text, [images], suffix text`; suffix lengths differ
    per sample."""
    family = model.config.model_type
    if images is None:
        images = [[img] for img in DEFAULT_IMAGES[family]]
    gen = torch.Generator().manual_seed(seed)
    rows, pixel_parts = [], []
    for b, sample_images in enumerate(images):
        ids = torch.randint(*TEXT_IDS, (prefix_len,), generator=gen).tolist()
        for item in sample_images:
            pixels = _video_pixels if isinstance(item, Video) else _image_pixels
            part, n_tokens = pixels(family, model, item, gen)
            pixel_parts.append(part)
            ids += _placeholders(family, item, n_tokens, gen)
        ids += torch.randint(*TEXT_IDS, (suffix_len + 2 * b,), generator=gen).tolist()
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in dict.fromkeys(key for part in pixel_parts for key in part):  # in sample order, per input
        batch[key] = torch.cat([part[key] for part in pixel_parts if key in part])
    if family in QWEN_FAMILIES:
        batch["mm_token_type_ids"] = (input_ids == IMAGE_ID).long() + 2 * (input_ids == VIDEO_ID).long()
    if family == "gemma3":
        batch["token_type_ids"] = (input_ids == IMAGE_ID).long()
    return batch


def select_sample(batch: dict[str, torch.Tensor], model: PreTrainedModel, b: int, images: Sequence) -> dict:
    """Sample `b` of a `tiny_inputs` batch of images (no videos) on its own (padding removed), for batched-vs-single
    comparisons."""
    keep = batch["attention_mask"][b].bool()
    out = {k: batch[k][b : b + 1, keep] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in batch}
    counts = [len(s) for s in images]
    first, n = sum(counts[:b]), counts[b]
    if n == 0:
        return out
    family = model.config.model_type
    if family in QWEN_FAMILIES:
        grid = batch["image_grid_thw"]
        rows = grid.prod(-1)
        start = int(rows[:first].sum())
        out["pixel_values"] = batch["pixel_values"][start : start + int(rows[first : first + n].sum())]
        out["image_grid_thw"] = grid[first : first + n]
    elif family == "internvl":  # rows are tiles
        tiles = [tiles for sample in images for tiles in sample]
        start = sum(tiles[:first])
        out["pixel_values"] = batch["pixel_values"][start : start + sum(tiles[first : first + n])]
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
