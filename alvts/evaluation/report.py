"""Evaluation rows as a text table per task and as a plot of accuracy retained against visual tokens kept
(matplotlib, an optional extra); accuracies carry 95% Wilson intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

PLOT_HINT = "Plotting needs matplotlib: pip install 'alvts[plot]' (or pip install matplotlib)."


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on `n` questions (it always holds the proportion; at 0 and
    1 rounding would put a bound a hair inside it)."""
    if n == 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(accuracy, centre - half)), min(1.0, max(accuracy, centre + half))


def out_of_reach(rows: Sequence[dict]) -> dict[str, list[tuple[float, str]]]:
    """Per method, the budgets it could not reach and why (one reason per method and keep)."""
    found: dict[str, dict[float, str]] = {}
    for row in rows:
        if "note" in row:
            found.setdefault(row["method"], {})[row["keep"]] = row["note"].removeprefix("out of reach: ")
    return {method: sorted(by_keep.items()) for method, by_keep in found.items()}


def format_table(rows: Sequence[dict]) -> str:
    """One block per task: method, keep (and the effective keep where a method's schedule differs), accuracy with
    its 95% interval, % of full accuracy retained, agreement with the full model's answers, visual tokens per layer
    and prefill FLOPs relative to full; then one line per method and budget it could not reach, with the reason."""
    header = (
        f"{'method':<16}{'keep':>6}{'eff.':>6}{'accuracy':>10}{'95% CI':>14}{'retained':>10}{'agreement':>11}"
        f"{'vis/layer':>11}{'FLOPs':>8}"
    )
    blocks = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task and "note" not in row]
        n = next((row["n"] for row in task_rows), 0)
        lines = [f"task: {task} (n={n})", header]
        for row in task_rows:
            effective = row.get("effective_keep")
            shown = "" if effective is None or abs(effective - row["keep"]) < 5e-4 else f"{effective:.2f}"
            low, high = wilson_interval(row["accuracy"], row["n"])
            retained = "-" if row["retained"] is None else f"{100 * row['retained']:.1f}%"
            lines.append(
                f"{row['method']:<16}{row['keep']:>6.2f}{shown:>6}{row['accuracy']:>10.3f}"
                f"{f'[{low:.2f}, {high:.2f}]':>14}{retained:>10}{row['agreement']:>11.3f}"
                f"{row['visual_tokens_per_layer']:>11.1f}{row['flops_ratio']:>8.3f}"
            )
        blocks.append("\n".join(lines))
    missing = out_of_reach(rows)
    if missing:
        lines = ["out of reach (no row above):"]
        for method, reasons in missing.items():
            keeps = ", ".join(f"{keep:g}" for keep, _ in reasons)
            lines.append(f"  {method} at keep {keeps}: {reasons[0][1]}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def check_plotting() -> None:
    """Raise ImportError with the install hint if matplotlib is missing (checked before any model work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_HINT) from None


def plot_accuracy(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """`accuracy_figure` written to `path` as a PNG."""
    import matplotlib.pyplot as plt

    figure = accuracy_figure(rows, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def accuracy_figure(rows: Sequence[dict], title: str = "", columns: int = 3):
    """Per task, a panel of % of full accuracy retained against the share of visual tokens kept per layer, one
    line per method with 95% interval bars; panels in a grid, the legend outside them, and the methods that could
    not reach a budget named in a note."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    columns = min(columns, len(tasks))
    grid_rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(
        grid_rows, columns, figsize=(3.4 * columns + 2.2, 3.0 * grid_rows), squeeze=False, sharex=True, sharey=True
    )
    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != "full" and "note" not in row))
    colours = {method: plt.cm.tab10(i % 10) for i, method in enumerate(methods)}
    for ax, task in zip(axes.flat, tasks, strict=False):
        scored = [row for row in rows if row["task"] == task and "note" not in row]
        full = next(row for row in scored if row["method"] == "full")
        ax.axhline(100, color="black", linestyle="--", linewidth=1)
        for method in methods:
            points = sorted(
                (row["visual_fraction"], row["accuracy"], row["n"])
                for row in scored
                if row["method"] == method and full["accuracy"] > 0
            )
            if not points:
                continue
            x = [p[0] for p in points]
            y = [100 * p[1] / full["accuracy"] for p in points]
            bounds = [wilson_interval(p[1], p[2]) for p in points]
            error = [
                [yi - 100 * low / full["accuracy"] for yi, (low, _) in zip(y, bounds, strict=True)],
                [100 * high / full["accuracy"] - yi for yi, (_, high) in zip(y, bounds, strict=True)],
            ]
            ax.errorbar(x, y, yerr=error, marker="o", markersize=3, capsize=2, color=colours[method], label=method)
        ax.set_title(f"{task} (full {full['accuracy']:.2f}, n={full['n']})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("share of visual tokens kept per layer")
    for ax in axes[:, 0]:
        ax.set_ylabel("% of full accuracy")
    handles = [plt.Line2D([], [], color="black", linestyle="--", label="full")]
    handles += [plt.Line2D([], [], color=colours[m], marker="o", label=m) for m in methods]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - 2.0 / figure.get_figwidth(), 0.95),
                  fontsize=8, frameon=False)  # fmt: skip
    missing = out_of_reach(rows)
    if missing:
        note = "out of reach: " + "; ".join(
            f"{method} at keep {', '.join(f'{k:g}' for k, _ in reasons)}" for method, reasons in missing.items()
        )
        figure.text(0.01, 0.005, note, fontsize=7, wrap=True)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.04 if missing else 0, 1 - 2.0 / figure.get_figwidth(), 1))
    return figure
