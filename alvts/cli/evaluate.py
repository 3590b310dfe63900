"""`alvts-eval`: accuracy of routed models against the full model and published baselines at equal budget.

    alvts-eval --model demo --pack alvts/demo/pack --keep 0.11 0.22 0.33 --json eval.json --plot eval.png

Methods are policy names ("alvts" is the --pack), optionally with options: `fastv:k=1`, `random:seed=3`; a name
ending in "-once" (`alvts-once`, `oracle-once`) selects at the first dropping layer only and keeps that set. Arguments,
methods, budgets, the pack and the data are checked before the model is loaded; anything the user can fix ends with
one message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..evaluation.scoring import SCORERS
from ..policies import POLICIES, SelectOncePolicy, build_policy, get_policy, policy_options
from ..routing.budget import KEEP
from ..routing.policy import Policy
from .common import DTYPES, CommandError, load_checked_config, load_model_and_processor, locate_model, run_command
from .recipes import load_recipe

PROG = "alvts-eval"
BASELINES = ("oracle", "fastv", "pdrop", "random", "random-dense", "v2drop", "divprune")


def _keep(text: str) -> float:
    try:
        return KEEP.parse("--keep", text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (a share of each sample's visual tokens)") from None


def _at_least_one(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    options = "; ".join(
        f"{name}: {', '.join(f'{k} ({v})' for k, v in policy_options(name).items())}"
        for name in POLICIES
        if policy_options(name)
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score a routed model (a selector pack and baseline policies) against the full model.",
        epilog=f"Methods: alvts (the --pack; option uncovered=POLICY routes the layers it does not cover), "
        f"{', '.join(sorted(set(POLICIES) - {'full'}))}; the full model is always run as the reference. Options: "
        f"{options}.",
    )
    add = parser.add_argument
    add("--model", required=True, help="'demo', a recipe alias, a local model folder or a Hub model id")
    add("--pack", help="selector pack folder or Hub id (the 'alvts' method)")
    add("--keep", type=_keep, nargs="+", default=[0.11, 0.22, 0.33], help="keep ratios, each in (0, 1]")
    add("--methods", help="comma-separated methods (default: alvts if --pack is given, then every baseline)")
    add("--tasks", default="all", help="'all' or comma-separated tasks (task suite, or the --task-column values)")
    add("--num-samples", type=_at_least_one, default=50, help="questions per task (task suite) or rows in all")
    add("--batch-size", type=_at_least_one, default=16)
    add("--max-new-tokens", type=_at_least_one, default=16)
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


@dataclass(frozen=True)
class PackMethod:
    """Method "alvts[-once][:uncovered=NAME]": the --pack's selector, loaded once the arguments are checked."""

    once: bool = False
    uncovered: str | None = None

    def policy(self, pack: Any) -> Policy:
        selector = pack.selector.with_uncovered(self.uncovered)
        return SelectOncePolicy(selector) if self.once else selector


