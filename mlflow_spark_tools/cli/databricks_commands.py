"""Commands for Databricks: path rules and job deployment."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import click

from mlflow_spark_tools.cli.app import Context, cli, echo_rows, handle_errors
from mlflow_spark_tools.cli.wheel_arguments import check_arguments


@cli.command("paths")
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
@handle_errors
def paths_command(ctx: Context, paths: tuple[str, ...], fmt: str) -> None:
    """Show the fuse path and dbfs:/ URI of Databricks paths (dbfs:/x <-> /dbfs/x, Volumes);
    a path that cannot be used is a usage error naming what to write instead."""
    from mlflow_spark_tools.databricks.paths import path_kind, to_dbfs_uri, to_fuse_path

    rows = [{"path": p, "kind": path_kind(to_fuse_path(p)), "fuse_path": to_fuse_path(p),
             "uri": to_dbfs_uri(p)} for p in paths]
    echo_rows(rows, fmt, max_width=100)


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
def deploy_command(ctx: Context, env_name: str, dry_run: bool, wheel: str | None, conf_dir: str | None,
                   databricks_profile: str | None) -> None:
    """Upload the wheel and create or update the jobs of conf/jobs/ by name (idempotent).

    The jobs are rendered for the environment and checked against databricks-sdk's JobSettings,
    and every wheel task's entry point is checked against the wheel, before anything is sent.
    """
    from mlflow_spark_tools.databricks.deploy import deploy, plan, resolve_wheel, workspace_client
    from mlflow_spark_tools.databricks.job_specs import load_environment

    group = click.get_current_context().find_root().command
    assert isinstance(group, click.Group)

    def check(entry_point: str, argv: Sequence[str]) -> None:
        check_arguments(group, entry_point, argv)

    conf = None if conf_dir is None else Path(conf_dir)
    environment = load_environment(env_name, conf)
    with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-wheel-") as build_dir:
        built = resolve_wheel(wheel, Path(build_dir))
        if dry_run:
            requests = plan(environment, built, conf, check_arguments=check)
            click.echo(json.dumps([r.as_dict() for r in requests], indent=2))
            return
        deploy(environment, built, workspace_client(environment, databricks_profile), conf,
               check_arguments=check, echo=click.echo)
