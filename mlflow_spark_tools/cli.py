"""The ``mlflow-spark-tools`` command line.

Every subcommand parses its options and calls one package function. Errors this package
raises on purpose print one line and exit with their code (2 for usage errors); anything else
prints one line too, and the traceback only with ``--debug``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from mlflow_spark_tools import __version__
from mlflow_spark_tools.config import Settings, load_settings
from mlflow_spark_tools.engine import Engine, get_engine
from mlflow_spark_tools.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    EngineError,
    MlflowSparkToolsError,
    UsageError,
)
from mlflow_spark_tools.output import FORMATS, format_rows, render_table
from mlflow_spark_tools.rate_limit_errors import error_summary
from mlflow_spark_tools.redaction import RedactingFormatter, redact

log = logging.getLogger("mlflow_spark_tools")


class Context:
    """What the group passes to its subcommands: settings and, lazily, an engine."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._owns_engine = False
        self.debug = False

    def engine(self) -> Engine:
        if self._engine is None:
            e = self.settings.engine
            self._engine = get_engine(remote=e.remote, warehouse=e.warehouse)
            self._owns_engine = True
        return self._engine

    def close(self) -> None:
        if self._owns_engine and self._engine is not None:
            self._engine.stop()
            self._engine = None


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {redact(message)}", err=True)
    sys.exit(code)


def _fail_with_traceback(exc: BaseException, code: int) -> None:
    """``--debug``: the traceback, with credentials masked as in every other output."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    click.echo(redact(text.rstrip()), err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions into one-line messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx: Context = click.get_current_context().obj
        try:
            return func(*args, **kwargs)
        except MlflowSparkToolsError as exc:
            if ctx.debug:
                _fail_with_traceback(exc, exc.exit_code)
            _fail(str(exc), exc.exit_code)
        except Exception as exc:
            if ctx.debug:
                _fail_with_traceback(exc, EXIT_FAILURE)
            first = error_summary(exc, 500)
            _fail(f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)", EXIT_FAILURE)
        finally:
            ctx.close()

    return wrapper


class OneLineErrorGroup(click.Group):
    """A command group whose usage errors (unknown option, bad choice) print one line, as
    every other error of this command line does, with exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            command = f" {exc.ctx.command_path}" if exc.ctx is not None else ""
            click.echo(f"Error: {redact(exc.format_message())} (see{command} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {redact(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(result if isinstance(result, int) else 0)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.group(cls=OneLineErrorGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mlflow-spark-tools")
@click.option("--tracking-uri", help="Tracking server (default: MLFLOW_TRACKING_URI).")
@click.option("--remote", help="Spark Connect URL sc://host:port (default: SPARK_REMOTE).")
@click.option(
    "--warehouse",
    type=click.Path(file_okay=False),
    help="Directory of the tables' files (embedded engine default: ./spark-warehouse; with "
    "--remote, tables become external tables there).",
)
@click.option("--database", help="Database of the experiment tables: schema or catalog.schema.")
@click.option("--profile", help="Rate-limit profile name from conf/rate_limits or a YAML path.")
@click.option("--verbose", "-v", is_flag=True, help="Log progress.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx, tracking_uri, remote, warehouse, database, profile, verbose, debug):
    """Spark-native MLflow tools: flattened experiment tables and the tools around them."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        handlers=[handler],
    )
    injected = ctx.obj if isinstance(ctx.obj, dict) else {}
    try:
        settings = injected.get("settings") or load_settings()
        settings = settings.with_overrides(
            tracking_uri=tracking_uri,
            engine__remote=remote,
            engine__warehouse=warehouse,
            tables__database=database,
            rate_limit_profile=profile,
        )
    except UsageError as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_USAGE)
    from mlflow_spark_tools.client import apply_mlflow_http_retries

    apply_mlflow_http_retries(settings.client.mlflow_http_retries)
    # MLflow prints "View run ... at" lines on stdout when a run ends; stdout is for our output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    ctx.obj = Context(settings, injected.get("engine"))
    ctx.obj.debug = debug


def add_common(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every table command accepts after the subcommand name too."""
    for option in reversed(
        [
            click.option("--warehouse", "warehouse_", type=click.Path(file_okay=False),
                         help="Directory of the tables' files (see the group's --warehouse)."),
            click.option("--database", "database_", help="Database: schema or catalog.schema."),
            click.option("--remote", "remote_", help="Spark Connect URL sc://host:port."),
            click.option("--tracking-uri", "tracking_uri_", help="Tracking server URI."),
        ]
    ):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args: Any, warehouse_=None, database_=None, remote_=None, tracking_uri_=None, **kw: Any):
        ctx: Context = click.get_current_context().obj
        try:
            ctx.settings = ctx.settings.with_overrides(
                engine__warehouse=warehouse_,
                tables__database=database_,
                engine__remote=remote_,
                tracking_uri=tracking_uri_,
            )
        except UsageError as exc:
            _fail(str(exc), EXIT_USAGE)
        return func(*args, **kw)

    return wrapper


