"""Commands about single runs and experiments: dump-run, dump-experiment, system-tags, log-model."""

from __future__ import annotations

import click

from mlflow_spark_tools.cli.app import (
    Context,
    cli,
    common_options,
    echo_record,
    handle_errors,
    retrying_client,
)
from mlflow_spark_tools.tools.output import render_table, to_json

DUMP_FORMATS = ("json", "yaml", "text")


@cli.command("dump-run")
@click.option("--run-id", required=True, help="The run.")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default="json", show_default=True)
@click.option("--artifacts", is_flag=True, help="Add the artifact tree with sizes and totals.")
@click.option("--max-depth", type=click.IntRange(min=0), help="Artifact levels to list "
              "(0: the top level only; default: all).")
@common_options("tracking_uri")
@click.pass_obj
@handle_errors
def dump_run_command(ctx: Context, run_id: str, fmt: str, artifacts: bool, max_depth: int | None) -> None:
    """Everything about a run: info with readable times and duration, params, metrics, tags
    and, with --artifacts, its artifact tree."""
    from mlflow_spark_tools.tools.dumps import dump_run, render

    click.echo(render(dump_run(retrying_client(ctx), run_id, artifacts=artifacts, max_depth=max_depth), fmt))


@cli.command("dump-experiment")
@click.option("--experiment-id", help="The experiment's id.")
@click.option("--experiment-name", "--name", "name",
              help="The experiment's name (--name, the earlier spelling, is taken too).")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default="json", show_default=True)
@click.option("--runs", is_flag=True, help="Add every active run (latest started first).")
@click.option("--max-runs", type=click.IntRange(min=1), help="With --runs: at most this many.")
@common_options("tracking_uri")
@click.pass_obj
@handle_errors
def dump_experiment_command(ctx: Context, experiment_id: str | None, name: str | None, fmt: str, runs: bool,
                            max_runs: int | None) -> None:
    """Everything about an experiment: info, tags, run counts by status and, with --runs, its
    runs' info, params, metrics and tags."""
    from mlflow_spark_tools.tools.dumps import dump_experiment, render

    doc = dump_experiment(retrying_client(ctx), experiment_id, name, runs=runs, max_runs=max_runs,
                          page_size=ctx.settings.tables.page_size)
    click.echo(render(doc, fmt))


@cli.command("system-tags")
@click.option("--run-id", help="Show the system tags this run carries, their values and meanings.")
@click.option("--all", "show_all", is_flag=True, help="With --run-id: the whole catalog, marking the "
              "tags the run carries.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common_options("tracking_uri")
@click.pass_obj
@handle_errors
def system_tags_command(ctx: Context, run_id: str | None, show_all: bool, fmt: str) -> None:
    """The MLflow and Databricks system tags (mlflow.*): what each means and which kinds of
    run carry it (Python script, MLflow project, Databricks notebook, notebook job, Repo)."""
    from mlflow_spark_tools.tools.system_tags import RUN_KIND_LABELS, RUN_KINDS, tag_report

    tags = None
    if run_id is not None:
        from mlflow_spark_tools.tracking.client import get_run_or_fail

        tags = get_run_or_fail(retrying_client(ctx), run_id).data.tags
    report = tag_report(tags)
    if tags is not None and not show_all:
        report = [r for r in report if r.present]
    if fmt == "json":
        click.echo(to_json([
            {"key": r.key, "meaning": r.meaning, "kinds": sorted(r.kinds), "known": r.known}
            | ({"present": r.present, "value": r.value} if tags is not None else {})
            for r in report
        ]))
        return
    headers = ["tag", *(RUN_KIND_LABELS[k] for k in RUN_KINDS)]
    if tags is not None:
        headers += ["on run", "value"]
    headers.append("meaning")
    rows = []
    for r in report:
        row = [r.key, *("y" if k in r.kinds else "-" for k in RUN_KINDS)]
        if tags is not None:
            row += ["yes" if r.present else "-", r.value if r.value is not None else ""]
        row.append(r.meaning if r.known else "(not in the catalog)")
        rows.append(row)
    click.echo(render_table(headers, rows, max_width=70))


@cli.command("log-model")
@click.option("--model-path", required=True, help="A pickle/cloudpickle/joblib file (sklearn) or a "
              "directory saved with mlflow.<flavor>.save_model; local, /dbfs/..., dbfs:/... or /Volumes/...")
@click.option("--flavor", required=True, help="MLflow flavor to log it as, e.g. sklearn.")
@click.option("--experiment-name", required=True, help="Created if it does not exist.")
@click.option("--run-name", help="Name of the new run.")
@click.option("--artifact-path", default="model", show_default=True, help="Where in the run the model goes.")
@click.option("--trust-pickle", is_flag=True, help="Load a pickled model from shared storage "
              "(DBFS, Volumes, a file others can write). Unpickling runs the file's code.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common_options("tracking_uri")
@click.pass_obj
@handle_errors
def log_model_command(ctx: Context, model_path: str, flavor: str, experiment_name: str, run_name: str | None,
                      artifact_path: str, trust_pickle: bool, fmt: str) -> None:
    """Create a run from a model trained elsewhere, logged as an MLflow model."""
    from mlflow_spark_tools.tools.model_import import log_model_from_path

    result = log_model_from_path(retrying_client(ctx), model_path, flavor, experiment_name, run_name=run_name,
                                 artifact_path=artifact_path, trust_pickle=trust_pickle)
    echo_record({"run_id": result.run_id, "experiment_id": result.experiment_id,
                 "model_uri": result.model_uri, "model_id": result.model_id}, fmt)
