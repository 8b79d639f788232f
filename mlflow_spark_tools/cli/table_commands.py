"""Commands on experiment tables: build-tables, best-run, last-run, sql."""

from __future__ import annotations

import sys
from typing import Any

import click

from mlflow_spark_tools.cli.app import (
    PACED_TABLE_OPTIONS,
    TABLE_OPTIONS,
    Context,
    cli,
    common_options,
    echo_record,
    fail,
    handle_errors,
    query_engine,
    split_values,
    tracking_source,
)
from mlflow_spark_tools.core.redaction import redact
from mlflow_spark_tools.errors import EXIT_FAILURE, UsageError
from mlflow_spark_tools.tables.refresh_cost import OBVIOUS_REASONS
from mlflow_spark_tools.tables.source_registry import source_names, sources_help
from mlflow_spark_tools.tools.output import FORMATS, format_rows, render_table, to_json

TABLE_MAX_ROWS = 1000


@cli.command("build-tables")
@click.option("--experiment-ids", multiple=True, help="Comma-separated experiment ids.")
@click.option("--experiment-names", multiple=True, help="Comma-separated experiment names.")
@click.option("--experiment-name", "exact_names", multiple=True, help="One experiment name, taken as it "
              "is (commas and surrounding spaces kept). Repeatable.")
@click.option("--all", "all_experiments", is_flag=True, help="Every active experiment.")
@click.option("--full-refresh", is_flag=True, help="Rebuild the tables instead of refreshing.")
@click.option("--include-deleted", is_flag=True, help="Keep deleted runs in the tables.")
@click.option("--metric-history", default=None, metavar="all|KEY[,KEY...]|none",
              help="Also build exp_<id>_metrics with every logged point of these metrics (all: every "
                   "metric) and the _mmin_/_mmax_ summaries in exp_<id>. Default: tables.metric_history "
                   "of the configuration (off).")
@click.option("--registry", is_flag=True,
              help="Also refresh registered_models and model_versions from the model registry "
                   "(tables.registry_uri, else MLflow's registry URI); alone, only those.")
@click.option("--source", type=click.Choice(source_names()), default=None,
              help=f"Where runs are read: {sources_help()}. Default: tables.source (rest).")
@click.option("--system-schema", default=None, metavar="CATALOG.SCHEMA",
              help="Where the MLflow system tables are for --source system-tables (default: system.mlflow).")
@click.option("--backend-store-uri", default=None, metavar="URI",
              help="SQLAlchemy URI of the backend database for --source database, as mlflow server "
                   "takes it (default: MLFLOW_SPARK_TOOLS_BACKEND_STORE_URI, tables.backend_store_uri).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Summary format. JSON: a list of the experiments' summaries; with "
                                      "--registry an object {\"experiments\": [...], \"registry\": {...}}.")