@cli.command("build-tables")
@click.option("--experiment-ids", multiple=True, help="Comma-separated experiment ids.")
@click.option("--experiment-names", multiple=True, help="Comma-separated experiment names.")
@click.option("--all", "all_experiments", is_flag=True, help="Every active experiment.")
@click.option("--full-refresh", is_flag=True, help="Rebuild the tables instead of refreshing.")
@click.option("--include-deleted", is_flag=True, help="Keep deleted runs in the tables.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Summary format.")
@add_common
@click.pass_obj
@handle_errors
def build_tables_command(ctx: Context, experiment_ids, experiment_names, all_experiments,
                         full_refresh, include_deleted, fmt):
    """Build or refresh the flattened Delta tables exp_<experiment_id>.

    The first build of a table reads every run; later ones read what changed since (see
    docs/TABLES.md). Exit code 0 when every experiment was built, 3 when some failed, 2 for
    usage errors such as an unknown experiment.
    """
    from mlflow_spark_tools.build_tables import build_experiment_tables

    ids, names = _split(experiment_ids), _split(experiment_names)
    if not (ids or names or all_experiments):
        raise UsageError("Say which experiments: --experiment-ids, --experiment-names or --all.")
    result = build_experiment_tables(
        ctx.settings, ids, names, all_experiments, full_refresh, include_deleted,
        engine=ctx._engine if ctx._engine is not None else None,
    )
    _print_summaries(result.summaries, fmt)
    for s in result.summaries:
        if not s.ok:
            click.echo(f"Error: {s.error.removeprefix('usage: ')}", err=True)
    if result.exit_code:
        sys.exit(result.exit_code)


def _print_summaries(summaries, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([vars(s) | {"ok": s.ok} for s in summaries], indent=2))
        return
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
            f"{s.seconds:.2f}",
        ]
        for s in summaries
    ]
    click.echo(
        render_table(
            ["experiment", "name", "table", "mode", "fetched", "ins/upd/del", "rows",
             "cols added", "widened to string", "seconds"],
            rows,
        )
    )


def _choice_output(choice, fmt: str, what: str) -> None:
    if choice is None:
        _fail(f"No run qualifies as the {what}.", EXIT_FAILURE)
    data = choice.as_dict()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render_table(list(data), [[str(v) for v in data.values()]]))


def _query_engine(ctx: Context) -> Engine | None:
    try:
        return ctx.engine()
    except EngineError as exc:
        log.info("No Spark engine (%s); asking the tracking server", exc)
        return None


def _source(ctx: Context):
    from mlflow_spark_tools.ratelimit import shared_limiter
    from mlflow_spark_tools.tracking import TrackingSource

    settings = ctx.settings
    return TrackingSource(settings.tracking_uri, shared_limiter(settings.profile()), settings.client)


def _client(ctx: Context):
    from mlflow_spark_tools.client import RetryingClient

    return RetryingClient.from_settings(ctx.settings)


@cli.command("best-run")
@click.option("--experiment-id", required=True, help="Experiment id.")
@click.option("--metric", required=True, help="Metric key, e.g. rmse.")
@click.option("--ascending/--descending", default=True, show_default=True,
              help="Lowest value is best (default) or highest.")