def parse_methods(spec: str | None, pack: str | None, seed: int) -> dict[str, Policy | PackMethod]:
    """Method labels to policies, every option checked against the policy's declared settings: names from POLICIES
    with `:key=value` options, "alvts" for the pack (a `PackMethod` until the pack is loaded). Raises ValueError for
    an unknown name or a bad option."""
    names = [m.strip() for m in spec.split(",")] if spec else [*(["alvts"] if pack else []), *BASELINES]
    methods: dict[str, Policy | PackMethod] = {}
    for label in filter(None, names):
        name, *pairs = label.split(":")
        once, name = name.endswith("-once"), name.removesuffix("-once")
        options = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key or not value:
                raise ValueError(f"bad option {pair!r} in method {label!r}: write {name}:KEY=VALUE")
            options[key] = value
        if name == "full":
            continue  # always run: the reference
        if name == "alvts":
            if pack is None:
                raise ValueError("method 'alvts' is the selector pack: pass --pack PATH_OR_HUB_ID.")
            if set(options) - {"uncovered"}:
                raise ValueError(f"method 'alvts' takes one option, uncovered=POLICY; got {sorted(options)}")
            if "uncovered" in options:
                get_policy(options["uncovered"])  # a registered name
            methods[label] = PackMethod(once, options.get("uncovered"))
            continue
        policy = build_policy(name, options, seed=seed)
        methods[label] = SelectOncePolicy(policy) if once else policy
    if not methods:
        raise ValueError("--methods names no method besides the full model.")
    return methods


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments and methods: anything wrong exits 2 here, before torch is imported."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.methods = parse_methods(args.methods, args.pack, args.seed)
    except ValueError as err:
        parser.error(str(err))
    try:
        recipe = load_recipe(args.model) if "/" not in args.model else None
    except ValueError as err:
        parser.error(str(err))
    args.model_id = recipe["model"] if recipe else args.model
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Check the pack, the model's config against every method, and the data; then load the model, evaluate, print
    and write the results."""
    from ..evaluation.report import check_plotting, format_table, plot_accuracy

    if args.plot:
        try:
            check_plotting()
        except ImportError as err:
            raise CommandError(str(err)) from None
    methods, pack = args.methods, None
    if args.pack:
        from ..packs import SelectorPack

        try:
            pack = SelectorPack.from_pretrained(args.pack)
        except (OSError, ValueError) as err:
            raise CommandError(f"cannot load the selector pack {args.pack!r}: {err}") from None
        methods = {label: m.policy(pack) if isinstance(m, PackMethod) else m for label, m in methods.items()}
    path = locate_model(args.model_id)
    config = load_checked_config(path, args.model_id, args.trust_remote_code)
    num_layers = config.get_text_config().num_hidden_layers
    for label, policy in methods.items():
        try:
            policy.check_layers(num_layers)
        except ValueError as err:
            raise CommandError(f"method {label!r} cannot run on {args.model}: {err}") from None
    if pack is not None and pack.config.fingerprint.get("num_layers") not in (None, num_layers):
        raise CommandError(
            f"the selector pack {args.pack!r} was fitted on a {pack.config.fingerprint['num_layers']}-layer model; "
            f"{args.model} has {num_layers} layers. Use a pack fitted on this model (alvts-calibrate)."
        )
    samples, dataset_name = _load_samples(args)
    model, processor = load_model_and_processor(path, args.model_id, config, args.device, args.dtype,
                                                args.trust_remote_code)  # fmt: skip
    import torch

    from ..evaluation.harness import evaluate

    torch.manual_seed(args.seed)
    try:
        if pack is not None:
            pack.check_model(model)
        rows = evaluate(model, processor, samples, methods, args.keep, args.batch_size, args.max_new_tokens,
                        args.scorer)  # fmt: skip
    except ValueError as err:  # e.g. a pack fitted on another model
        raise CommandError(str(err)) from None
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = _report(args, methods, pack, dataset_name, rows)
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_accuracy(rows, args.plot, title=args.model)}")
    return rows


def _load_samples(args: argparse.Namespace) -> tuple[list, str]:
    from ..evaluation.data import DataError, load_eval_rows

    tasks = None if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
    try:
        if args.dataset is None:
            from ..demo.rows import SUITE_NAME, suite_eval_rows

            return suite_eval_rows(args.num_samples, tasks), SUITE_NAME
        samples = load_eval_rows(
            args.dataset, args.split, args.image_column, args.text_column, args.answer_column, args.task_column,
            args.num_samples, args.seed, tasks,
        )  # fmt: skip
    except DataError as err:
        raise CommandError(str(err)) from None
    return samples, args.dataset


def _report(args: argparse.Namespace, methods: dict, pack: Any, dataset: str, rows: list[dict]) -> dict:
    import torch
    import transformers

    return {
        "model": args.model,
        "pack": None if pack is None else pack.describe(),
        "dataset": dataset,
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
