"""Commands of the failed-run replay: replay, and the rate-limit proxy to try it against."""

from __future__ import annotations

import json
import math
import sys
import urllib.parse
from pathlib import Path

import click
from click.core import ParameterSource

from mlflow_spark_tools.cli.app import (
    TABLE_OPTIONS,
    Context,
    cli,
    common_options,
    handle_errors,
    profile_override,
)
from mlflow_spark_tools.errors import EXIT_PARTIAL, UsageError

UPSTREAM_ENV = "MLFLOW_SPARK_TOOLS_PROXY_UPSTREAM"
PROFILE_HELP = "Rate-limit profile name from conf/rate_limits or a YAML path (default: databricks)."


@cli.command("replay")
@click.option("--replay-dir", required=True, help="The failed-run store: /dbfs/..., dbfs:/..., "
              "/Volumes/... or a local directory.")
@click.option("--profile", "profile_", help=PROFILE_HELP)
@click.option("--max-workers", type=click.IntRange(min=1), default=16, show_default=True,
              help="Payloads replayed at once.")
@click.option("--until-empty", is_flag=True, help="Pass after pass until nothing is pending.")
@click.option("--loop", is_flag=True, help="Keep replaying, a pass every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds between passes with --loop.")
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="The store's lease (<database>.replay_lease): a replayer that stopped renewing it is "
              "taken over after this long; it sends nothing in the last half, so keep it above twice the "
              "longest request.")
@click.option("--trust-unsigned", is_flag=True, help="Unpickle model blobs without a valid "
              "signature. Unsafe on shared storage: a pickle runs code as this job.")
@click.option("--secret-scope", help="Databricks secret scope holding the signing key.")
@click.option("--secret-key", help="Key of the signing key in --secret-scope.")
@click.option("--no-ledger", is_flag=True, help="Do not write <database>.replay_log.")
@click.option("--retention-days", type=click.FloatRange(min=0), help="Remove replayed payloads' documents "
              "and data this many days after their replay (default: replay.retention_days of the conf, 7).")
@common_options(*TABLE_OPTIONS)
@click.pass_obj
@handle_errors
def replay_command(ctx: Context, replay_dir: str, profile_: str | None, max_workers: int, until_empty: bool,
                   loop: bool, interval: float, lease_seconds: float, trust_unsigned: bool,
                   secret_scope: str | None, secret_key: str | None, no_ledger: bool,
                   retention_days: float | None) -> None:
    """Replay deferred runs into the tracking server within its rate limits.

    Holds the store's lease in <database>.replay_lease for as long as it runs: a second replay
    of the same store replays nothing and says who holds it. Prints a JSON summary (replayed,
    resumed, failed, still pending, requests and 429s per API class, seconds) and appends one
    row per payload to <database>.replay_log. The signing key for model blobs comes from
    MLFLOW_SPARK_TOOLS_SIGNING_KEY or --secret-scope/--secret-key. Exit code 0 when everything
    was replayed (or another replay holds the store), 3 when payloads failed or are still
    pending, 2 for usage errors (a store that cannot be used among them).
    """
    from mlflow_spark_tools.failed_runs.replay_job import (
        LOOP,
        ONCE,
        UNTIL_EMPTY,
        ReplayOptions,
        run_replay_job,
    )

    if until_empty and loop:
        raise UsageError("Use --until-empty or --loop, not both.")
    if retention_days is not None:
        _check_days(retention_days, "--retention-days")
    profile_override(ctx, profile_)
    options = ReplayOptions(
        replay_dir=replay_dir, mode=LOOP if loop else UNTIL_EMPTY if until_empty else ONCE,
        interval=interval, max_workers=max_workers, lease_seconds=lease_seconds,
        trust_unsigned=trust_unsigned, ledger=not no_ledger,
        signing_secret_scope=secret_scope, signing_secret_key=secret_key, retention_days=retention_days,
    )
    code = run_replay_job(ctx.settings, options, engine=ctx.given_engine, echo=click.echo)
    if code:
        sys.exit(code)


@cli.command("prune-store")
@click.option("--replay-dir", required=True, help="The failed-run store: /dbfs/..., dbfs:/..., "
              "/Volumes/... or a local directory.")