@click.option("--ignore-nested", is_flag=True, help="Skip child runs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@add_common
@click.pass_obj
@handle_errors
def best_run_command(ctx: Context, experiment_id, metric, ascending, ignore_nested, fmt):
    """The best run for a metric: from the experiment's table if built, else the server."""
    from mlflow_spark_tools.queries import best_run

    choice = best_run(
        experiment_id, metric, ascending, ignore_nested,
        engine=_query_engine(ctx), database=ctx.settings.tables.database, source=_source(ctx),
    )
    _choice_output(choice, fmt, f"best run for {metric!r}")


@cli.command("last-run")
@click.option("--experiment-id", required=True, help="Experiment id.")
@click.option("--ignore-nested", is_flag=True, help="Skip child runs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@add_common
@click.pass_obj
@handle_errors
def last_run_command(ctx: Context, experiment_id, ignore_nested, fmt):
    """The run that started last: from the experiment's table if built, else the server."""
    from mlflow_spark_tools.queries import last_run

    choice = last_run(
        experiment_id, ignore_nested,
        engine=_query_engine(ctx), database=ctx.settings.tables.database, source=_source(ctx),
    )
    _choice_output(choice, fmt, "last run")


@cli.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Print at most this many rows.")
@add_common
@click.pass_obj
@handle_errors
def sql_command(ctx: Context, query, fmt, max_rows):
    """Run SQL on the current engine, with the experiment tables registered.

    Example: mlflow-spark-tools sql "SELECT run_id, _m_rmse FROM mlflow_exp.exp_1
    ORDER BY _m_rmse LIMIT 5"
    """
    from mlflow_spark_tools.spark_arrow import to_arrow

    engine = ctx.engine()
    try:
        table = to_arrow(engine.spark.sql(query).limit(max_rows))
    except Exception as exc:
        if exc.__class__.__name__ in ("AnalysisException", "ParseException", "SparkConnectGrpcException"):
            raise UsageError(f"SQL failed: {error_summary(exc, 500)}") from exc
        raise
    click.echo(format_rows(table, fmt))


@cli.command("replay")
@click.option("--replay-dir", required=True, help="The failed-run store: /dbfs/..., dbfs:/..., "
              "/Volumes/... or a local directory.")
@click.option("--profile", "profile_", help="Rate-limit profile name from conf/rate_limits or a YAML "
              "path (default: databricks).")
@click.option("--max-workers", type=click.IntRange(min=1), default=16, show_default=True,
              help="Payloads replayed at once.")
@click.option("--until-empty", is_flag=True, help="Pass after pass until nothing is pending.")
@click.option("--loop", is_flag=True, help="Keep replaying, a pass every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds between passes with --loop.")
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="A claim not renewed for this long is taken over (crashed replayer).")
@click.option("--trust-unsigned", is_flag=True, help="Unpickle model blobs without a valid "
              "signature. Unsafe on shared storage: a pickle runs code as this job.")
@click.option("--secret-scope", help="Databricks secret scope holding the signing key.")
@click.option("--secret-key", help="Key of the signing key in --secret-scope.")
@click.option("--no-ledger", is_flag=True, help="Do not write <database>.replay_log.")
@add_common
@click.pass_obj
@handle_errors
def replay_command(ctx: Context, replay_dir, profile_, max_workers, until_empty, loop, interval,
                   lease_seconds, trust_unsigned, secret_scope, secret_key, no_ledger):
    """Replay deferred runs into the tracking server within its rate limits.

    Prints a JSON summary (replayed, resumed, failed, still pending, requests and 429s per API
    class, seconds) and appends one row per payload to <database>.replay_log. The signing key
    for model blobs comes from MLFLOW_SPARK_TOOLS_SIGNING_KEY or --secret-scope/--secret-key.
    Exit code 0 when everything was replayed, 3 when payloads failed or are still pending,
    2 for usage errors.
    """
    from mlflow_spark_tools.replay_job import LOOP, ONCE, UNTIL_EMPTY, ReplayOptions, run_replay_job

    if until_empty and loop:
        raise UsageError("Use --until-empty or --loop, not both.")
    if profile_:
        ctx.settings = ctx.settings.with_overrides(rate_limit_profile=profile_)
    ctx.settings.profile()  # an unknown profile is a usage error before anything starts
    options = ReplayOptions(
        replay_dir=replay_dir, mode=LOOP if loop else UNTIL_EMPTY if until_empty else ONCE,
        interval=interval, max_workers=max_workers, lease_seconds=lease_seconds,
        trust_unsigned=trust_unsigned, ledger=not no_ledger,
        signing_secret_scope=secret_scope, signing_secret_key=secret_key,
    )
    code = run_replay_job(ctx.settings, options, engine=ctx._engine, echo=click.echo)
    if code:
        sys.exit(code)


@cli.command("rate-limit-proxy")
@click.option("--upstream", required=True, help="The tracking server, e.g. http://127.0.0.1:5000.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=5001, show_default=True,
              help="Port to listen on (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--profile", "profile_", help="Rate-limit profile name from conf/rate_limits or a YAML "
              "path (default: databricks).")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Added to every forwarded request.")
@click.option("--max-body-bytes", type=click.IntRange(min=0), default=2 * 1024**3, show_default=True,
              help="Largest request body accepted (larger: HTTP 413); bodies over 1 MiB are "
              "buffered on disk (TMPDIR), not in memory.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Client connections served at a time (more: HTTP 503).")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds a client connection may stay silent before it is closed.")
@click.option("--route", "routes", multiple=True, metavar="PREFIX=URL",
              help="Send paths starting with PREFIX to another upstream under the same limits (for "
              "example a stand-in for workspace endpoints the tracking server lacks). Repeatable.")
@click.pass_obj
@handle_errors
def rate_limit_proxy_command(ctx: Context, upstream, port, host, profile_, latency_ms, max_body_bytes,
                             max_connections, idle_timeout, routes):
    """Serve the MLflow REST API of --upstream with Databricks' rate limits.

    Requests over a class's limit get HTTP 429 with {"error_code": "REQUEST_LIMIT_EXCEEDED"}
    and Retry-After. Counters: GET /__proxy/stats; zero them: POST /__proxy/reset. A
    user:password@ in --upstream is sent upstream as HTTP Basic authentication and never printed.
    """
    from mlflow_spark_tools.proxy import RateLimitProxy

    if profile_:
        ctx.settings = ctx.settings.with_overrides(rate_limit_profile=profile_)
    profile = ctx.settings.profile()
    routed = {}
    for route in routes:
        prefix, sep, url = route.partition("=")
        if not sep or not prefix.startswith("/") or not url:
            raise UsageError(f"--route takes PREFIX=URL with PREFIX starting with '/', not {route!r}.")
        routed[prefix] = url
    proxy = RateLimitProxy(upstream, profile, latency_ms=latency_ms, host=host, port=port,
                           max_body_bytes=max_body_bytes, idle_timeout=idle_timeout,
                           max_connections=max_connections, routes=routed)
    click.echo(json.dumps({"listening": proxy.url, "upstream": proxy.upstream_host, "profile": profile.name,
                           "limits": profile.limits, "latency_ms": latency_ms,
                           "max_body_bytes": max_body_bytes, "max_connections": max_connections,
                           "idle_timeout": idle_timeout}), err=True)
    try:
        proxy.serve()
    except KeyboardInterrupt:
        pass
    finally:
        proxy._server.server_close()


DUMP_FORMATS = ("json", "yaml", "text")


@cli.command("dump-run")
@click.option("--run-id", required=True, help="The run.")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default="json", show_default=True)
@click.option("--artifacts", is_flag=True, help="Add the artifact tree with sizes and totals.")
@click.option("--max-depth", type=click.IntRange(min=0), help="Artifact levels to list "
              "(0: the top level only; default: all).")
