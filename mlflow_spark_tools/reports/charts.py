"""The report's charts as Altair (Vega-Lite) charts, from :class:`ReportData`'s small tables.

- ``parallel``: parallel coordinates, one line per plotted run across the params and the metric,
  coloured by the metric. Each axis is scaled to 0..1 over the plotted runs (logarithmically
  where the values are positive and span more than two decades) and labelled with its lowest
  and highest value; a categorical param's values are spread evenly in order of their mean
  metric, best first, each labelled.
- ``params``: the metric against each param: numeric params as a scatter of the plotted runs
  (a log axis where the values are positive and span more than two decades), categorical ones
  as boxes of the metric's quartiles per value, aggregated over every run.
- ``curves``: the metric's history of the top runs, where the history table exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.reports.report_data import ParamAxis, ReportData, value_label

if TYPE_CHECKING:
    import altair as alt

WIDTH, HEIGHT = 260, 200
# the widest chart: the page's 1,400 px less its margins, the axis labels and the legend
MAX_WIDTH = 1000
PALETTE_LOW_IS_GOOD = "viridis"


def altair() -> Any:
    """The altair module, or a usage error naming the extra that installs it."""
    try:
        import altair as alt
    except ImportError:
        raise UsageError("Reports need altair and vl-convert-python: pip install "
                         "'mlflow-spark-tools[report]'.") from None
    alt.data_transformers.disable_max_rows()
    return alt


class Datasets:
    """The rows of a chart's data, kept apart from the chart: Altair validates inline values
    against the Vega-Lite schema value by value (5 s for a 1,000-run parallel coordinates), so
    the chart names its data and :meth:`spec` adds the rows after validating the rest."""

    def __init__(self, chart: str) -> None:
        self.chart = chart
        self.values: dict[str, list[dict[str, Any]]] = {}

    def add(self, rows: list[dict[str, Any]]) -> Any:
        """Named data holding ``rows`` (infinite and NaN numbers become null: JSON has neither)."""
        alt = altair()
        name = f"{self.chart}-{len(self.values)}"
        self.values[name] = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                             for r in rows]
        return alt.Data(name=name)


@dataclass
class ReportChart:
    """One chart: the Altair chart (its data named) and the rows of that data."""

    chart: Any
    datasets: Datasets

    def spec(self) -> dict[str, Any]:
        """The whole Vega-Lite specification, rows included."""
        spec: dict[str, Any] = self.chart.to_dict()
        spec["datasets"] = self.datasets.values
        return spec

    def altair_chart(self) -> Any:
        """The Altair chart with its rows, for a notebook (it validates them when shown)."""
        chart = self.chart.copy(deep=False)
        chart.datasets = self.datasets.values
        return chart


def build_charts(data: ReportData) -> dict[str, ReportChart]:
    """The report's charts by name: ``parallel``, ``params`` and, with a history, ``curves``."""
    makers: dict[str, Callable[[ReportData, Datasets], Any]] = {}
    if data.params:
        makers["parallel"] = parallel_coordinates
        makers["params"] = metric_by_param
    if data.curves is not None:
        makers["curves"] = metric_curves
    charts = {}
    for name, make in makers.items():
        datasets = Datasets(name)
        charts[name] = ReportChart(make(data, datasets), datasets)
    return charts


def _metric_scale(data: ReportData) -> dict[str, Any]:
    # the best values in the dark end of the scheme, whichever direction is best
    return {"scheme": PALETTE_LOW_IS_GOOD, "reverse": not data.ascending}


def _category_order(data: ReportData, axis: ParamAxis) -> list[str]:
    """A categorical param's values among the plotted runs, best mean metric first."""
    sums: dict[str, list[float]] = {}
    for value, metric in zip(data.plotted.column(axis.column).to_pylist(), data.plotted.column("metric").to_pylist()):
        sums.setdefault(value_label(value), []).append(metric)
    means = {k: sum(v) / len(v) for k, v in sums.items()}
    return sorted(means, key=lambda k: (means[k] if data.ascending else -means[k], k))