@click.option("--older-than-days", type=click.FloatRange(min=0), help="Remove replayed payloads "
              "replayed at least this many days ago (default: replay.retention_days of the conf, 7).")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.pass_obj
@handle_errors
def prune_store_command(ctx: Context, replay_dir: str, older_than_days: float | None, dry_run: bool) -> None:
    """Remove what replayed payloads leave in the store once older than the retention period.

    Removes done/<id>.json and data/<id>/ (artifact copies, model blobs, checkpoints) of
    payloads replayed --older-than-days ago, by the replay time their record holds; never
    anything pending or quarantined. The replay job does the same at the end of each run.
    Prints a JSON count of payloads and bytes.
    """
    from mlflow_spark_tools.databricks.paths import to_fuse_path
    from mlflow_spark_tools.failed_runs.store import FailedRunStore

    days = older_than_days if older_than_days is not None else ctx.settings.replay.retention_days
    if days is None:
        raise UsageError("replay.retention_days is null in the conf: pass --older-than-days.")
    _check_days(days, "--older-than-days")
    root = Path(to_fuse_path(replay_dir))
    if not root.is_dir():  # never create a store here, a dry run least of all
        what = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"The failed-run store {root} {what}.")
    with FailedRunStore(root, create=False) as store:  # a folder that is missing has nothing to prune
        pruned = store.prune_replayed(days * 86400.0, dry_run=dry_run)
    click.echo(json.dumps(pruned.as_dict() | {"dry_run": dry_run, "older_than_days": days}, indent=2))
    if pruned.errors:
        sys.exit(EXIT_PARTIAL)


def _check_days(days: float, option: str) -> None:
    if not math.isfinite(days):
        raise UsageError(f"{option} must be a finite number of days, not {days}.")


def _routes(routes: tuple[str, ...]) -> dict[str, str]:
    routed = {}
    for route in routes:
        prefix, sep, url = route.partition("=")
        if not sep or not prefix.startswith("/") or not url:
            raise UsageError(f"--route takes PREFIX=URL with PREFIX starting with '/', not {route!r}.")
        routed[prefix] = url
    return routed


@cli.command("rate-limit-proxy")
@click.option("--upstream", envvar=UPSTREAM_ENV, required=True, show_envvar=True,
              help="The tracking server, e.g. http://127.0.0.1:5000. With user:password@ in it, give it "
                   "in the environment: a command line is visible to every user of the machine.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=5001, show_default=True,
              help="Port to listen on (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--profile", "profile_", help=PROFILE_HELP)
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
def rate_limit_proxy_command(ctx: Context, upstream: str, port: int, host: str, profile_: str | None,
                             latency_ms: float, max_body_bytes: int, max_connections: int, idle_timeout: float,
                             routes: tuple[str, ...]) -> None:
    """Serve the MLflow REST API of --upstream with Databricks' rate limits.

    Requests over a class's limit get HTTP 429 with {"error_code": "REQUEST_LIMIT_EXCEEDED"}
    and Retry-After. Counters: GET /__proxy/stats; zero them: POST /__proxy/reset. A
    user:password@ in --upstream is sent upstream as HTTP Basic authentication and never printed;
    give such a URL in MLFLOW_SPARK_TOOLS_PROXY_UPSTREAM rather than on the command line.
    """
    from mlflow_spark_tools.tools.proxy import RateLimitProxy

    source = click.get_current_context().get_parameter_source("upstream")
    if source is ParameterSource.COMMANDLINE and urllib.parse.urlsplit(upstream).password:
        click.echo(f"Warning: the password in --upstream can be read by every user of this machine (in its "
                   f"process list); set {UPSTREAM_ENV} instead.", err=True)
    profile_override(ctx, profile_)
    profile = ctx.settings.profile()
    proxy = RateLimitProxy(upstream, profile, latency_ms=latency_ms, host=host, port=port,
                           max_body_bytes=max_body_bytes, idle_timeout=idle_timeout,
                           max_connections=max_connections, routes=_routes(routes))
    click.echo(json.dumps({"listening": proxy.url, "upstream": proxy.upstream_host, "profile": profile.name,
                           "limits": profile.limits, "latency_ms": latency_ms,
                           "max_body_bytes": max_body_bytes, "max_connections": max_connections,
                           "idle_timeout": idle_timeout}), err=True)
    try:
        proxy.serve()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