@click.option("--tracking-uri", "tracking_uri_", help="Tracking server URI.")
@click.pass_obj
@handle_errors
def dump_run_command(ctx: Context, run_id, fmt, artifacts, max_depth, tracking_uri_):
    """Everything about a run: info with readable times and duration, params, metrics, tags
    and, with --artifacts, its artifact tree."""
    from mlflow_spark_tools.dumps import dump_run, render

    ctx.settings = ctx.settings.with_overrides(tracking_uri=tracking_uri_)
    click.echo(render(dump_run(_client(ctx), run_id, artifacts, max_depth), fmt))


@cli.command("dump-experiment")
@click.option("--experiment-id", help="The experiment's id.")
@click.option("--name", help="The experiment's name.")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default="json", show_default=True)
@click.option("--runs", is_flag=True, help="Add every active run (latest started first).")
@click.option("--max-runs", type=click.IntRange(min=1), help="With --runs: at most this many.")
@click.option("--tracking-uri", "tracking_uri_", help="Tracking server URI.")
@click.pass_obj
@handle_errors
def dump_experiment_command(ctx: Context, experiment_id, name, fmt, runs, max_runs, tracking_uri_):
    """Everything about an experiment: info, tags, run counts by status and, with --runs, its
    runs' info, params, metrics and tags."""
    from mlflow_spark_tools.dumps import dump_experiment, render

    ctx.settings = ctx.settings.with_overrides(tracking_uri=tracking_uri_)
    doc = dump_experiment(_client(ctx), experiment_id, name, runs, max_runs,
                          ctx.settings.tables.page_size)
    click.echo(render(doc, fmt))


