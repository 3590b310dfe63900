"""Train the LLaVA testbed from scratch on all tokens (no dropping, no routing) and save it like a Hub checkpoint.

The shipped demo, g26 (README.md): g25, then a second stage that trains its decoder further with the tower kept as
it is and relation and counting asked more often, both in one recipe (`recipes/demo.toml`); then the demo before it
(g24) and earlier designs (g17, on the trainer of commit e7e8322):

    python -m alvts.demo.testbed.train --recipe demo --out alvts/demo/model    # g26: g25's stage, then its own
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 0,1,2,3,5,7 --number-end \
        --tasks lookup,counting,existence,reading,relation,reading,counting,relation --quiet-weight 0.5 \
        --quiet-at both   # g24 (README.md)
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 0,1,2,3,5,7 \
        --number-end --tasks lookup,counting,existence,reading,relation,counting,existence,relation   # g17
    python -m alvts.demo.testbed.train --out DIR     # g11, the demo before g17: g10's design, five tasks
    python -m alvts.demo.testbed.train --out DIR --tasks lookup,reading --steps 1000    # g10's go/no-go (README.md)
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 3,4,5,7 \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation     # design g12 (README.md)
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 1,2,3,5,7 \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation     # design g15 (README.md)
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 0,1,2,3,5,7 \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation     # design g16 (README.md)
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 0,1,2,3,5,7 --number-end \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation --quiet-weight 0.5   # g20
    python -m alvts.demo.testbed.train --out DIR --vision-steps 1800 --guide-layers 0,1,2,3,5,7 --number-end \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation --quiet-weight 0.5   # g21
    python -m alvts.demo.testbed.train --out DIR --vision-steps 1800 --guide-layers 0,1,2,3,5,7 --number-end \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation --quiet-weight 0.5 \
        --quiet-from 1100 --quiet-at text                                                                 # g22
    python -m alvts.demo.testbed.train --out DIR --vision-steps 600 --guide-layers 0,1,2,3,5,7 --number-end \
        --tasks lookup,counting,existence,reading,relation,counting,existence,relation --quiet-weight 0.5 \
        --quiet-from 1100 --quiet-at both                                                                 # g23

Training-only signals, none in the saved model: per visual token (on the projector output) its colour, what centre it
holds, its row, column, digit order and lookup grid cell, and at a grid shape's centre what lies next to it; optionally
what the question asks (`FIELDS`) at each answer position from one decoder layer's output; optionally, in each of the
`--guide-layers`, the attention of head 0 at the answer positions, pulled toward the visual token that holds that answer
token (`answer_guides`' first target), and with --guide-heads 2 that of head 1 toward every answer token of the question
at once (so prefill's last position already looks at every digit a reading answer will need); in each of the
`--v2v-layers`, the attention of the `--v2v-heads` at every visual query, pulled toward the centre tokens near it
(`centres_target`; or, with --v2v-target neighbourhood, the foreground tokens of its causal 3 x 3 neighbourhood) as real
vision-language layers attend locally within objects. With --quiet-weight, every head of every layer that no answer
guide touches is pulled off the visual tokens (-log of its attention elsewhere) at the answer positions (or, with
--quiet-at text, at every text position after the image; with --quiet-at both, the mean of the two kinds' means: the
answer positions and the rest of the text) from main step --quiet-from on, so that only the guided heads
read the image from text, as a few heads do in real LVLMs. With --number-end, reading's
digit tokens also learn whether they are the number's last, and the position that predicts the end token is guided (head
0 toward the last digit, head 1 toward every digit) like the digits' positions. In the --relation-answer-layers, a
relation question's guided heads look at its answer's own token instead of the anchor: a second hop, which finds the
cell next to the anchor's (read in the earlier guided layers) and reads it as a lookup reads its cell. Every other head
and layer is free.

Cost: --v2v-share and --quiet-share estimate the v2v loss on a random share of the visual queries and the quiet
target on a random share of the text queries other than answers, each step (unbiased, cheaper). --kv-heads sets the
decoder's key-value heads; with --init-from it repeats the checkpoint's, which keeps the model's function.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import tempfile
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import LlavaForConditionalGeneration

from ...evaluation.inputs import collate
from ...routing.adapters import get_adapter
from ..tasks import EVAL_SEED, TASK_TYPES
from ..tasks.geometry import MARGIN
from ..tasks.scenes import LOOKUP_GRID, RELATION_GRID, check_lookup_grid
from ..train import answer_attention, exact_match, per_example_loss, query_key_states, save
from ..training_data import (
    ANSWER_END,
    GUIDES,
    MAX_DIGITS,
    NEIGHBOUR_SPLITS,
    NUM_CENTRE_CLASSES,
    NUM_COLOUR_CLASSES,
    TrainingStream,
    encode_conversation,
    field_sizes,
    held_out,
)
from .build import SINK_TOKEN, build_config, build_processor

RECIPES = Path(__file__).with_name("recipes")
AUX_NAMES = ("token_loss", "field_loss", "attention_loss", "v2v_loss", "anchor", "quiet_loss")
SIDE = 16  # visual tokens per image side
PROBE_SEED = EVAL_SEED + 1  # progress checks; gonogo uses EVAL_SEED


def dense_splits(lookup_grid: int) -> tuple[int, ...]:
    """Column splits of the dense targets: token_targets' colour, centre, row, column, digit order; grid row, col
    (lookup grids up to `lookup_grid` a side, relation's); then token_targets' neighbours."""
    grid = max(lookup_grid, RELATION_GRID) + 1
    return (NUM_COLOUR_CLASSES, NUM_CENTRE_CLASSES, SIDE, SIDE, MAX_DIGITS + 1, grid, grid, *NEIGHBOUR_SPLITS)


def grid_cells(grid: int) -> torch.Tensor:
    """(SIDE * SIDE, 2) long: the 1-based row and column of a `grid` x `grid` grid that each visual token's centre
    lies in (0: none)."""
    cell = (1 - 2 * MARGIN) / grid
    centres = (torch.arange(SIDE) + 0.5) / SIDE
    index = ((centres - MARGIN) / cell).floor().long()
    index = torch.where((index >= 0) & (index < grid), index + 1, 0)
    row, col = torch.meshgrid(index, index, indexing="ij")
    return torch.stack([row.flatten(), col.flatten()], -1)


def causal_neighbours(radius: int = 1) -> torch.Tensor:
    """(SIDE * SIDE, SIDE * SIDE) bool [query, key]: the key lies within `radius` rows and columns of the query and
    not after it in raster order (the half of its (2 radius + 1)^2 neighbourhood that causal attention sees)."""
    row, col = torch.arange(SIDE).repeat_interleave(SIDE), torch.arange(SIDE).repeat(SIDE)
    d_row, d_col = row[:, None] - row[None], col[:, None] - col[None]
    near = (d_row.abs() <= radius) & (d_col.abs() <= radius)
    return near & ((d_row > 0) | ((d_row == 0) & (d_col >= 0)))


def neighbourhood_target(marked: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(images, SIDE * SIDE, 1 + SIDE * SIDE) over keys [sink, visual tokens] at each visual query: uniform over the
    `marked` (images, SIDE * SIDE) tokens among its causal `neighbours`, or all on the sink when there are none."""
    weights = (neighbours[None] & marked[:, None]).float()
    count = weights.sum(-1, keepdim=True)
    return torch.cat([(count == 0).float(), weights / count.clamp_min(1)], -1)


class AttentionNormaliser(torch.autograd.Function):
    """(n, heads, queries) logsumexp over the allowed keys of the attention scores q k^T, in one pass less than
    autograd's and with the softmax kept for the backward (it is the gradient): the v2v loss's cost on CPU."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2)
        scores.masked_fill_(~allowed, float("-inf"))
        top = scores.amax(-1, keepdim=True)
        probs = scores.sub_(top).exp_()
        total = probs.sum(-1, keepdim=True)
        ctx.save_for_backward(q, k, probs.div_(total))
        return (total.log_() + top).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        q, k, probs = ctx.saved_tensors
        weights = probs * grad[..., None]
        return weights @ k, weights.transpose(-1, -2) @ q, None


def attention_cross_entropy(
    q: torch.Tensor, k: torch.Tensor, scaling: float, allowed: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean over (samples, heads, queries) of the cross-entropy from `target` (n, queries, keys), zero where not
    `allowed` (n, queries, keys), to the attention of queries q (n, queries, heads, d) over keys k (n, keys, heads,
    d): the log normaliser of the allowed scores less the target's mean score, with no log-probability per key."""
    q = q.transpose(1, 2) * scaling
    normaliser = AttentionNormaliser.apply(q, k.transpose(1, 2), allowed[:, None])
    target_keys = target[:, None] @ k.transpose(1, 2)  # (n, heads, queries, d): each query's target-weighted key
    return (normaliser - (q * target_keys).sum(-1)).mean()


V2V_TARGETS = {  # name: (radius, which token_targets column marks the attended tokens)
    "neighbourhood": (1, 0),  # foreground (colour class not background) tokens of the causal 3 x 3 neighbourhood
    "centres": (2, 1),  # centre tokens (a shape's or a digit's) within two rows and columns
}


def first_target(task: str, guides: dict, relation_answer: bool) -> torch.Tensor:
    """Per answer token, head 0's attention target from one item's `guides` (GUIDES): answer_guides' first (a relation
    question's anchor, whose token learns what lies next to it), or with `relation_answer` the relation answer's own
    token (its second), which a query finds by the cell next to the anchor's and reads as a lookup reads its cell."""
    return guides["second_attention" if task == "relation" and relation_answer else "first_attention"]


def guide_targets(tasks: list[str], guides: list[dict], relation_answer: bool) -> torch.Tensor:
    """(answer tokens, 2, 1 + visual tokens): the targets of heads 0 and 1 in a guided layer, for a batch's `tasks`
    and per-item `guides`: `first_target` and its `union_target`."""
    firsts = [first_target(task, g, relation_answer) for task, g in zip(tasks, guides, strict=True)]
    unions = [union_target(task, first) for task, first in zip(tasks, firsts, strict=True)]
    return torch.stack([torch.cat(firsts), torch.cat(unions)], 1)


def union_target(task: str, first: torch.Tensor) -> torch.Tensor:
    """Per answer token, attention spread evenly over every token its question's answer looks at (`first`: the
    question's first targets): one question per reading image, so all its digits; other answers, their own target."""
    if task != "reading":
        return first
    looked_at = (first > 0).any(0).float()
    return (looked_at / looked_at.sum()).expand_as(first)


def guided_answers(labels: torch.Tensor, end_id: int, guide_rows: torch.Tensor) -> torch.Tensor:
    """(samples, tokens) bool: the label positions answer_guides' rows belong to. Every answer token but the end
    token; the end tokens too in a sample whose `guide_rows` count them (reading with --number-end)."""
    answer = labels != -100
    before_end = answer & (labels != end_id)
    with_end = guide_rows == answer.sum(1)
    if not (with_end | (guide_rows == before_end.sum(1))).all():
        raise ValueError("answer_guides gave a sample a row count that matches neither its answer tokens nor those "
                         "before its end tokens")  # fmt: skip
    return before_end | (answer & with_end[:, None])


def off_image_loss(attention: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean over queries and heads of -log(the attention that falls off the visual tokens): `attention` (n, heads,
    keys) probabilities, `image` (n, keys) bool. Its gradient does not vanish on a head that looks only at the image."""
    on_image = (attention * image[:, None]).sum(-1)
    return -torch.log((1 - on_image).clamp_min(1e-6)).mean()


def text_after_image(input_ids: torch.Tensor, padding: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(samples, tokens) bool: the unpadded positions after each sample's last visual token (question and answers)."""
    image = input_ids == image_token_id
    return (image.flip(1).cumsum(1).flip(1) == 0) & padding.bool() & image.any(1, keepdim=True)


def quiet_query_groups(quiet_at: str, answers: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
    """The (samples, tokens) bool query masks whose off-image losses the quiet target averages: the answer queries,
    every text query after the image, or both kinds apart (answers, the rest of the text) so that neither escapes."""
    return {"answers": [answers], "text": [text], "both": [answers, text & ~answers]}[quiet_at]


def sampled_text(text: torch.Tensor, answers: torch.Tensor, share: float) -> torch.Tensor:
    """`text` (samples, tokens) bool, less a random part of its positions that are not `answers`: each of those is
    kept with probability `share`: a cheaper, unbiased estimate of the quiet target's mean over the other text."""
    return text & (answers | (torch.rand(text.shape) < share))


def sampled_queries(count: int, share: float) -> torch.Tensor:
    """A random `share` of range(count), sorted: the visual queries of one step's v2v loss."""
    return torch.randperm(count)[: round(share * count)].sort().values


def last_digit_labels(targets: torch.Tensor) -> torch.Tensor:
    """(tokens,) long from token_targets rows (SIDE * SIDE per image): 1 on each image's last digit, 0 on its other
    digits, -100 off the number (a token then says whether the number ends after it)."""
    order = targets[:, 4].view(-1, SIDE * SIDE)
    last = (order == order.max(1, keepdim=True).values).long()
    return torch.where(order > 0, last, -100).flatten()


def widen_key_value_heads(model, kv_heads: int) -> None:
    """Give every decoder layer `kv_heads` key-value heads, each old one repeated for the query heads that shared it:
    the same function as before (a checkpoint's GQA as more groups, or as multi-head attention), free to diverge."""
    text = model.config.text_config
    old = text.num_key_value_heads
    if kv_heads % old or text.num_attention_heads % kv_heads:
        raise ValueError(
            f"--kv-heads {kv_heads} does not widen the checkpoint's {old} key-value heads: give a multiple of {old} "
            f"that divides its {text.num_attention_heads} query heads"
        )
    for layer in model.model.language_model.layers:
        attn = layer.self_attn
        for name in ("k_proj", "v_proj"):
            proj = getattr(attn, name)
            wide = torch.nn.Linear(proj.in_features, kv_heads * attn.head_dim, bias=proj.bias is not None)
            for mine, theirs in zip(wide.parameters(), proj.parameters(), strict=True):
                repeated = theirs.detach().view(old, attn.head_dim, -1).repeat_interleave(kv_heads // old, 0)
                mine.data.copy_(repeated.view_as(mine))
            setattr(attn, name, wide)
        attn.num_key_value_groups = text.num_attention_heads // kv_heads
    text.num_key_value_heads = kv_heads


def pretrain_vision(
    model, token_heads: list[torch.nn.Linear], dense_loss, batches, args: argparse.Namespace
) -> list[dict]:
    """Train the vision tower and projector alone on the per-visual-token targets for --vision-steps, as a real
    LVLM's tower is pretrained before the language model sees it: its tokens then say what and where they show
    (and what lies next to a grid shape) before any decoder layer works on them."""
    config = model.config
    parameters = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    parameters += [p for head in token_heads for p in head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    log, started = [], time.perf_counter()
    for step, items in zip(range(args.vision_steps), batches, strict=False):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        tasks = [item["task"] for item in items]
        targets = torch.cat([item["token_targets"] for item in items])
        model.model.get_image_features(
            pixel_values=torch.cat([item["pixel_values"] for item in items]),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        loss = dense_loss(tasks, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.vision_steps:
            row = {
                "vision_step": step + 1,
                "seconds": round(time.perf_counter() - started, 1),
                "token_loss": loss.item(),
            }
            log.append(row)
            print(json.dumps(row), flush=True)
    return log


def train(args: argparse.Namespace) -> dict:
    """Train, probe every --probe-every steps (teacher-forced exact match), save to --out; return the training log."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    tokenizer = processor.tokenizer
    if args.init_from:  # a second stage: an earlier run's weights, fresh optimizer, schedule and training heads
        model = LlavaForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32).train()
        config = model.config
        if args.kv_heads is not None:
            widen_key_value_heads(model, args.kv_heads)
    else:
        config = build_config(processor, hidden=args.hidden, layers=args.layers, kv_heads=args.kv_heads or 2)
        model = LlavaForConditionalGeneration(config).train()
    hidden = config.text_config.hidden_size
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)

    adapter, pad_id = get_adapter(model), tokenizer.pad_token_id
    task_types = tuple(dict.fromkeys(args.tasks))
    probe_examples = held_out(args.probe_per_task, PROBE_SEED, task_types, args.lookup_grid)
    probe = collate([encode_conversation(processor, e.image, [(e.question, e.answer)]) for e in probe_examples],
                    pad_id, adapter)  # fmt: skip
    probe_tasks = [e.task for e in probe_examples]
    stream = TrainingStream(
        processor, args.tasks, turns=args.turns, number_end=args.number_end, lookup_grid=args.lookup_grid
    )
    loader = DataLoader(
        stream, batch_size=args.batch_size, num_workers=args.workers, collate_fn=lambda items: items,
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )  # fmt: skip

    captured: dict = {}
    model.model.multi_modal_projector.register_forward_hook(lambda m, a, output: captured.update(visual=output))
    layers = model.model.language_model.layers
    splits, field_classes = dense_splits(args.lookup_grid), tuple(field_sizes(args.lookup_grid).values())
    token_head = torch.nn.Linear(hidden, sum(splits))
    field_head = torch.nn.Linear(hidden, sum(field_classes))
    deep_head = torch.nn.Linear(hidden, sum(splits))
    last_head = torch.nn.Linear(hidden, 2) if args.number_end else None
    if args.dense_layer >= 0:  # the same per-token targets on the visual tokens entering this decoder layer
        layers[args.dense_layer].register_forward_pre_hook(
            lambda m, a, kw: captured.update(deep=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True
        )
    if args.field_layer >= 0:
        layers[args.field_layer].register_forward_hook(
            lambda m, a, output: captured.update(fields=output[0] if isinstance(output, tuple) else output)
        )
    v2v_layers = range(len(layers)) if args.v2v_layers is None else args.v2v_layers
    quiet_layers = range(len(layers)) if args.quiet_weight > 0 else ()
    for index in sorted({*args.guide_layers, *v2v_layers, *quiet_layers}):
        layers[index].self_attn.register_forward_hook(
            lambda m, a, kw, output, i=index: captured.update(
                {("guide", i): (kw["hidden_states"], kw["position_embeddings"])}
            ),
            with_kwargs=True,
        )
    end_id, sink_id = tokenizer.convert_tokens_to_ids(ANSWER_END), tokenizer.convert_tokens_to_ids(SINK_TOKEN)
    radius, marked_column = V2V_TARGETS[args.v2v_target]
    cells = {"lookup": grid_cells(args.lookup_grid), "relation": grid_cells(RELATION_GRID)}
    neighbours = causal_neighbours(radius)
    if args.anchor_weight > 0:  # every layer's input, for the drift of the visual tokens from the projector output
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(
                lambda m, a, kw, i=index: captured.update({("input", i): kw.get("hidden_states", a[0] if a else None)}),
                with_kwargs=True,
            )
    heads = (token_head, field_head, deep_head) + ((last_head,) if last_head is not None else ())
    if args.freeze_vision:  # the tower's tokens stay as the checkpoint made them; their per-token heads have no work
        model.model.vision_tower.requires_grad_(False)
        model.model.multi_modal_projector.requires_grad_(False)
        heads = (field_head,)
    parameters = [
        p for p in (*model.parameters(), *(p for head in heads for p in head.parameters())) if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def dense_loss(tasks: list[str], targets: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Per-visual-token cross-entropies on the projector output (and, given the visual-token mask `image`,
        on --dense-layer's input)."""
        none = torch.full((SIDE * SIDE, 2), -100)
        grid = torch.cat([cells.get(task, none) for task in tasks])
        targets = torch.cat([targets[:, :5], grid, targets[:, 5:]], 1)
        visual = captured["visual"].reshape(-1, hidden)
        loss = token_loss(token_head, visual, targets)
        if last_head is not None and any(task == "reading" for task in tasks):
            loss = loss + F.cross_entropy(last_head(F.rms_norm(visual, (hidden,))), last_digit_labels(targets))
        if args.dense_layer >= 0 and image is not None:
            loss = loss + token_loss(deep_head, captured["deep"][image], targets)
        return loss

    def token_loss(head: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per target column; centres and digit orders also averaged over the few tokens that have
        one (else "none" swamps them)."""
        parts = head(F.rms_norm(features, (hidden,))).split(splits, 1)
        loss = sum(F.cross_entropy(p, targets[:, i]) for i, p in enumerate(parts) if (targets[:, i] >= 0).any())
        for i in (1, 4):
            marked = targets[:, i] > 0
            if marked.any():
                loss = loss + F.cross_entropy(parts[i][marked], targets[marked, i])
        return loss

    def anchor_loss(image: torch.Tensor) -> torch.Tensor:
        """Mean over layers 1.. of the visual tokens' squared drift from the projector output, relative to its norm:
        small drift means a token that skips layers stays close to one that went through them."""
        if args.anchor_weight <= 0:
            return torch.zeros(())
        start, at = captured["visual"].reshape(-1, hidden), image.flatten().nonzero()[:, 0]
        drifts = [
            ((captured["input", i].flatten(0, 1).index_select(0, at) - start) ** 2).sum(-1)
            / (start**2).sum(-1).clamp_min(1e-6)
            for i in range(1, len(layers))
        ]
        return torch.stack(drifts).mean()

    def guide_losses(
        guides: dict, batch: dict, queries: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(question-field loss, attention loss) at the answer `queries` (rows, positions; `answer_queries`)."""
        rows, positions = queries
        field_loss = attention_loss = torch.zeros(())
        if args.field_layer >= 0:
            logits = field_head(F.rms_norm(captured["fields"][rows, positions], (hidden,))).split(field_classes, 1)
            fields = guides["fields"]
            field_loss = sum(
                (F.cross_entropy(lg, fields[:, i]) for i, lg in enumerate(logits) if (fields[:, i] >= 0).any()),
                field_loss,
            )
        targets = {answer: target[:, : args.guide_heads] for answer, target in guides["targets"].items()}
        has = targets[False][:, 0].sum(1) > 0
        if args.guide_layers and has.any():
            ids = batch["input_ids"][rows]
            sink = (ids == sink_id).int().argmax(1, keepdim=True)
            keys = torch.cat([sink, (ids == config.image_token_id).nonzero()[:, 1].view(len(rows), -1)], 1)
            keys = keys[:, None].expand(-1, args.guide_heads, -1)
            for index in args.guide_layers:
                states, cos_sin = captured["guide", index]
                attention = answer_attention(
                    layers[index].self_attn, states, cos_sin, batch["attention_mask"], rows, positions,
                    args.guide_heads,
                )  # fmt: skip
                probs = attention.gather(2, keys)
                target = targets[index in args.relation_answer_layers]
                attention_loss = attention_loss + -(target * torch.log(probs + 1e-12)).sum(2).mean(1)[has].mean()
            attention_loss = attention_loss / len(args.guide_layers)
        return field_loss, attention_loss

    def answer_queries(labels: torch.Tensor, guide_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, positions) of the queries that predict the guided answer tokens: every answer token's; the end
        tokens' too in the samples whose `guide_rows` (per sample: answer_guides' rows) count them."""
        rows, positions = guided_answers(labels, end_id, guide_rows).nonzero(as_tuple=True)
        return rows, positions - 1

    def quiet_loss(batch: dict, queries: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean over every layer's heads that no answer guide touches (heads from --guide-heads on in the
        --guide-layers, every head elsewhere) of -log(attention off the visual tokens) at the --quiet-at queries
        (with both kinds, the mean of the two kinds' means): only the guided heads read the image from text, as a
        few heads do in real LVLMs."""
        ids = batch["input_ids"]
        answers = torch.zeros_like(ids, dtype=torch.bool)
        answers[queries] = True
        text = text_after_image(ids, batch["attention_mask"], config.image_token_id)
        if args.quiet_share < 1:
            text = sampled_text(text, answers, args.quiet_share)
        groups = quiet_query_groups(args.quiet_at, answers, text)
        rows, positions = torch.stack(groups).any(0).nonzero(as_tuple=True)
        image = ids[rows] == config.image_token_id
        groups = [group[rows, positions] for group in groups if group.any()]
        total = torch.zeros(())
        for index in quiet_layers:
            states, cos_sin = captured["guide", index]
            attn = layers[index].self_attn
            free = args.guide_heads if index in args.guide_layers else 0
            attention = answer_attention(attn, states, cos_sin, batch["attention_mask"], rows, positions,
                                         config.text_config.num_attention_heads)[:, free:]  # fmt: skip
            total = total + sum(off_image_loss(attention[group], image[group]) for group in groups) / len(groups)
        return total / len(quiet_layers)

    def v2v_loss(marked: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cross-entropy of the --v2v-heads' attention at every visual query against `neighbourhood_target` (over
        the keys [sink, visual tokens]), mean over the --v2v-layers."""
        if not args.v2v_heads or not v2v_layers:
            return torch.zeros(())
        ids, padding = batch["input_ids"], batch["attention_mask"].bool()
        images = len(ids)
        image_at = (ids == config.image_token_id).nonzero()[:, 1].view(images, -1)
        keys_at = torch.cat([(ids == sink_id).int().argmax(1, keepdim=True), image_at], 1)
        end = int(image_at.max()) + 1  # visual queries see nothing later
        target = neighbourhood_target(marked.view(images, -1), neighbours)
        if args.v2v_share < 1:  # the same queries in every image
            chosen = sampled_queries(image_at.shape[1], args.v2v_share)
            image_at, target = image_at[:, chosen], target[:, chosen]
        target = torch.zeros(images, image_at.shape[1], end).scatter_(
            2, keys_at[:, None].expand(-1, image_at.shape[1], -1), target
        )
        heads = torch.tensor(args.v2v_heads)
        allowed = (torch.arange(end)[None, None] <= image_at[..., None]) & padding[:, None, :end]
        total = torch.zeros(())
        for index in v2v_layers:
            states, cos_sin = captured["guide", index]
            attn = layers[index].self_attn
            q, k = query_key_states(attn, states, cos_sin, image_at, heads, end)
            total = total + attention_cross_entropy(q, k, attn.scaling, allowed, target)
        return total / len(v2v_layers)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    answer_phases = (False, True) if args.relation_answer_layers else (False,)
    started = time.perf_counter()
    batches = iter(loader)
    vision_heads = [head for head in (token_head, last_head) if head is not None]
    log = pretrain_vision(model, vision_heads, dense_loss, batches, args) if args.vision_steps else []
    window = []
    for step, items in zip(range(args.steps), batches, strict=False):
        tasks = [item.pop("task") for item in items]
        targets = torch.cat([item.pop("token_targets") for item in items])
        per_item = [{name: item.pop(name) for name in GUIDES} for item in items]
        guide_rows = torch.tensor([len(g["first_attention"]) for g in per_item])
        guides = {
            "fields": torch.cat([g["fields"] for g in per_item]),
            "targets": {answer: guide_targets(tasks, per_item, answer) for answer in answer_phases},
        }
        batch = collate(items, pad_id, adapter)
        labels = batch.pop("labels")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss_sum, counts = per_example_loss(model(**batch).logits, labels)
        loss = loss_sum.sum() / counts.sum()
        image = batch["input_ids"] == config.image_token_id
        dense = torch.zeros(()) if args.freeze_vision else dense_loss(tasks, targets, image)
        queries = answer_queries(labels, guide_rows)
        quiet = quiet_loss(batch, queries) if quiet_layers and step >= args.quiet_from else torch.zeros(())
        field_loss, attention_loss = guide_losses(guides, batch, queries)
        v2v = v2v_loss(targets[:, marked_column] > 0, batch)
        anchor = anchor_loss(image)
        optimizer.zero_grad(set_to_none=True)
        total = loss + args.aux_weight * (dense + field_loss) + args.guide_weight * (attention_loss + v2v)
        (total + args.anchor_weight * anchor + args.quiet_weight * quiet).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        window.append(
            (tasks, (loss_sum / counts).detach(), torch.stack([dense, field_loss, attention_loss, v2v, anchor, quiet]))
        )
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            by_task: dict[str, list[float]] = {}
            for step_tasks, per_example, _ in window:
                for task, value in zip(step_tasks, per_example.tolist(), strict=True):
                    by_task.setdefault(task, []).append(value)
            aux = torch.stack([a for *_, a in window]).mean(0).tolist()
            row = {
                "step": step + 1, "seconds": round(time.perf_counter() - started, 1), "lr": lr_at(step),
                "loss_by_task": {t: round(sum(v) / len(v), 4) for t, v in by_task.items()},
                **dict(zip(AUX_NAMES, (round(a, 4) for a in aux), strict=True)),
            }  # fmt: skip
            if (step + 1) % args.probe_every == 0 or step + 1 == args.steps:
                model.eval()
                hits = exact_match(model, probe).tolist()
                save(model, processor, out)
                model.train()
                row["probe"] = {
                    t: sum(h for h, pt in zip(hits, probe_tasks, strict=True) if pt == t) / args.probe_per_task
                    for t in task_types
                }
            log.append(row)
            window = []
            print(json.dumps(row), flush=True)
    elapsed = time.perf_counter() - started
    save(model.eval(), processor, out)
    summary = {"args": vars(args), "train_seconds": round(elapsed, 1), "torch": torch.__version__, "log": log}
    (out / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"trained {args.steps} steps in {elapsed / 60:.1f} min; saved to {out}", flush=True)
    return summary


def integers(text: str) -> list[int]:
    """A comma-separated list of integers; '' is the empty list."""
    return [int(i) for i in text.split(",") if i]


def build_parser() -> argparse.ArgumentParser:
    """The trainer's flags (a recipe's stages are written in them too)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", help="start from this checkpoint's weights (a second stage)")
    parser.add_argument(
        "--vision-steps", type=int, default=0, help="steps that first pretrain the vision tower alone (0: none)"
    )
    parser.add_argument(
        "--freeze-vision",
        action="store_true",
        help="with --init-from: keep the checkpoint's vision tower and projector as they are (train the decoder)",
    )
    parser.add_argument("--dense-layer", type=int, default=-1, help="per-token targets also here")
    parser.add_argument(
        "--tasks",
        type=lambda text: tuple(text.split(",")),
        default=TASK_TYPES,
        help="task types in turn; one listed twice comes twice as often",
    )
    parser.add_argument("--turns", type=int, default=6, help="questions per training image (lookup; reading has 1)")
    parser.add_argument(
        "--lookup-grid",
        type=int,
        default=LOOKUP_GRID,
        help=f"side of the lookup grids trained on (the suite's: {LOOKUP_GRID}; a first stage may start smaller)",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--kv-heads",
        type=int,
        help="key-value heads per decoder layer (default 2; 4: multi-head); with --init-from, the checkpoint's are"
        " repeated to this many (the same function)",
    )
    parser.add_argument("--field-layer", type=int, default=1, help="layer taught what the question asks (-1: none)")
    parser.add_argument(
        "--guide-layers",
        type=integers,
        default=[2, 3, 5, 7],
        help="decoder layers whose heads 0 (and 1) are guided at answer positions ('': none)",
    )
    parser.add_argument(
        "--v2v-layers",
        type=integers,
        help="decoder layers whose --v2v-heads are guided at visual queries (default: all; '': none)",
    )
    parser.add_argument("--v2v-heads", type=integers, default=[0, 1, 2, 3], help="heads guided at visual queries")
    parser.add_argument("--v2v-target", default="centres", choices=V2V_TARGETS, help="what visual queries attend to")
    parser.add_argument(
        "--v2v-share", type=float, default=1.0, help="share of visual queries in a step's v2v loss (a random set)"
    )
    parser.add_argument("--guide-heads", type=int, default=2, choices=(1, 2), help="guided heads in each of them")
    parser.add_argument(
        "--relation-answer-layers",
        type=integers,
        default=[],
        help="guided layers where relation's guided heads look at the answer's own token, not the anchor ('': none)",
    )
    parser.add_argument(
        "--number-end",
        action="store_true",
        help="reading: each digit token also learns whether it is the number's last, and the position that predicts"
        " the end token looks at the last digit",
    )
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--guide-weight", type=float, default=1.0)
    parser.add_argument("--anchor-weight", type=float, default=0.5, help="weight of the visual tokens' drift loss")
    parser.add_argument(
        "--quiet-weight", type=float, default=0.0, help="weight of the unguided heads' look at the image from text"
    )
    parser.add_argument("--quiet-from", type=int, default=0, help="first main step with the quiet target")
    parser.add_argument(
        "--quiet-share", type=float, default=1.0, help="share of text queries but answers in the quiet target"
    )
    parser.add_argument(
        "--quiet-at",
        default="answers",
        choices=("answers", "text", "both"),
        help="queries of the quiet target: the guided answer positions, every text position after the image, or"
        " both kinds, each averaged apart",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--probe-every", type=int, default=200)
    parser.add_argument("--probe-per-task", type=int, default=20)
    parser.add_argument(
        "--recipe",
        help="train every stage of this recipe (a name in alvts/demo/testbed/recipes/, or a .toml file) into --out;"
        " it gives every other flag",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = build_parser()
    args = checked_args(parser, argv)
    if args.recipe is None:
        train(args)
        return
    if given := [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in ("recipe", "out")
                 and v != parser.get_default(k)]:  # fmt: skip
        parser.error(f"--recipe gives every training flag; drop {' '.join(given)} (or write them into a recipe)")
    train_recipe(parser, args.recipe, Path(args.out))


def checked_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the trainer's flags and refuse combinations that cannot train, before anything is built."""
    args = parser.parse_args(argv)
    if args.freeze_vision and (args.vision_steps or not args.init_from or args.dense_layer >= 0):
        parser.error(
            "--freeze-vision keeps a checkpoint's tower: give --init-from, and no --vision-steps or --dense-layer"
        )
    try:
        check_lookup_grid(args.lookup_grid)
    except ValueError as error:
        parser.error(f"--lookup-grid: {error}")
    if stray := sorted(set(args.relation_answer_layers) - set(args.guide_layers)):
        parser.error(f"--relation-answer-layers {stray} are not --guide-layers {args.guide_layers}: name guided layers")
    return args


def recipe_runs(
    parser: argparse.ArgumentParser, recipe: str, out: Path, work: Path
) -> list[tuple[str, argparse.Namespace]]:
    """(name, checked flags) of each stage of `recipe` (a name in RECIPES or a .toml path; each stage {"name", "args"}):
    each stage starts from the one before, kept in `work` under its name; the last one trains into `out`."""
    path = Path(recipe) if recipe.endswith(".toml") else RECIPES / f"{recipe}.toml"
    if not path.is_file():
        parser.error(f"no training recipe {recipe!r}: give one of {sorted(p.stem for p in RECIPES.glob('*.toml'))}"
                     " or the path of a .toml file")  # fmt: skip
    stages = tomllib.loads(path.read_text(encoding="utf-8"))["stages"]
    outs = [work / stage["name"] for stage in stages[:-1]] + [out]
    runs = []
    for stage, stage_out, init in zip(stages, outs, [None, *outs[:-1]], strict=True):
        argv = [*shlex.split(stage["args"]), "--out", str(stage_out)]
        runs.append((stage["name"], checked_args(parser, argv + (["--init-from", str(init)] if init else []))))
    return runs


def train_recipe(parser: argparse.ArgumentParser, recipe: str, out: Path) -> None:
    """Train a recipe's stages in turn (`recipe_runs`, every stage checked before the first trains); `out` gets the
    last one's model and one training log of every stage. The earlier stages' models are not kept."""
    with tempfile.TemporaryDirectory(prefix="alvts-recipe-") as work:
        runs = recipe_runs(parser, recipe, out, Path(work))
        logs = [{"name": name, **train(args)} for name, args in runs]
    summary = {"recipe": recipe, "train_seconds": round(sum(log["train_seconds"] for log in logs), 1), "stages": logs}
    (out / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    minutes = summary["train_seconds"] / 60
    print(f"recipe {recipe}: {len(runs)} stages in {minutes:.1f} min; saved to {out}", flush=True)


if __name__ == "__main__":
    main()
