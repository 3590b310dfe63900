"""`alvts-eval`: accuracy of routed models against the full model and published baselines at equal budget.

    alvts-eval --model demo --pack selectors/demo --keep 0.11 0.22 0.33 --json eval.json --plot eval.png

Methods are policy names ("alvts" is the --pack), optionally with options: `fastv:k=1`, `random:seed=3`; a name
ending in "-once" (`alvts-once`, `oracle-once`) selects at the first dropping layer only and keeps that set. Arguments,
methods, budgets, the pack and the data are checked before the model is loaded; anything the user can fix ends with
one message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

from .. import __version__
from ..baselines import SelectOncePolicy
from ..data import BUILTIN_NAME, DataError, load_eval_rows
from ..evaluate import SCORERS, evaluate
from ..pack import SelectorPack
from ..policies import POLICIES, Policy
from ..recipes import load_recipe
from ..report import check_plotting, format_table, plot_accuracy
from .common import DTYPES, CommandError, load_checked_config, load_model_and_processor, run_command

PROG = "alvts-eval"
BASELINES = ("oracle", "fastv", "pdrop", "random", "random-dense", "v2drop", "divprune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score a routed model (a selector pack and baseline policies) against the full model.",
        epilog=f"Methods: alvts (the --pack), {', '.join(sorted(set(POLICIES) - {'full'}))}; the full model is "
        "always run as the reference.",
    )
    add = parser.add_argument
    add("--model", required=True, help="'demo', a recipe alias, a local model folder or a Hub model id")
    add("--pack", help="selector pack folder or Hub id (the 'alvts' method)")
    add("--keep", type=float, nargs="+", default=[0.11, 0.22, 0.33], help="keep ratios, each in (0, 1]")
    add("--methods", help="comma-separated methods (default: alvts if --pack is given, then every baseline)")
    add("--tasks", default="all", help="'all' or comma-separated tasks (task suite, or the --task-column values)")
    add("--num-samples", type=int, default=50, help="questions per task (task suite) or rows in all (other data)")
    add("--batch-size", type=int, default=16)
    add("--max-new-tokens", type=int, default=16)
    add("--dataset", help="Hub dataset id, or a local folder / .jsonl / .json / .parquet (default: the task suite)")
    add("--split", default="train", help="dataset split (default: %(default)s, what local files load as)")
    add("--image-column", default="image")
    add("--text-column", default="question")
    add("--answer-column", default="answer")
    add("--task-column", default="task", help="optional: rows are grouped by it for the per-task tables")
    add("--scorer", choices=SCORERS, default="normalised", help="normalised: case, spaces, final '.' do not count")
    add("--device", choices=("auto", "cuda", "cpu"), default="auto")
    add("--dtype", choices=DTYPES, help="model weights dtype (default: bf16 on CUDA, fp32 on CPU)")
    add("--seed", type=int, default=0, help="seed of random policies and of the local data order")
    add("--json", type=Path, help="write the rows, model, methods and versions here")
    add("--plot", type=Path, help="draw accuracy against compression into this PNG (needs matplotlib)")
    add("--trust-remote-code", action="store_true")
    return parser


def parse_methods(spec: str | None, pack: str | None, seed: int) -> dict[str, Policy | str]:
    """Method labels to policies: names from POLICIES with `:key=value` options, "alvts" for the pack (a placeholder
    until the pack is loaded). Raises CommandError for an unknown name or option."""
    names = [m.strip() for m in spec.split(",")] if spec else [*(["alvts"] if pack else []), *BASELINES]
    methods: dict[str, Policy | str] = {}
    for label in filter(None, names):
        name, *options = label.split(":")
        once, name = name.endswith("-once"), name.removesuffix("-once")
        if name == "full":
            continue  # always run: the reference
        if name == "alvts":
            if pack is None or options:
                raise CommandError("method 'alvts' is the selector pack: pass --pack PATH_OR_HUB_ID (no options).")
            methods[label] = "alvts-once" if once else "alvts"
            continue
        if name not in POLICIES:
            raise CommandError(f"unknown method {name!r} in --methods; use alvts or one of {', '.join(POLICIES)}.")
        cls = POLICIES[name]
        accepted = list(inspect.signature(cls).parameters)
        kwargs = {"seed": seed} if "seed" in accepted else {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in accepted or not value:
                raise CommandError(
                    f"bad option {option!r} for method {name!r}: write {name}:KEY=VALUE with KEY one of "
                    f"{accepted or 'none (it takes no options)'}."
                )
            kwargs[key] = _number(value)
        try:
            methods[label] = SelectOncePolicy(cls(**kwargs)) if once else cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise CommandError(f"bad options for method {label!r}: {err}") from None
    if not methods:
        raise CommandError("--methods names no method besides the full model.")
    return methods


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; bad --keep, --num-samples or --batch-size values exit 2 here."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    bad_keep = [k for k in args.keep if not 0 < k <= 1]
    if bad_keep:
        parser.error(f"--keep values must be in (0, 1] (a share of each sample's visual tokens), got {bad_keep}")
    if args.num_samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--num-samples, --batch-size and --max-new-tokens must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    try:
        recipe = load_recipe(args.model) if "/" not in args.model else None
    except ValueError as err:
        parser.error(str(err))
    args.model_id = recipe["model"] if recipe else args.model
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Check methods, budgets, pack, config and data; then load the model, evaluate, print and write the results."""
    methods = parse_methods(args.methods, args.pack, args.seed)
    if args.plot:
        try:
            check_plotting()
        except ImportError as err:
            raise CommandError(str(err)) from None
    if args.pack:
        try:
            pack = SelectorPack.from_pretrained(args.pack)
        except (OSError, ValueError) as err:
            raise CommandError(f"cannot load the selector pack {args.pack!r}: {err}") from None
        packed = {"alvts": pack, "alvts-once": SelectOncePolicy(pack.selector)}
        methods = {label: packed.get(policy, policy) for label, policy in methods.items()}
    load_checked_config(args.model_id, args.trust_remote_code)
    tasks = None if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
    try:
        samples = load_eval_rows(
            args.dataset, args.split, args.image_column, args.text_column, args.answer_column, args.task_column,
            args.num_samples, args.seed, tasks,
        )  # fmt: skip
    except DataError as err:
        raise CommandError(str(err)) from None
    model, processor = load_model_and_processor(args.model_id, args.device, args.dtype, None, args.trust_remote_code)
    torch.manual_seed(args.seed)
    try:
        if args.pack:
            pack.check_model(model)
        rows = evaluate(
            model, processor, samples, methods, args.keep, args.batch_size, args.max_new_tokens, args.scorer
        )
    except ValueError as err:  # e.g. a pack fitted on another model
        raise CommandError(str(err)) from None
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_report(args, methods, rows), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_accuracy(rows, args.plot, title=args.model)}")
    return rows


def _report(args: argparse.Namespace, methods: dict, rows: list[dict]) -> dict:
    return {
        "model": args.model,
        "pack": args.pack,
        "dataset": args.dataset or BUILTIN_NAME,
        "tasks": list(dict.fromkeys(row["task"] for row in rows if row["task"] != "mean")),
        "scorer": args.scorer,
        "methods": {label: repr(policy) for label, policy in methods.items()},
        "command": " ".join([PROG, *args.argv]),
        "rows": rows,
        "versions": {
            "alvts": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
    }


def main(argv: Sequence[str] | None = None) -> None:
    """`alvts-eval`: exit status 0 on success, 2 with one message for anything the user can fix."""
    args = parse_args(argv)
    run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
