"""Train the demo Qwen2.5-VL from scratch on the task suite and save it like a Hub checkpoint.

    python -m alvts.demo.train --out alvts/demo/v1/model

Seeded and deterministic in its data order; the step count, not the clock, ends training. Writes the model, the
processor, `training_log.json` and `loss_curve.png` to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half

from ..compat import merged_rotary
from ..evaluation.inputs import collate
from ..routing.adapters import get_adapter
from .build import IMAGE_SIZE, build_config, build_processor, build_tokenizer
from .tasks import EVAL_SEED, TASK_TYPES
from .training_data import (
    ANSWER_END,
    GUIDES,
    MAX_DIGITS,
    NEIGHBOUR_SPLITS,
    NUM_CENTRE_CLASSES,
    NUM_COLOUR_CLASSES,
    TOKEN_PIXELS,
    TrainingStream,
    encode_conversation,
    field_sizes,
    held_out,
)

# The training stream's task order: the tasks that need the most tokens or steps come twice (lookup and existence
# are learnt first and need least)
TRAINING_MIX = ("lookup", "counting", "existence", "reading", "relation", "reading", "counting", "relation")
PROBE_SEED = EVAL_SEED + 1  # a held-out block for progress checks, disjoint from the final evaluation's


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token losses per example, answer tokens per example), next-token shifted."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return token_loss.sum(1), (labels != -100).sum(1)


@torch.no_grad()
def exact_match(model, batch: dict) -> torch.Tensor:
    """Per example: every answer token is the argmax given the true prefix, which is what greedy decoding emits."""
    inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:].to(model.device)
    scored = labels != -100
    return ((logits.argmax(-1) == labels) | ~scored).all(1).cpu()


def query_key_states(
    attn, hidden: torch.Tensor, cos_sin: tuple, query_at: torch.Tensor, heads: torch.Tensor, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (samples, queries, heads, head_dim), keys (samples, end, heads, head_dim)) of the `heads` of a
    Qwen2.5-VL or Llama attention layer, rotated as the layer rotates them from its input: the queries at positions
    `query_at` (samples, queries), and each sample's first `end` keys."""
    samples, length = hidden.shape[:2]
    # (samples, end, head_dim); Llama shares one table across the batch, Qwen has one per sample
    cos, sin = (merged_rotary(part, attn).expand(samples, -1, -1)[:, :end] for part in cos_sin)
    k = attn.k_proj(hidden[:, :end]).view(samples, end, -1, attn.head_dim)
    # index_select where indexing would do: the same values, and a far faster backward on CPU
    k = (k * cos[:, :, None] + rotate_half(k) * sin[:, :, None]).index_select(2, heads // attn.num_key_value_groups)
    flat_at = (torch.arange(samples, device=hidden.device)[:, None] * length + query_at).flatten()
    q = attn.q_proj(hidden.flatten(0, 1).index_select(0, flat_at)).view(*query_at.shape, -1, attn.head_dim)
    at = query_at[..., None].expand(-1, -1, attn.head_dim)
    q = q.index_select(2, heads)
    return q * cos.gather(1, at)[:, :, None] + rotate_half(q) * sin.gather(1, at)[:, :, None], k


def query_log_attention(
    attn, hidden: torch.Tensor, cos_sin: tuple, query_at: torch.Tensor, heads: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """(samples, heads, queries, keys) log attention probabilities of the `heads` at positions `query_at`
    (samples, queries), over the first `allowed.shape[-1]` keys (`allowed`: (samples, queries, keys), causal and
    padding), as eager attention computes them from the layer's input. Training runs sdpa (eager's mask building
    alone triples the step time on CPU) and recomputes only the rows a guide loss needs."""
    q, k = query_key_states(attn, hidden, cos_sin, query_at, heads, allowed.shape[-1])
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * attn.scaling
    return scores.masked_fill_(~allowed[:, None], float("-inf")).log_softmax(-1)


def answer_attention(
    attn,
    hidden: torch.Tensor,
    cos_sin: tuple,
    padding: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """(n, heads, keys) attention probabilities of the first `heads` heads at the (rows, positions) queries.
    A sample's queries share one pass over its keys (slot: each query's place among its sample's)."""
    samples, keys = hidden.shape[0], hidden.shape[1]
    slot = (F.one_hot(rows, samples).cumsum(0) - 1).gather(1, rows[:, None])[:, 0]
    query_at = torch.zeros(samples, int(slot.max()) + 1 if len(rows) else 1, dtype=torch.long, device=hidden.device)
    used = torch.zeros_like(query_at, dtype=torch.bool)
    query_at[rows, slot], used[rows, slot] = positions, True
    allowed = (torch.arange(keys, device=hidden.device) <= query_at[..., None]) & padding[:, None].bool()
    allowed |= ~used[..., None]  # unused slots see every key, so that no row of the softmax is empty
    log_probs = query_log_attention(attn, hidden, cos_sin, query_at, torch.arange(heads, device=hidden.device), allowed)
    return log_probs[rows, :, slot].exp()


def plot_curve(log: list[dict], path: Path, tasks: tuple[str, ...]) -> None:
    """Training loss per task against step, log scale, as a small PNG (PIL only: no plotting dependency)."""
    width, height, margin = 720, 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    steps = [row["step"] for row in log]
    values = [row["loss_by_task"][t] for row in log for t in tasks if row["loss_by_task"].get(t)]
    lo, hi = math.log10(max(min(values), 1e-4)), math.log10(max(values))
    hi = max(hi, lo + 1e-3)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * step / max(steps[-1], 1)
        y = height - margin - (height - 2 * margin) * (math.log10(max(loss, 1e-4)) - lo) / (hi - lo)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    colours = ("#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b")
    for index, task in enumerate(tasks):
        points = [xy(row["step"], row["loss_by_task"][task]) for row in log if row["loss_by_task"].get(task)]
        if len(points) > 1:
            draw.line(points, fill=colours[index % len(colours)], width=2)
        draw.text((margin + 10 + 110 * index, 15), task, fill=colours[index % len(colours)])
    for exponent in range(math.ceil(lo), math.floor(hi) + 1):
        draw.text((5, xy(0, 10**exponent)[1] - 6), f"1e{exponent}", fill="black")
    draw.text((width // 2 - 60, height - 30), f"step (0 .. {steps[-1]})", fill="black")
    draw.text((margin, height - margin + 5), "answer-token loss per task (log scale)", fill="gray")
    image.save(path)


def save(model, processor, out: Path) -> None:
    """Model (with greedy generation defaults) and processor, as `from_pretrained` expects them."""
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=8
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats a run, every option spelled out (defaults may change later)."""
    options = (
        f"--{key.replace('_', '-')} {','.join(value) if isinstance(value, tuple) else value}"
        for key, value in vars(args).items()
        if value is not None
    )
    return " ".join(["python -m alvts.demo.train", *options])


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    device = torch.device(args.device)
    if args.init_from:  # a second stage: the weights of an earlier run, fresh optimizer and schedule
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
        config = model.config
    else:
        config = build_config(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(device).train()
    pad_id = tokenizer.pad_token_id
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")

    probe_examples = held_out(args.probe_per_task, PROBE_SEED)
    adapter = get_adapter(model)
    probe = [encode_conversation(processor, e.image, [(e.question, e.answer)]) for e in probe_examples]
    probe = collate(probe, pad_id, adapter)
    probe_tasks = [e.task for e in probe_examples]

    stream = TrainingStream(processor, args.tasks, start=args.start_example, turns=args.turns)
    loader = DataLoader(
        stream, batch_size=args.batch_size, num_workers=args.workers, collate_fn=lambda items: items,
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
    )  # fmt: skip
    # Training-only heads and hooks (see token_targets and answer_guides), not part of the saved model: the colour and
    # centre of every merged visual token from the vision tower's output; each visual token's row, column, digit
    # order and neighbours, and what each answer position's question asks, from a decoder layer's output; and where
    # the answer positions look in the next two layers.
    hidden, grid = config.text_config.hidden_size, IMAGE_SIZE // TOKEN_PIXELS
    token_head = torch.nn.Linear(hidden, NUM_COLOUR_CLASSES + NUM_CENTRE_CLASSES).to(device)
    position_head = torch.nn.Linear(hidden, 2 * grid + MAX_DIGITS + 1 + sum(NEIGHBOUR_SPLITS)).to(device)
    field_classes = field_sizes()
    field_head = torch.nn.Linear(hidden, sum(field_classes.values())).to(device)
    captured: dict[str, torch.Tensor] = {}
    model.model.visual.register_forward_hook(lambda m, a, output: captured.update(visual=output.pooler_output))
    layers = model.model.language_model.layers
    layers[args.position_layer].register_forward_hook(
        lambda m, a, output: captured.update(decoder=output[0] if isinstance(output, tuple) else output)
    )
    guided = (args.position_layer + 1, args.position_layer + 2)
    for index in guided:  # each guided layer's attention input, for answer_attention
        layers[index].self_attn.register_forward_hook(
            lambda m, args, kwargs, output, i=index: captured.update(
                {i: (kwargs["hidden_states"], kwargs["position_embeddings"])}
            ),
            with_kwargs=True,
        )
    guided_heads = config.text_config.num_attention_heads // 2
    end_id = tokenizer.convert_tokens_to_ids(ANSWER_END)
    heads = (token_head, position_head, field_head)
    parameters = [*model.parameters(), *(p for head in heads for p in head.parameters())]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    splits = (NUM_COLOUR_CLASSES, NUM_CENTRE_CLASSES, grid, grid, MAX_DIGITS + 1, *NEIGHBOUR_SPLITS)

    def dense_loss(targets: torch.Tensor, image_positions: torch.Tensor) -> torch.Tensor:
        # The heads read RMS-normalised features: on raw ones, cross-entropy grows the visual features' norm ~70x, and
        # the image tokens' residual stream then drowns whatever the decoder writes into it (the image goes unused).
        visual, decoder = F.rms_norm(captured["visual"], (hidden,)), F.rms_norm(captured["decoder"], (hidden,))
        logits = torch.cat([token_head(visual), position_head(decoder[image_positions])], 1)
        parts = logits.split(splits, 1)
        loss = sum(F.cross_entropy(part, targets[:, i]) for i, part in enumerate(parts) if (targets[:, i] >= 0).any())
        # centres and digit orders are a few tokens per image: without their own mean, "none" swamps them (the
        # vision tower then never tells digits apart, and reading stays at chance)
        for i in (1, 4):
            marked = targets[:, i] > 0
            if marked.any():
                loss = loss + F.cross_entropy(parts[i][marked], targets[marked, i])
        return loss

    def guide_losses(guides: dict, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(question-field loss, attention loss) at the positions that predict each answer token (end excluded).
        The attention loss is the cross-entropy from answer_guides' targets to the attention of each of half the heads
        of each guided layer (the other heads stay free). Per head, not on the heads' mean: the mean's loss vanishes
        through saturated softmaxes, and one head then owns the sink for good (counting and existence stall)."""
        answer = (labels != -100) & (labels != end_id)
        rows, positions = answer.nonzero(as_tuple=True)
        positions = positions - 1
        decoder = F.rms_norm(captured["decoder"][rows, positions], (hidden,))
        field_logits = field_head(decoder).split(tuple(field_classes.values()), 1)
        fields = guides["fields"]
        field_loss = sum(
            (F.cross_entropy(logit, fields[:, i]) for i, logit in enumerate(field_logits) if (fields[:, i] >= 0).any()),
            decoder.new_zeros(()),
        )
        # (sink, visual tokens) positions of each guided row: vision_start, then the image pads in order
        input_ids = batch["input_ids"]
        image = input_ids[rows] == config.image_token_id
        sink = (input_ids[rows] == config.vision_start_token_id).int().argmax(1, keepdim=True)
        keys = torch.cat([sink, image.nonzero()[:, 1].view(len(rows), -1)], 1)
        head_keys, attention_loss = keys[:, None].expand(-1, guided_heads, -1), decoder.new_zeros(())
        for index, name in zip(guided, GUIDES[1:], strict=True):
            target = guides[name]
            hidden_states, cos_sin = captured[index]
            attention = answer_attention(
                layers[index].self_attn, hidden_states, cos_sin, batch["attention_mask"], rows, positions, guided_heads
            )
            probs = attention.gather(2, head_keys)
            has = target.sum(1) > 0
            if has.any():
                cross_entropy = -(target[:, None] * torch.log(probs + 1e-12)).sum(2).mean(1)
                attention_loss = attention_loss + cross_entropy[has].mean()
        return field_loss, attention_loss

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        decay = args.steps - args.warmup if args.decay_steps is None else args.decay_steps
        progress = max(0, step - (args.steps - decay)) / max(1, decay)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def unpack(items: list[dict]) -> tuple[list[str], torch.Tensor, dict, dict, torch.Tensor]:
        tasks = [item.pop("task") for item in items]
        targets = torch.cat([item.pop("token_targets") for item in items]).to(device)
        guides = {name: torch.cat([item.pop(name) for item in items]).to(device) for name in GUIDES}
        batch = {key: value.to(device, non_blocking=True) for key, value in collate(items, pad_id, adapter).items()}
        return tasks, targets, guides, batch, batch.pop("labels")

    started, batches = time.perf_counter(), iter(loader)
    if args.head_warmup:  # a later stage's training heads are new: their first gradients would wreck the model
        model.requires_grad_(False)
        head_optimizer = torch.optim.AdamW([p for head in heads for p in head.parameters()], lr=3e-3)
        for index, items in zip(range(args.head_warmup), batches, strict=False):
            _, targets, guides, batch, labels = unpack(items)
            model(**batch)
            head_loss = dense_loss(targets, batch["input_ids"] == config.image_token_id)
            head_loss = head_loss + guide_losses(guides, batch, labels)[0]
            head_optimizer.zero_grad(set_to_none=True)
            head_loss.backward()
            head_optimizer.step()
            if (index + 1) % args.log_every == 0:
                print(json.dumps({"head_warmup": index + 1, "head_loss": head_loss.item()}), flush=True)
        model.requires_grad_(True)

    log, window = [], []
    for step, items in zip(range(args.steps), batches, strict=False):
        tasks, targets, guides, batch, labels = unpack(items)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss_sum, counts = per_example_loss(model(**batch).logits, labels)
        loss = loss_sum.sum() / counts.sum()
        token_loss = dense_loss(targets, batch["input_ids"] == config.image_token_id)
        field_loss, attention_loss = guide_losses(guides, batch, labels)
        optimizer.zero_grad(set_to_none=True)
        guide_loss = token_loss + field_loss + attention_loss
        (loss + args.guide_loss_weight * guide_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        guides_now = torch.stack([token_loss, field_loss, attention_loss]).detach()
        window.append((tasks, (loss_sum / counts).detach(), guides_now))
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:  # the only host syncs of a step
            by_task = {t: [] for t in TASK_TYPES}
            for step_tasks, per_example, _ in window:
                for task, value in zip(step_tasks, per_example.tolist(), strict=True):
                    by_task[task].append(value)
            guide_means = torch.stack([guide for *_, guide in window]).mean(0).tolist()
            row = {
                "step": step + 1,
                "seconds": round(time.perf_counter() - started, 1),
                "lr": lr_at(step),
                "loss_by_task": {t: sum(v) / len(v) for t, v in by_task.items() if v},
                **dict(zip(("token_loss", "field_loss", "attention_loss"), guide_means, strict=True)),
            }
            if step + 1 == args.steps or args.probe_every and (step + 1) % (args.log_every * args.probe_every) == 0:
                model.eval()
                hits = exact_match(model, probe).tolist()
                save(model, processor, out)  # a usable checkpoint at every probe
                model.train()
                row["probe_accuracy"] = {
                    t: sum(h for h, pt in zip(hits, probe_tasks, strict=True) if pt == t) / args.probe_per_task
                    for t in TASK_TYPES
                }
            log.append(row)
            window = []
            print(json.dumps(row), flush=True)

    elapsed = time.perf_counter() - started
    save(model.eval(), processor, out)
    summary = {
        "command": command_line(args),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
        "torch": torch.__version__,
        "train_seconds": round(elapsed, 1),
        "examples_seen": (args.head_warmup + args.steps) * args.batch_size,
        "log": log,
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    plot_curve(log, out / "loss_curve.png", TASK_TYPES)
    print(f"trained {args.steps} steps in {elapsed / 60:.1f} min; saved to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="alvts/demo/v1/model")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--decay-steps", type=int, help="cosine-decay the last this many steps (default: all after warmup; 0: constant)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", help="start from this checkpoint's weights (a second training stage)")
    parser.add_argument("--start-example", type=int, default=0, help="first training-stream index (after a stage)")
    parser.add_argument(
        "--head-warmup",
        type=int,
        default=0,
        help="with --init-from: first fit the new training-only heads alone, the model frozen, for this many batches",
    )
    parser.add_argument("--tasks", type=lambda text: tuple(text.split(",")), default=TRAINING_MIX)
    parser.add_argument("--turns", type=int, default=6, help="questions per training image (answers all scored)")
    parser.add_argument("--guide-loss-weight", type=float, default=1.0, help="weight of the training-only losses")
    parser.add_argument(
        "--position-layer",
        type=int,
        default=1,
        help="decoder layer taught positions and questions (the next two are taught where to look)",
    )
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--probe-every",
        type=int,
        default=4,
        help="probe accuracy every this many log lines (0: at the end only)",
    )
    parser.add_argument("--probe-per-task", type=int, default=20)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
