"""The command group of ``mlflow-spark-tools``: options, error handling, logging and output.

Every subcommand parses its options and calls one package function. Errors this package
raises on purpose print one line and exit with their code (2 for usage errors); anything else
prints one line too, and the traceback only with ``--traceback``. ``-v`` and ``--debug`` set the
level of this package's logger only; other libraries keep theirs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlflow_spark_tools import __version__
from mlflow_spark_tools.config import Settings, load_settings
from mlflow_spark_tools.core.progress import PROGRESS_LOGGER
from mlflow_spark_tools.core.redaction import RedactingFormatter, redact
from mlflow_spark_tools.errors import EXIT_FAILURE, EXIT_USAGE, EngineError, MlflowSparkToolsError, UsageError
from mlflow_spark_tools.spark.engine import EngineHandle
from mlflow_spark_tools.tools.output import render_table, to_json
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary

if TYPE_CHECKING:
    from mlflow_spark_tools.spark.engine import Engine
    from mlflow_spark_tools.tracking.client import RetryingClient
    from mlflow_spark_tools.tracking.source import TrackingSource

PACKAGE_LOGGER = "mlflow_spark_tools"
log = logging.getLogger(PACKAGE_LOGGER)


class Context:
    """What the group passes to its subcommands: settings and, lazily, an engine."""

    def __init__(self, settings: Settings, engine: Engine | None = None, *, show_traceback: bool = False) -> None:
        self.settings = settings
        self._engine = EngineHandle(engine)
        self.show_traceback = show_traceback

    @property
    def given_engine(self) -> Engine | None:
        """The engine the caller passed in (tests, notebooks), if any."""
        return self._engine.given

    def engine(self, *, reading: bool = False) -> Engine:
        """The engine of the settings, started or connected on first use. ``reading``: the
        command only reads tables, so a ``--warehouse`` folder that does not exist is a
        mistyped flag, said as a usage error (starting the engine would create it empty)."""
        e = self.settings.engine
        if reading and self.missing_warehouse() is not None:
            raise UsageError(f"No warehouse at {self.missing_warehouse()}: no table was built there. Check "
                             "--warehouse (or MLFLOW_SPARK_TOOLS_WAREHOUSE), or build the tables first.")
        return self._engine.get(e.remote, e.warehouse)

    def missing_warehouse(self) -> str | None:
        """The ``--warehouse`` folder of the embedded engine when it does not exist, else None."""
        e = self.settings.engine
        if e.remote is None and e.warehouse and not Path(e.warehouse).is_dir():
            return str(e.warehouse)
        return None

    def close(self) -> None:
        self._engine.close()


def fail(message: str, code: int) -> None:
    """Print one redacted ``Error:`` line and exit with ``code``."""
    click.echo(f"Error: {redact(message)}", err=True)
    sys.exit(code)


def _fail_with_traceback(exc: BaseException, code: int) -> None:
    """``--traceback``: the traceback, with credentials masked as in every other output."""
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
            if ctx.show_traceback:
                _fail_with_traceback(exc, exc.exit_code)
            fail(str(exc), exc.exit_code)
        except Exception as exc:
            if ctx.show_traceback:
                _fail_with_traceback(exc, EXIT_FAILURE)
            first = error_summary(exc, 500)
            fail(f"{type(exc).__name__}: {first} (rerun with --traceback for the traceback)", EXIT_FAILURE)
        finally:
            ctx.close()

    return wrapper


class OneLineErrorGroup(click.Group):
    """A command group whose usage errors (unknown option, bad choice) print one line, as
    every other error of this command line does, with exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
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


