"""`alvts-calibrate`: fit a selector pack for a vision-language model from the command line.

MODEL is a recipe alias (`calibrate/<alias>.toml` gives the defaults, flags override them), "demo", a local folder
or a Hub id. Arguments and calibration data are checked before the model is loaded; bad arguments, unusable data and
weights that are neither local nor downloadable end with one message on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from huggingface_hub import get_token
from PIL import Image
from transformers import ProcessorMixin

from ..calibration import CalibrationConfig, calibrate
from ..data import BUILTIN_NAME, DataError, load_calibration_rows
from ..inputs import encode_example
from ..pack import SelectorPack
from ..policies import SCORES
from ..recipes import RECIPES_ENV, available_recipes, load_recipe
from .common import DTYPES, CommandError, first_line, load_model_and_processor, run_command

PROG = "alvts-calibrate"
LOSSES = ("mse+kl", "mse")
INITS = ("whitened", "svd")


def parse_layers(spec: str) -> list[int] | None:
    """`--layers`: "all" (None: every decoder layer) or indices and inclusive ranges such as "0-3,6"."""
    if spec.strip() == "all":
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise argparse.ArgumentTypeError(f"invalid layer spec {spec!r}: use 'all' or indices and ranges, '0-3,6'")
        layers.update(range(int(first), int(last if dash else first) + 1))
    return sorted(layers)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults are CalibrationConfig's, a recipe's values replace them (see parse_args)."""
    defaults = CalibrationConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit a selector pack (low-rank visual token selectors, one per decoder layer) for a model.",
        epilog=f"Recipes found: {', '.join(available_recipes()) or 'none'} (searched in ${RECIPES_ENV}, ./calibrate/ "
        "and the alvts checkout's calibrate/).",
    )
    add = parser.add_argument
    add("--model", required=True, help="recipe alias, 'demo', local model folder or Hub model id")
    add("--rank", type=int, help="selector rank (required unless the recipe sets it)")
    add("--dataset", help="Hub dataset id, or a local folder / .jsonl / .json / .parquet file (default: task suite)")
    add("--split", default="train", help="dataset split (default: %(default)s)")
    add("--image-column", default="image", help="column of images or image paths (default: %(default)s)")
    add("--text-column", default="question", help="column of prompts, e.g. questions (default: %(default)s)")
    add("--num-samples", type=int, default=256, help="calibration samples, at least 2 (default: %(default)s)")
    add("--layers", type=parse_layers, default="all", help="decoder layers to fit: 'all' or e.g. '0-3,6'")
    add("--default-keep", type=float, default=defaults.default_keep, help="the pack's default keep ratio (0, 1]")
    add("--out", type=Path, help="output folder (default: selectors/<alias or model name>-r<rank>)")
    add("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA if available (default)")
    add("--dtype", choices=DTYPES, help="model weights dtype (default: bf16 on CUDA, fp32 on CPU)")
    add("--seed", type=int, default=defaults.seed, help="held-out split, refinement and local data order")
    add("--stage-b-steps", type=int, default=defaults.stage_b_steps, help="refinement steps per layer, 0 to skip")
    add("--loss", choices=LOSSES, default=defaults.loss, help="refinement loss (default: %(default)s)")
    add("--init", choices=INITS, default=defaults.init, help="Stage A: data-whitened, or the data-free SVD of B")
    add("--score", choices=SCORES, default=defaults.score, help="importance score; t2v alone is an ablation")
    add("--push-to-hub", metavar="REPO", help="also upload the pack to this Hub model repo")
    add("--trust-remote-code", action="store_true", help="allow model code from the Hub repo to run")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the recipe's values over the defaults, checked; `model` becomes the model to load."""
    parser = build_parser()
    args = parser.parse_args(argv)
    alias = args.model
    try:
        recipe = load_recipe(alias)
    except ValueError as err:
        parser.error(str(err))
    if recipe is not None:
        model = recipe.pop("model")
        parser.set_defaults(**recipe)
        args = parser.parse_args(argv)
        args.model = model
    _check_args(parser, args, has_recipe=recipe is not None)
    if args.out is None:
        name = alias if recipe is not None else Path(args.model.rstrip("/")).name
        args.out = Path("selectors") / f"{name}-r{args.rank}"
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, has_recipe: bool) -> None:
    """Refuse values no run can use, from the command line or a recipe, before any data or model is loaded."""
    if args.rank is None:
        parser.error(f"--rank is required{'' if has_recipe else f': {args.model!r} is no recipe alias'}")
    checks = [
        (args.rank >= 1, f"--rank must be at least 1, got {args.rank}"),
        (args.num_samples >= 2, f"--num-samples must be at least 2 (some are held out), got {args.num_samples}"),
        (args.stage_b_steps >= 0, f"--stage-b-steps must be 0 or more, got {args.stage_b_steps}"),
        (0 < args.default_keep <= 1, f"--default-keep must be in (0, 1], got {args.default_keep}"),
        (args.dtype is None or args.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}"),
        (args.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {args.loss!r}"),
        (args.init in INITS, f"--init must be one of {', '.join(INITS)}, got {args.init!r}"),
        (args.score in SCORES, f"--score must be one of {', '.join(SCORES)}, got {args.score!r}"),
        (args.device != "cuda" or torch.cuda.is_available(), "--device cuda, but no CUDA device is available"),
        (
            not args.push_to_hub or get_token() is not None,
            "--push-to-hub needs a Hugging Face login: run `hf auth login` or set HF_TOKEN",
        ),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)


def encode_samples(
    processor: ProcessorMixin, rows: Sequence[tuple[Image.Image, str]], device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Single-sample model inputs (the prompt through the chat template, no answer) on `device`, one at a time."""
    for image, text in rows:
        yield {key: value.to(device) for key, value in encode_example(processor, image, text).items()}


def metrics_table(pack: SelectorPack) -> str:
    """Per-layer held-out agreement with the oracle: recall at the ratio nearest the default keep, Spearman, L2."""
    metrics = pack.config.metrics
    ratios = [name.removeprefix("AB_recall@") for name in next(iter(metrics.values())) if "AB_recall@" in name]
    ratio = min(ratios, key=lambda r: abs(float(r) - pack.config.default_keep))
    columns = {
        f"A_recall@{ratio}": f"recall@{ratio} stage A",
        f"AB_recall@{ratio}": f"recall@{ratio} A+B",
        "AB_spearman": "spearman A+B",
        "AB_l2": "L2 A+B",
    }
    lines = ["layer  " + "  ".join(columns.values())]
    for layer, values in sorted(metrics.items(), key=lambda item: int(item[0])):
        lines.append(f"{layer:>5}  " + "  ".join(f"{values[key]:>{len(head)}.3f}" for key, head in columns.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """Load and check the data, then the model, calibrate, report, and push if asked."""
    try:
        rows = load_calibration_rows(
            args.dataset, args.split, args.image_column, args.text_column, args.num_samples, args.seed
        )
    except DataError as err:
        raise CommandError(str(err)) from None
    print(f"Calibrating {args.model} on {len(rows)} samples from {args.dataset or BUILTIN_NAME} into {args.out}")
    model, processor = load_model_and_processor(
        args.model, args.device, args.dtype, args.layers, args.trust_remote_code
    )
    config = CalibrationConfig(
        rank=args.rank,
        layers=args.layers,
        default_keep=args.default_keep,
        stage_b_steps=args.stage_b_steps,
        loss=args.loss,
        init=args.init,
        score=args.score,
        seed=args.seed,
    )
    dataset_info = {
        "name": args.dataset or BUILTIN_NAME,
        "split": args.split,
        "image_column": args.image_column,
        "text_column": args.text_column,
    }
    samples = encode_samples(processor, rows, model.device)
    try:
        pack = calibrate(model, samples, config, args.out, base_model=args.model, dataset_info=dataset_info)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print("Held-out agreement with the attention oracle (stage A: closed form; A+B: after refinement):")
    print(metrics_table(pack))
    print(f"Saved the selector pack to {args.out}; use it with alvts.apply(model, {str(args.out)!r}).")
    if args.push_to_hub:
        try:
            print(f"Pushed to {pack.push_to_hub(args.push_to_hub)}")
        except OSError as err:
            raise CommandError(
                f"Pushing to {args.push_to_hub!r} failed ({first_line(err)}); the pack is saved in {args.out}. Push "
                f"it later with SelectorPack.from_pretrained({str(args.out)!r}).push_to_hub({args.push_to_hub!r})."
            ) from None


def main(argv: Sequence[str] | None = None) -> None:
    """`alvts-calibrate`: exit status 0 on success, 2 with one message for anything the user can fix."""
    args = parse_args(argv)
    run_command(PROG, lambda: run(args), f"run the same command again to resume from {args.out}")


if __name__ == "__main__":
    main()
