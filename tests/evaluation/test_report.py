"""The evaluation report: a table per task with 95% intervals, one line per method that could not reach a budget,
and a plot of accuracy retained against tokens kept, panels in a grid with the legend outside the data."""

import pytest

from alvts.evaluation.report import accuracy_figure, format_table, plot_accuracy, wilson_interval

TASKS = ["lookup", "counting", "existence", "reading", "relation", "mean"]


def _row(task, method, keep, accuracy, retained):
    scores = dict(accuracy=accuracy, retained=retained, agreement=retained, flops_ratio=keep, n=50)
    return dict(task=task, method=method, keep=keep, effective_keep=keep, visual_fraction=keep,
                visual_tokens_per_layer=256 * keep, **scores)  # fmt: skip


def _rows():
    rows = []
    note = "out of reach: FastV keeps every visual token in its first 2 of 4 layers; raise keep"
    for task in TASKS:
        rows.append(_row(task, "full", 1.0, 0.8, 1.0))
        rows += [_row(task, "oracle", keep, 0.6, 0.75) for keep in (0.11, 0.33)]
        rows += [dict(task=task, method="fastv", keep=keep, note=note) for keep in (0.11, 0.33)]
    return rows


def test_wilson_interval_matches_the_formula():
    # 40 of 50: centre (0.8 + 1.96^2/100) / (1 + 1.96^2/50), half-width from the Wilson formula, by hand
    low, high = wilson_interval(0.8, 50)
    assert (low, high) == pytest.approx((0.6696, 0.8876), abs=1e-4)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(0.0, 20)[0] == 0.0


def test_wilson_interval_holds_the_proportion_at_every_count():
    """At 100 of 100 the formula's upper bound rounds to 0.9999999999999999, which made a negative error bar."""
    for n in range(1, 301):
        for hits in range(n + 1):
            low, high = wilson_interval(hits / n, n)
            assert low <= hits / n <= high


def test_out_of_reach_methods_are_one_line_each_with_the_reason():
    table = format_table(_rows())
    assert table.count("fastv") == 1
    assert "fastv at keep 0.11, 0.33: FastV keeps every visual token in its first 2 of 4 layers" in table
    assert "[0.67, 0.89]" in table and table.count("task: ") == len(TASKS)


def test_the_plot_is_a_grid_with_the_legend_outside_and_a_note_for_what_is_out_of_reach(tmp_path):
    figure = accuracy_figure(_rows())
    panels = [ax for ax in figure.axes if ax.has_data()]
    assert len(panels) == len(TASKS)
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # two rows of three, not one strip
    legend = figure.legends[0].get_window_extent(figure.canvas.get_renderer())
    assert all(legend.x0 >= ax.get_window_extent().x1 for ax in panels)
    assert {ax.get_xlabel() for ax in figure.axes[-3:]} == {"share of visual tokens kept per layer"}
    assert figure.axes[0].get_ylabel() == "% of full accuracy"
    assert any("out of reach: fastv at keep 0.11, 0.33" in text.get_text() for text in figure.texts)
    png = plot_accuracy(_rows(), tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