def split_values(values: Sequence[str]) -> list[str]:
    """``("1,2", "3")`` -> ``["1", "2", "3"]``: repeatable, comma-separated options."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def configure_logging(level: int) -> Callable[[], None]:
    """Log this package's records to stderr at ``level``, credentials masked, for one command.

    Only the package's own logger is touched, and only until the returned function puts it back
    as it was (the command line runs it when the command ends), so that a command run inside
    another program (a notebook, a test) leaves that program's logging alone. The handler
    writes to the ``sys.stderr`` of the moment. Records still propagate: where the root logger
    has handlers of its own (a notebook), they see them too.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    # progress lines of long steps show without -v (a job's log then shows it is alive)
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress_before = progress.level
    progress.setLevel(min(level, logging.INFO))

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before)
        progress.setLevel(progress_before)

    return restore


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
@click.option("--debug", is_flag=True, help="Log everything this package does (DEBUG).")
@click.option("--traceback", "show_traceback", is_flag=True, help="Print the traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, tracking_uri: str | None, remote: str | None, warehouse: str | None,
        database: str | None, profile: str | None, verbose: bool, debug: bool, show_traceback: bool) -> None:
    """Spark-native MLflow tools: flattened experiment tables and the tools around them."""
    ctx.call_on_close(configure_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING))
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
        if show_traceback:
            raise
        fail(str(exc), EXIT_USAGE)
    from mlflow_spark_tools.tracking.client import apply_mlflow_http_retries

    apply_mlflow_http_retries(settings.client.mlflow_http_retries)
    # MLflow prints "View run ... at" lines on stdout when a run ends; stdout is for our output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    ctx.obj = Context(settings, injected.get("engine"), show_traceback=show_traceback)


_COMMON_OPTIONS: dict[str, tuple[tuple[str, str], dict[str, Any], str]] = {
    "warehouse": (("--warehouse", "warehouse_"), {"type": click.Path(file_okay=False),
                  "help": "Directory of the tables' files (see the group's --warehouse)."}, "engine__warehouse"),
    "database": (("--database", "database_"), {"help": "Database: schema or catalog.schema."},
                 "tables__database"),
    "remote": (("--remote", "remote_"), {"help": "Spark Connect URL sc://host:port."}, "engine__remote"),
    "tracking_uri": (("--tracking-uri", "tracking_uri_"), {"help": "Tracking server URI."}, "tracking_uri"),
    "profile": (("--profile", "profile_"), {"help": "Rate-limit profile name from conf/rate_limits or a YAML path."},
                "rate_limit_profile"),
}
TABLE_OPTIONS = ("warehouse", "database", "remote", "tracking_uri")
# Commands that may ask the tracking server take its rate-limit profile too.
PACED_TABLE_OPTIONS = (*TABLE_OPTIONS, "profile")


def common_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options of the group that a command also accepts after its name (where a wheel task
    puts them); a value given there wins over the group's."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            declaration, attrs, _ = _COMMON_OPTIONS[name]
            func = click.option(*declaration, **attrs)(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx: Context = click.get_current_context().obj
            overrides = {_COMMON_OPTIONS[name][2]: kwargs.pop(_COMMON_OPTIONS[name][0][1]) for name in names}
            try:
                ctx.settings = ctx.settings.with_overrides(**overrides)
                if "profile" in names:
                    ctx.settings.profile()  # an unknown profile is a usage error before anything starts
            except UsageError as exc:
                fail(str(exc), EXIT_USAGE)
            return func(*args, **kwargs)

        return wrapper

    return decorate


def profile_override(ctx: Context, profile: str | None) -> None:
    """A command's own ``--profile``; an unknown profile is a usage error before anything starts."""
    if profile:
        ctx.settings = ctx.settings.with_overrides(rate_limit_profile=profile)
    ctx.settings.profile()


def query_engine(ctx: Context) -> Engine | None:
    """The engine for a query, or None (the query asks the tracking server) when none starts or
    its ``--warehouse`` does not exist (no table can be there; the folder is not created)."""
    missing = ctx.missing_warehouse()
    if missing is not None:
        log.info("No warehouse at %s; asking the tracking server", missing)
        return None
    try:
        return ctx.engine()
    except EngineError as exc:
        log.info("No Spark engine (%s); asking the tracking server", exc)
        return None


def tracking_source(ctx: Context) -> TrackingSource:
    from mlflow_spark_tools.tracking.source import TrackingSource

    return TrackingSource.from_settings(ctx.settings)


def retrying_client(ctx: Context) -> RetryingClient:
    from mlflow_spark_tools.tracking.client import RetryingClient

    return RetryingClient.from_settings(ctx.settings)


def echo_rows(rows: Sequence[dict[str, Any]], fmt: str, max_width: int = 60) -> None:
    """Rows of the same keys as JSON (a list of objects) or as a table."""
    if fmt == "json":
        click.echo(to_json(list(rows)))
    elif rows:
        click.echo(render_table(list(rows[0]), [[str(v) for v in r.values()] for r in rows], max_width))


def echo_record(data: dict[str, Any], fmt: str) -> None:
    """One record as a JSON object or as a one-row table."""
    if fmt == "json":
        click.echo(to_json(data))
    else:
        echo_rows([data], fmt)