@cli.command("system-tags")
@click.option("--run-id", help="Show which system tags this run carries, and their values.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--tracking-uri", "tracking_uri_", help="Tracking server URI.")
@click.pass_obj
@handle_errors
def system_tags_command(ctx: Context, run_id, fmt, tracking_uri_):
    """The MLflow and Databricks system tags (mlflow.*): what each means and which kinds of
    run carry it (Python script, MLflow project, Databricks notebook, notebook job, Repo)."""
    from mlflow_spark_tools.system_tags import RUN_KIND_LABELS, RUN_KINDS, tag_report

    tags = None
    if run_id is not None:
        from mlflow_spark_tools.client import get_run_or_fail

        ctx.settings = ctx.settings.with_overrides(tracking_uri=tracking_uri_)
        tags = get_run_or_fail(_client(ctx), run_id).data.tags
    report = tag_report(tags)
    if fmt == "json":
        click.echo(json.dumps([
            {"key": r.key, "meaning": r.meaning, "kinds": sorted(r.kinds), "known": r.known}
            | ({"present": r.present, "value": r.value} if tags is not None else {})
            for r in report
        ], indent=2))
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
@click.option("--tracking-uri", "tracking_uri_", help="Tracking server URI.")
@click.pass_obj
@handle_errors
def log_model_command(ctx: Context, model_path, flavor, experiment_name, run_name, artifact_path,
                      trust_pickle, fmt, tracking_uri_):
    """Create a run from a model trained elsewhere, logged as an MLflow model."""
    from mlflow_spark_tools.model_import import log_model_from_path

    ctx.settings = ctx.settings.with_overrides(tracking_uri=tracking_uri_)
    result = log_model_from_path(_client(ctx), model_path, flavor, experiment_name, run_name,
                                 artifact_path, trust_pickle)
    data = {"run_id": result.run_id, "experiment_id": result.experiment_id,
            "model_uri": result.model_uri, "model_id": result.model_id}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render_table(list(data), [[str(v) for v in data.values()]]))


@cli.command("paths")
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
@handle_errors
def paths_command(ctx: Context, paths, fmt):
    """Show the fuse path and dbfs:/ URI of Databricks paths (dbfs:/x <-> /dbfs/x, Volumes);
    a path that cannot be used is a usage error naming what to write instead."""
    from mlflow_spark_tools.paths import path_kind, to_dbfs_uri, to_fuse_path

    rows = [{"path": p, "kind": path_kind(to_fuse_path(p)), "fuse_path": to_fuse_path(p),
             "uri": to_dbfs_uri(p)} for p in paths]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(render_table(list(rows[0]), [list(r.values()) for r in rows], max_width=100))


@cli.command("deploy")
@click.option("--env", "env_name", required=True, help="Environment of conf/deployment.yaml, e.g. dev.")
@click.option("--dry-run", is_flag=True, help="Print the requests as JSON instead of sending them; "
              "needs no workspace.")
@click.option("--wheel", type=click.Path(dir_okay=False), help="The wheel to upload (default: build "
              "one from this source checkout).")
@click.option("--conf-dir", type=click.Path(file_okay=False, exists=True), help="Folder holding "
              "deployment.yaml and jobs/ (default: the package's conf/).")
@click.option("--databricks-profile", help="~/.databrickscfg profile (default: the environment's "
              "databricks_profile, else the SDK's default authentication).")
@click.pass_obj
@handle_errors
def deploy_command(ctx: Context, env_name, dry_run, wheel, conf_dir, databricks_profile):
    """Upload the wheel and create or update the jobs of conf/jobs/ by name (idempotent).

    The jobs are rendered for the environment and checked against databricks-sdk's JobSettings,
    and every wheel task's entry point is checked against the wheel, before anything is sent.
    """
    import tempfile
    from pathlib import Path

    from mlflow_spark_tools.deploy import deploy, plan, resolve_wheel, workspace_client
    from mlflow_spark_tools.job_specs import load_environment

    conf = None if conf_dir is None else Path(conf_dir)
    environment = load_environment(env_name, conf)
    with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-wheel-") as build_dir:
        built = resolve_wheel(wheel, Path(build_dir))
        if dry_run:
            click.echo(json.dumps([r.as_dict() for r in plan(environment, built, conf)], indent=2))
            return
        deploy(environment, built, workspace_client(environment, databricks_profile), conf, echo=click.echo)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="mlflow-spark-tools")


if __name__ == "__main__":
    main()