@common_options(*PACED_TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def build_tables_command(ctx: Context, experiment_ids: tuple[str, ...], experiment_names: tuple[str, ...],
                         exact_names: tuple[str, ...], all_experiments: bool, full_refresh: bool,
                         include_deleted: bool, metric_history: str | None, registry: bool, source: str | None,
                         backend_store_uri: str | None, system_schema: str | None, fmt: str) -> None:
    """Build or refresh the flattened Delta tables exp_<experiment_id>.

    The first build of a table reads every run; later ones read what changed since (see
    docs/TABLES.md). With --registry, the registry tables too. Exit code 0 when everything was
    built, 3 when some of it failed, 2 for usage errors such as an unknown experiment.
    """
    from mlflow_spark_tools.tables.build import build_experiment_tables

    ids, names = split_values(experiment_ids), [*split_values(experiment_names), *exact_names]
    ctx.settings = ctx.settings.with_overrides(tables__source=source, tables__backend_store_uri=backend_store_uri,
                                               tables__system_schema=system_schema)
    if not (ids or names or all_experiments or registry):
        raise UsageError("Say which experiments: --experiment-ids, --experiment-names, --experiment-name or --all "
                         "(or --registry for the registry tables).")
    result = build_experiment_tables(
        ctx.settings, experiment_ids=ids, experiment_names=names, all_experiments=all_experiments,
        full_refresh=full_refresh, include_deleted=include_deleted, metric_history=metric_history,
        registry=registry, engine=ctx.given_engine,
    )
    _print_summaries(result.summaries, result.registry, fmt)
    for s in result.summaries:
        if s.error is not None:
            click.echo(f"Error: {s.error}", err=True)
    if result.registry is not None and result.registry.error is not None:
        click.echo(f"Error: {result.registry.error}", err=True)
    if result.exit_code:
        sys.exit(result.exit_code)


def _print_summaries(summaries: Any, registry: Any, fmt: str) -> None:
    if fmt == "json":
        experiments = [s.as_dict() for s in summaries]
        click.echo(to_json(experiments if registry is None else {"experiments": experiments,
                                                                  "registry": registry.as_dict()}))
        return
    if summaries:
        _print_experiment_table(summaries)
        for s in summaries:  # a full build the user did not ask for says why
            if s.reason is not None and s.reason not in OBVIOUS_REASONS:
                click.echo(f"Experiment {s.experiment_id}: full build: {s.reason}")
            for collision in s.column_collisions:
                click.echo(f"Experiment {s.experiment_id}: {collision}")
            if s.runs_not_seen:
                click.echo(f"Experiment {s.experiment_id}: {s.runs_not_seen} runs of the store are not in the table: "
                           f"runs that started and ended before the last refresh (imported or back-dated) are "
                           f"seen only by a full build: build-tables --full-refresh")
    if registry is not None:
        click.echo(render_table(
            ["registry", "registered_models", "models", "model_versions", "versions", "seconds"],
            [[registry.registry_uri or "", registry.registered_models_table or "-",
              str(registry.registered_models) if registry.ok else "failed",
              registry.model_versions_table or "-", str(registry.model_versions) if registry.ok else "failed",
              f"{registry.seconds:.2f}"]],
        ))


def _print_experiment_table(summaries: Any) -> None:
    rows = [
        [
            s.experiment_id,
            s.experiment_name or "",
            s.table or "",
            s.mode or "failed",
            str(s.runs_fetched),
            f"{s.rows_inserted}/{s.rows_updated}/{s.rows_deleted}",
            str(s.row_count),
            str(len(s.columns_added)),
            ", ".join(s.columns_widened) or "-",
            f"{s.history_points}/{s.history_requests}" if s.metrics_table else "-",
            f"{s.models if s.models_table else '-'}/{s.inputs}" if s.ok else "-",
            f"{s.seconds:.2f}",
        ]
        for s in summaries
    ]
    click.echo(
        render_table(
            ["experiment", "name", "table", "mode", "fetched", "ins/upd/del", "rows",
             "cols added", "widened to string", "history pts/req", "models/inputs", "seconds"],
            rows,
        )
    )


def _choice_output(choice: Any, fmt: str, what: str, *, with_metric: bool = True) -> None:
    if choice is None:
        fail(f"No run qualifies as the {what}.", EXIT_FAILURE)
    data = choice.as_dict()
    if not with_metric:
        data = {k: v for k, v in data.items() if k not in ("metric", "value")}
    echo_record(data, fmt)


@cli.command("best-run")
@click.option("--experiment-id", required=True, help="Experiment id.")
@click.option("--metric", required=True, help="Metric key, e.g. rmse.")
@click.option("--ascending/--descending", default=True, show_default=True,
              help="Lowest value is best (default) or highest.")
@click.option("--ignore-nested", is_flag=True, help="Skip child runs.")
@click.option("--aggregate", type=click.Choice(["latest", "min", "max"]), default="latest", show_default=True,
              help="Which value of each run counts: its latest (MLflow's meaning) or its lowest or highest "
                   "at any step (the answer names that step).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@common_options(*PACED_TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def best_run_command(ctx: Context, experiment_id: str, metric: str, ascending: bool, ignore_nested: bool,
                     aggregate: str, fmt: str) -> None:
    """The best run for a metric: from the experiment's table if built, else the server."""
    from mlflow_spark_tools.tables.queries import best_run

    choice = best_run(
        experiment_id, metric, ascending=ascending, ignore_nested=ignore_nested, aggregate=aggregate,
        engine=query_engine(ctx), database=ctx.settings.tables.database, source=tracking_source(ctx),
    )
    _choice_output(choice, fmt, f"best run for {metric!r}")


@cli.command("last-run")
@click.option("--experiment-id", required=True, help="Experiment id.")
@click.option("--ignore-nested", is_flag=True, help="Skip child runs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@common_options(*PACED_TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def last_run_command(ctx: Context, experiment_id: str, ignore_nested: bool, fmt: str) -> None:
    """The run that started last: from the experiment's table if built, else the server."""
    from mlflow_spark_tools.tables.queries import last_run

    choice = last_run(
        experiment_id, ignore_nested=ignore_nested,
        engine=query_engine(ctx), database=ctx.settings.tables.database, source=tracking_source(ctx),
    )
    _choice_output(choice, fmt, "last run", with_metric=False)


@cli.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=1),
              help=f"Print at most this many rows (default: {TABLE_MAX_ROWS} as a table, all as csv or json); "
              "a result that is cut says so on stderr.")
@common_options(*TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def sql_command(ctx: Context, query: str, fmt: str, max_rows: int | None) -> None:
    """Run SQL on the current engine, with the experiment tables registered.

    Example: mlflow-spark-tools sql "SELECT run_id, _m_rmse FROM mlflow_exp.exp_1
    ORDER BY _m_rmse LIMIT 5". DESCRIBE mlflow_exp.exp_1 lists its columns with the MLflow
    key each holds.
    """
    from mlflow_spark_tools.spark.arrow import to_arrow
    from mlflow_spark_tools.spark.sql_errors import describe_sql_error, is_sql_error
    from mlflow_spark_tools.tables.describe import describe_query

    limit = max_rows if max_rows is not None else TABLE_MAX_ROWS if fmt == "table" else None
    engine = ctx.engine(reading=True)
    try:
        described = describe_query(engine.spark, query)
        if described is not None:
            table = described if limit is None else described.slice(0, limit + 1)
        else:
            frame = engine.spark.sql(query)
            table = to_arrow(frame if limit is None else frame.limit(limit + 1))
    except Exception as exc:
        if is_sql_error(exc):
            columns_of = lambda table: engine.spark.table(table).columns  # noqa: E731 - suggestions only
            raise UsageError(f"SQL failed: {redact(describe_sql_error(exc, query, columns_of))[:500]}") from exc
        raise
    cut = limit is not None and table.num_rows > limit
    click.echo(format_rows(table.slice(0, limit) if cut else table, fmt))
    if cut:
        click.echo(f"Note: only the first {limit} rows are shown; --max-rows N shows more.", err=True)
