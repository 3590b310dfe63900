"""`alvts-calibrate`: fit a selector pack for a vision-language model from the command line.

MODEL is a recipe alias (`<alias>.toml` gives the defaults, flags override them), "demo", a local folder or a Hub
id. The fitting flags are `CalibrationConfig`'s settings. Arguments and calibration data are checked before the
model is loaded; bad arguments, unusable data and weights that are neither local nor downloadable end with one
message on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..calibration.config import CalibrationConfig
from ..options import add_arguments, settings_of
from .common import CommandError, first_line, load_checked_config, load_model_and_processor, locate_model, run_command
from .recipes import MODEL, RECIPES_ENV, CalibrationData, available_recipes, load_recipe

PROG = "alvts-calibrate"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults are CalibrationConfig's, a recipe's values replace them (see parse_args)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit a selector pack (low-rank visual token selectors, one per decoder layer) for a model.",
        epilog=f"Recipes found: {', '.join(available_recipes()) or 'none'} (searched in ${RECIPES_ENV}, ./recipes/ "
        "and alvts's own).",
    )
    add = parser.add_argument
    add("--model", required=True, help=MODEL.help)
    add_arguments(parser, CalibrationData)
    add_arguments(parser, CalibrationConfig)
    add("--out", type=Path, help="output folder (default: selectors/<alias or model name>-r<rank>)")
    add("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA if available (default)")
    add("--push-to-hub", metavar="REPO", help="also upload the pack to this Hub model repo")
    add("--trust-remote-code", action="store_true", help="allow model code from the Hub repo to run")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the recipe's values over the defaults, checked; `model` becomes the model to load and `config`
    the `CalibrationConfig`."""
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
    try:
        args.config = CalibrationConfig(**{name: getattr(args, name) for name in settings_of(CalibrationConfig)})
    except ValueError as err:
        parser.error(str(err))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but no CUDA device is available")
    if args.push_to_hub:
        from huggingface_hub import get_token

        if get_token() is None:
            parser.error("--push-to-hub needs a Hugging Face login: run `hf auth login` or set HF_TOKEN")
    if args.out is None:
        name = alias if recipe is not None else Path(args.model.rstrip("/")).name
        args.out = Path("selectors") / f"{name}-r{args.config.rank}"
    return args


def encode_samples(processor: Any, rows: Sequence[tuple[Any, str]], device: Any) -> Iterator[dict]:
    """Single-sample model inputs (the prompt through the chat template, no answer) on `device`, one at a time."""
    from ..evaluation.inputs import encode_example

    for image, text in rows:
        yield {key: value.to(device) for key, value in encode_example(processor, image, text).items()}


class _Sized:
    """An iterator that knows its length (the progress bar's total) without holding every item."""

    def __init__(self, items: Iterator, length: int):
        self.items, self.length = items, length

    def __iter__(self) -> Iterator:
        return self.items

    def __len__(self) -> int:
        return self.length


def metrics_table(pack: Any) -> str:
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


def load_rows(args: argparse.Namespace) -> tuple[list, dict]:
    """The calibration rows and how the pack records their source."""
    from ..evaluation.data import DataError, load_calibration_rows

    info = {
        "name": args.dataset,
        "split": args.split,
        "image_column": args.image_column,
        "text_column": args.text_column,
    }
    try:
        if args.dataset is None:
            from ..demo.rows import SUITE_NAME, suite_calibration_rows

            return suite_calibration_rows(args.num_samples), info | {"name": SUITE_NAME}
        rows = load_calibration_rows(
            args.dataset, args.split, args.image_column, args.text_column, args.num_samples, args.config.seed
        )
    except DataError as err:
        raise CommandError(str(err)) from None
    return rows, info


def run(args: argparse.Namespace) -> None:
    """Check the model's config and the data, then load the model, calibrate, report, and push if asked."""
    path = locate_model(args.model)
    model_config = load_checked_config(path, args.model, args.trust_remote_code)
    num_layers = model_config.get_text_config().num_hidden_layers
    if args.config.layers is not None and args.config.layers[-1] >= num_layers:
        raise CommandError(
            f"--layers asks for layer {args.config.layers[-1]}; {args.model} has layers 0-{num_layers - 1}."
        )
    rows, dataset_info = load_rows(args)
    print(f"Calibrating {args.model} on {len(rows)} samples from {dataset_info['name']} into {args.out}")
    model, processor = load_model_and_processor(
        path, args.model, model_config, args.device, args.dtype, args.trust_remote_code
    )
    from ..calibration import calibrate

    samples = _Sized(encode_samples(processor, rows, model.device), len(rows))
    try:
        pack = calibrate(model, samples, args.config, args.out, base_model=args.model, dataset_info=dataset_info)
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
