"""The report command: an experiment's charts as one offline HTML file (and PNG or SVG)."""

from __future__ import annotations

import click

from mlflow_spark_tools.cli.app import TABLE_OPTIONS, Context, cli, common_options, handle_errors


@cli.command("report")
@click.option("--experiment-id", required=True, help="Experiment id; its table must be built (build-tables).")
@click.option("--metric", required=True, help="Metric key, e.g. rmse.")
@click.option("--ascending/--descending", default=True, show_default=True,
              help="Lowest value is best (default) or highest.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many best runs the table and the history chart show.")
@click.option("--max-points", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Runs drawn at most in the parallel coordinates and scatter plots: half the best, "
                   "the rest an even selection of the others.")
@click.option("--max-params", type=click.IntRange(min=1), default=12, show_default=True,
              help="Params charted at most (those that vary, most common first).")
@click.option("--out", "out_path", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file; it opens offline.")
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]),
              help="Also write each chart as an image beside the HTML: <name>_<chart>.<format>.")
@common_options(*TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def report_command(ctx: Context, experiment_id: str, metric: str, ascending: bool, top: int, max_points: int,
                   max_params: int, out_path: str, fmt: str | None) -> None:
    """Charts of an experiment's table for one metric: parallel coordinates of the params and
    the metric, the metric against each param, the top runs, and their metric curves where
    the table was built with its history (--metric-history)."""
    from mlflow_spark_tools.reports.experiment_report import experiment_report

    report = experiment_report(experiment_id, metric, ascending=ascending, top=top, max_points=max_points,
                               max_params=max_params, engine=ctx.engine(reading=True), database=ctx.settings.tables.database)
    written = report.save(out_path, fmt)
    data = report.data
    best = data.top.to_pylist()[0]
    click.echo(f"{data.table}: {data.runs_with_metric} runs with {metric}; best "
               f"{best['run_name'] or best['run_id']} ({best['run_id']}) {metric}={best['metric']:.6g}")
    for path in written:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
