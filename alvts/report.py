"""Evaluation rows as a text table per task and as an accuracy-vs-compression plot (matplotlib, an optional extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PLOT_HINT = "Plotting needs matplotlib: pip install 'alvts[plot]' (or pip install matplotlib)."


def format_table(rows: Sequence[dict]) -> str:
    """One block per task: method, keep, accuracy, % of full accuracy retained, agreement with the full model's
    answers, visual tokens per layer and prefill FLOPs relative to full; a method out of reach says why."""
    header = f"{'method':<16}{'keep':>6}{'accuracy':>10}{'retained':>10}{'agreement':>11}{'vis/layer':>11}{'FLOPs':>8}"
    blocks = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task]
        n = next((row["n"] for row in task_rows if "n" in row), 0)
        lines = [f"task: {task} (n={n})", header]
        for row in task_rows:
            lead = f"{row['method']:<16}{row['keep']:>6.2f}"
            if "note" in row:
                lines.append(f"{lead}  {row['note'].split(';')[0]}")
                continue
            retained = "-" if row["retained"] is None else f"{100 * row['retained']:.1f}%"
            lines.append(
                f"{lead}{row['accuracy']:>10.3f}{retained:>10}{row['agreement']:>11.3f}"
                f"{row['visual_tokens_per_layer']:>11.1f}{row['flops_ratio']:>8.3f}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def check_plotting() -> None:
    """Raise ImportError with the install hint if matplotlib is missing (checked before any model work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_HINT) from None


def plot_accuracy(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy against the share of visual tokens skipped per layer, one panel per task, one line per method; the
    full model is a dashed line. Writes a PNG to `path`."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks, strict=True):
        scored = [row for row in rows if row["task"] == task and "note" not in row]
        for method in dict.fromkeys(row["method"] for row in scored):
            points = sorted((1 - row["visual_fraction"], row["accuracy"]) for row in scored if row["method"] == method)
            if method == "full":
                ax.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="full")
            else:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_title(task)
        ax.set_xlabel("visual tokens skipped per layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
