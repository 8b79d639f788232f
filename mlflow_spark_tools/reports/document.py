"""An experiment report as one self-contained HTML file, and its charts as PNG or SVG.

The HTML carries the Vega, Vega-Lite and Vega-Embed libraries inline (from vl-convert, see
:mod:`~mlflow_spark_tools.reports.vega_libraries`), so it opens offline and from a job's output
folder. Everything that comes from the runs (names, params, values) is escaped: HTML text
through :func:`html.escape`, chart specifications as JSON in a
``<script type="application/json">`` block whose ``<``, ``>`` and ``&`` are written as ``\\u``
escapes, so no value can end a script or start a tag. When every chart has drawn,
the page sets ``data-rendered`` on ``<body>`` to their number, and ``data-errors`` to the
script errors seen (``[]`` when none).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.reports.charts import build_charts
from mlflow_spark_tools.reports.report_data import ReportData
from mlflow_spark_tools.reports.vega_libraries import javascript_libraries

log = logging.getLogger(__name__)
FORMATS = ("png", "svg")
# Chinese, Japanese and Korean scripts: drawn as empty boxes by a PNG renderer without a font for them
_CJK = re.compile("[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
TITLES = {"parallel": "Parallel coordinates", "params": "The metric against each param",
          "curves": "History of the top runs"}

_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
p.meta{color:#57606a;margin:0 0 16px} table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;white-space:nowrap}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.chart{margin:8px 0 16px}
"""

_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  var specs = JSON.parse(document.getElementById("report-specs").textContent);
  var names = Object.keys(specs);
  var drawn = 0;
  Promise.all(names.map(function (name) {
    return vegaEmbed("#chart-" + name, specs[name], {renderer: "svg", actions: false})
      .then(function () { drawn += 1; })
      .catch(function (e) { errors.push(name + ": " + String(e && e.message || e)); });
  })).then(function () {
    document.body.setAttribute("data-rendered", String(drawn));
    document.body.setAttribute("data-errors", JSON.stringify(errors));
  });
})();
"""


def _script_json(value: Any) -> str:
    """JSON that cannot close the script element it sits in."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cell(value: Any) -> tuple[str, bool]:
    """A table cell's text and whether it is a number."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value).lower(), False
    if isinstance(value, float):
        return (f"{value:.6g}" if math.isfinite(value) else str(value)), True
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip(), False
    return str(value), False


class ExperimentReport:
    """The charts and top runs of one experiment's table for one metric.

    :meth:`html` is the whole report as one offline document, :meth:`display` shows it in a
    Databricks or Jupyter notebook, :meth:`chart` gives one chart as an Altair chart.
    """

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self._charts = build_charts(data)

    @property
    def chart_names(self) -> list[str]:
        """``parallel``, ``params`` (when a param varies) and ``curves`` (with a history)."""
        return list(self._charts)

    def chart(self, name: str) -> Any:
        """The chart ``name`` as an Altair chart with its data (it displays in notebooks)."""
        return self._charts[name].altair_chart()

    def specs(self) -> dict[str, dict[str, Any]]:
        """Each chart's Vega-Lite specification, data included."""
        return {name: chart.spec() for name, chart in self._charts.items()}

    def _top_table(self) -> str:
        data = self.data
        headers = ["#", "run", "run_id", "status", "start_time", data.metric] + [a.key for a in data.params]
        columns = ["run_name", "run_id", "status", "start_time", "metric"] + [a.column for a in data.params]
        lines = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
        for i, row in enumerate(data.top.select(columns).to_pylist(), start=1):
            cells = [f'<td class="num">{i}</td>']
            for column in columns:
                text, numeric = _cell(row[column])
                cells.append(f'<td{" class=num" if numeric else ""}>{html.escape(text)}</td>')
            lines.append("<tr>" + "".join(cells) + "</tr>")
        lines.append("</tbody></table>")
        return "\n".join(lines)

    def html(self) -> str:
        """The report as one self-contained HTML document."""
        return self._html(self.specs())

    def _html(self, specs: dict[str, dict[str, Any]]) -> str:
        data = self.data
        direction = "lowest" if data.ascending else "highest"
        refreshed = data.refreshed_at.strftime("%Y-%m-%d %H:%M UTC") if data.refreshed_at else "unknown"
        title = f"Experiment {data.experiment_id}: {data.metric}"
        libraries = javascript_libraries()
        parts = [
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
            f"<script>{libraries}</script></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">{html.escape(data.table)}, refreshed {html.escape(refreshed)}: '
            f"{data.runs_with_metric} active runs with a value of {html.escape(data.metric)}; "
            f"{direction} is best.</p>",
            f"<h2>Top {data.top.num_rows} runs</h2>", self._top_table(),
        ]
        if not self._charts:
            parts.append("<p>No param varies among these runs: nothing to chart.</p>")
        for name in specs:
            parts.append(f"<h2>{html.escape(TITLES[name])}</h2><div class=\"chart\" id=\"chart-{name}\"></div>")
        parts.append(f'<script type="application/json" id="report-specs">{_script_json(specs)}</script>')
        parts.append(f"<script>{_SCRIPT}</script></body></html>")
        return "\n".join(parts)

    def save(self, path: str | Path, fmt: str | None = None, scale: float = 2.0) -> list[Path]:
        """Write the HTML report to ``path`` and, with ``fmt`` ``png`` or ``svg``, each chart
        beside it as ``<stem>_<chart>.<fmt>``. Returns the files written."""
        import vl_convert

        if fmt is not None and fmt not in FORMATS:
            raise UsageError(f"Unknown image format {fmt!r}: use png or svg.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        specs = self.specs()  # built once, for the HTML and the images
        path.write_text(self._html(specs), encoding="utf-8")
        written = [path]
        if fmt == "png":
            _say_if_no_font_draws_cjk(json.dumps(specs, ensure_ascii=False))
        for name, spec in (specs.items() if fmt else ()):
            image = path.with_name(f"{path.stem}_{name}.{fmt}")
            if fmt == "png":
                image.write_bytes(vl_convert.vegalite_to_png(spec, scale=scale))
            else:
                image.write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
            written.append(image)
        return written

    def display(self) -> None:
        """Show the report in a notebook: ``displayHTML`` on Databricks, else IPython's display."""
        import __main__

        show = getattr(__main__, "displayHTML", None)
        if show is not None:
            show(self.html())
            return
        from IPython.display import HTML, display  # type: ignore[import-not-found]

        display(HTML(self.html()))


def _say_if_no_font_draws_cjk(text: str) -> None:
    """A warning when the charts hold Chinese, Japanese or Korean text and fontconfig knows no
    font with those glyphs (the PNGs would show empty boxes). Where fontconfig is not
    installed, nothing can be known and nothing is said."""
    if not _CJK.search(text) or shutil.which("fc-list") is None:
        return
    try:
        found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return
    if not found.strip():
        log.warning("The charts hold Chinese, Japanese or Korean text and no font on this machine has those "
                    "glyphs: the PNGs draw them as empty boxes. Install one (Debian/Ubuntu: apt-get install "
                    "fonts-noto-cjk, or fonts-wqy-microhei) and make the report again.")