def _finite(values: list[Any]) -> list[float]:
    """The finite numbers among ``values``."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _log_axis(numbers: list[float]) -> bool:
    """Whether an axis of ``numbers`` is logarithmic: all positive, spanning more than two decades."""
    return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) > 100


# vega-tooltip shows a tooltip entry named "image" as an image (fetching its value as a URL)
# and one named "title" as the heading: a param or metric of that name gets another title
_TOOLTIP_RESERVED = ("image", "title")


def tip(title: str) -> str:
    """A tooltip title for a key: the key, unless vega-tooltip reads that name itself."""
    return f"{title} (key)" if title.strip().lower() in _TOOLTIP_RESERVED else title


def parallel_coordinates(data: ReportData, datasets: Datasets) -> alt.TopLevelMixin:
    """One line per plotted run over the params and the metric, each axis scaled to 0..1.

    The points hold only the run's number, the axis and the scaled value; a run's name and
    metric are looked up from a dataset of one row per run (the HTML stays small).
    """
    alt = altair()
    rows = data.plotted.to_pylist()
    axes = [(a.key, a) for a in data.params] + [(data.metric, None)]
    runs = [{"run": i, "run_name": row["run_name"] or row["run_id"], "metric": row["metric"]}
            for i, row in enumerate(rows)]
    points: list[dict[str, Any]] = []
    ticks: list[dict[str, Any]] = []  # what the ends of a numeric axis and a category's place mean
    for label, axis in axes:
        raw = [row["metric"] if axis is None else row[axis.column] for row in rows]
        if axis is not None and not axis.numeric:
            order = _category_order(data, axis)
            rank = {v: i for i, v in enumerate(order)}
            scaled: list[float | None] = [rank[value_label(v)] / max(1, len(order) - 1) for v in raw]
            ticks += [{"axis": label, "scaled": i / max(1, len(order) - 1), "text": v} for i, v in enumerate(order)]
        else:
            numbers = _finite(raw)
            low, high = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
            log = _log_axis(numbers)
            to_axis = math.log10 if log else float
            scaled = [None if not isinstance(v, (int, float)) or not math.isfinite(v) else
                      0.5 if high == low else (to_axis(v) - to_axis(low)) / (to_axis(high) - to_axis(low))
                      for v in raw]
            if numbers:
                ticks += [{"axis": label, "scaled": 0.0, "text": f"{low:.3g}"},
                          {"axis": label, "scaled": 1.0, "text": f"{high:.3g}" + (" (log)" if log else "")}]
        points += [{"run": i, "axis": label, "scaled": None if v is None else round(v, 4)}
                   for i, v in enumerate(scaled)]
    labels = [label for label, _ in axes]
    # the axes' order as a field, not a sort array: Vega turns a sort array into an expression
    # holding the labels, which a U+2028 in a key breaks
    place = {label: i for i, label in enumerate(labels)}
    for row in points + ticks:
        row["place"] = place[row["axis"]]
    by_place = alt.EncodingSortField(field="place", op="min")
    run_data = datasets.add(runs)
    # strokeOpacity, not opacity: an opacity makes the PNG renderer composite every line as a layer
    # of its own (1,000 lines: 90 s instead of 9 s)
    lines = alt.Chart(datasets.add(points)).transform_lookup(
        lookup="run", from_=alt.LookupData(data=run_data, key="run", fields=["run_name", "metric"]),
    ).mark_line(strokeOpacity=0.45, strokeWidth=1).encode(
        x=alt.X("axis:N", sort=by_place, title=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("scaled:Q", title="scaled to the plotted runs", axis=alt.Axis(labels=False, ticks=False)),
        # the legend below the axes: beside them it left the page once a sweep had ten params
        color=alt.Color("metric:Q", title=data.metric, scale=alt.Scale(**_metric_scale(data)),
                        legend=alt.Legend(orient="bottom")),
        detail="run:N",
        tooltip=[alt.Tooltip("run_name:N", title="run"), alt.Tooltip("metric:Q", title=tip(data.metric))],
    )
    marks = alt.Chart(datasets.add(ticks)).mark_text(align="left", dx=4, fontSize=10, color="#333").encode(
        x=alt.X("axis:N", sort=by_place), y=alt.Y("scaled:Q"), text="text:N")
    return alt.layer(lines, marks).properties(
        width=min(MAX_WIDTH, max(400, 110 * len(labels))), height=300,
        title=f"Parallel coordinates: {_drawn(len(rows), data.runs_with_metric)}, coloured by {data.metric}")


def _drawn(drawn: int, runs: int) -> str:
    """How many runs a chart draws, of how many the header counts (it draws at most
    ``--max-points``, and only runs whose params and metric it can place)."""
    return f"{runs:,} runs" if drawn == runs else f"{drawn:,} of {runs:,} runs drawn"


def metric_by_param(data: ReportData, datasets: Datasets) -> alt.TopLevelMixin:
    """The metric against each param: scatter for numeric params, quartile boxes for the others.
    The scatters share one dataset: a row per plotted run, the i-th numeric param as ``x<i>``."""
    alt = altair()
    plotted = data.plotted.to_pylist()
    rows = [{"run": r["run_name"] or r["run_id"], "metric": r["metric"],
             **{f"x{i}": r[a.column] for i, a in enumerate(data.params) if a.numeric}} for r in plotted]
    shared = datasets.add(rows) if any(a.numeric for a in data.params) else None
    panels = [_scatter(alt, data, a, f"x{i}", shared, rows) if a.numeric else _boxes(alt, data, a, datasets)
              for i, a in enumerate(data.params)]
    return alt.concat(*panels, columns=3).properties(title=f"{data.metric} against each param")


def _scatter(alt: Any, data: ReportData, axis: ParamAxis, field: str, shared: Any,
             rows: list[dict[str, Any]]) -> alt.TopLevelMixin:
    log = _log_axis(_finite([r[field] for r in rows]))
    return alt.Chart(shared).mark_circle(size=24, opacity=0.6).encode(
        x=alt.X(f"{field}:Q", title=axis.key, scale=alt.Scale(type="log" if log else "linear", zero=False)),
        y=alt.Y("metric:Q", title=data.metric, scale=alt.Scale(zero=False)),
        color=alt.Color("metric:Q", legend=None, scale=alt.Scale(**_metric_scale(data))),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip(f"{field}:Q", title=tip(axis.key)),
                 alt.Tooltip("metric:Q", title=tip(data.metric))],
    ).properties(width=WIDTH, height=HEIGHT, title=axis.key)


def _boxes(alt: Any, data: ReportData, axis: ParamAxis, datasets: Datasets) -> alt.TopLevelMixin:
    """Quartile boxes of the metric per value (over every run), with the plotted runs' points
    over them: a box alone hides two clusters of runs inside it."""
    stats = data.categories.get(axis.key, pa.table({}))
    rows = stats.to_pylist()
    ordered = sorted(rows, key=lambda r: (r["median"] if data.ascending else -r["median"]))
    rows = [{**row, "place": place} for place, row in enumerate(ordered)]  # a field, not a sort array
    place = {row["value"]: row["place"] for row in rows}
    by_place = alt.EncodingSortField(field="place", op="min")
    points = [{"value": value_label(value), "metric": metric, "place": place[value_label(value)]}
              for value, metric in zip(data.plotted.column(axis.column).to_pylist(),
                                       data.plotted.column("metric").to_pylist())
              if value_label(value) in place and metric is not None and math.isfinite(metric)]
    runs = alt.Chart(datasets.add(points)).mark_circle(size=14, opacity=0.45, color="#333").encode(
        x=alt.X("value:N", sort=by_place), y=alt.Y("metric:Q"))
    base = alt.Chart(datasets.add(rows)).encode(x=alt.X("value:N", title=axis.key, sort=by_place))
    tooltip = [alt.Tooltip("value:N", title=tip(axis.key)), "runs:Q", "min:Q", "q1:Q", "median:Q", "q3:Q", "max:Q"]
    whiskers = base.mark_rule().encode(y=alt.Y("min:Q", title=data.metric, scale=alt.Scale(zero=False)), y2="max:Q")
    boxes = base.mark_bar(size=14, opacity=0.8).encode(
        y="q1:Q", y2="q3:Q", color=alt.Color("median:Q", legend=None, scale=alt.Scale(**_metric_scale(data))),
        tooltip=tooltip)
    medians = base.mark_tick(color="black", size=14).encode(y="median:Q")
    return alt.layer(whiskers, boxes, medians, runs).properties(width=WIDTH, height=HEIGHT, title=axis.key)


def metric_curves(data: ReportData, datasets: Datasets) -> alt.TopLevelMixin:
    """The metric by step for each top run (its history)."""
    alt = altair()
    assert data.curves is not None
    names = {r["run_id"]: r["run_name"] or r["run_id"] for r in data.top.select(["run_id", "run_name"]).to_pylist()}
    rank = {run_id: i + 1 for i, run_id in enumerate(data.top.column("run_id").to_pylist())}
    rows = [{"run": f"{rank[r['run_id']]}. {names[r['run_id']]}", "place": rank[r["run_id"]], "step": r["step"],
             "value": r["value"]}
            for r in data.curves.to_pylist() if r["value"] is not None and math.isfinite(r["value"])]
    drawn = len({r["place"] for r in rows})
    return alt.Chart(datasets.add(rows)).mark_line(point=len(rows) <= 200).encode(
        x=alt.X("step:Q"), y=alt.Y("value:Q", title=data.metric, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", sort=alt.EncodingSortField(field="place", op="min"), title="top runs"),
        tooltip=["run:N", "step:Q", alt.Tooltip("value:Q", title=tip(data.metric))],
    ).properties(width=620, height=300, title=f"{data.metric} by step, top {drawn} runs")
