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
@click.option("--compute", type=click.Choice(["job_cluster", "serverless"]), help="Run the jobs on job "
              "clusters or serverless (default: the environment's compute).")
@click.pass_obj
@handle_errors
def deploy_command(ctx: Context, env_name: str, dry_run: bool, wheel: str | None, conf_dir: str | None,
                   databricks_profile: str | None, compute: str | None) -> None:
    """Upload the wheel and create or update the jobs of conf/jobs/ by name (idempotent).

    For workspaces deployed without the Databricks CLI; with it, `databricks bundle deploy`
    deploys the same jobs (databricks.yml). The jobs are rendered for the environment and
    checked against databricks-sdk's JobSettings, and every wheel task's entry point is checked
    against the wheel, before anything is sent.
    """
    import dataclasses

    from mlflow_spark_tools.databricks.deploy import deploy, plan, resolve_wheel, workspace_client
    from mlflow_spark_tools.databricks.job_specs import load_environment

    group = click.get_current_context().find_root().command
    assert isinstance(group, click.Group)

    def check(entry_point: str, argv: Sequence[str]) -> None:
        check_arguments(group, entry_point, argv)

    conf = None if conf_dir is None else Path(conf_dir)
    environment = load_environment(env_name, conf)
    if compute is not None:
        environment = dataclasses.replace(environment, compute=compute)
    with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-wheel-") as build_dir:
        built = resolve_wheel(wheel, Path(build_dir))
        if dry_run:
            requests = plan(environment, built, conf, check_arguments=check)
            click.echo(json.dumps([r.as_dict() for r in requests], indent=2))
            return
        deploy(environment, built, workspace_client(environment, databricks_profile), conf,
               check_arguments=check, echo=click.echo)


@cli.command("build-wheel")
@click.option("--out", "out_dir", default="dist", show_default=True, type=click.Path(file_okay=False),
              help="Folder the wheel is written to; earlier wheels of this package there are removed.")
@click.option("--no-build-isolation", is_flag=True, help="Build with this environment's setuptools "
              "(>= 70.1) instead of fetching one.")
@click.pass_obj
@handle_errors
def build_wheel_command(ctx: Context, out_dir: str, no_build_isolation: bool) -> None:
    """Build this source checkout's wheel (the Databricks bundle's artifact) and print its path."""
    from mlflow_spark_tools.databricks.deploy import PACKAGE_NAME, build_wheel, project_root
    from mlflow_spark_tools.errors import UsageError

    root = project_root()
    if root is None:
        raise UsageError("build-wheel builds from a source checkout; this installation is not one.")
    out = Path(out_dir)
    for old in out.glob(f"{PACKAGE_NAME}-*.whl"):
        old.unlink()
    click.echo(str(build_wheel(root, out, isolated=not no_build_isolation)))
