"""Benchmark: the wheel and its Databricks entry points against the command line.

    .venv/bin/python bench/bench_packaging.py [--runs 5000] [--repetitions 5]

Every measurement runs in a fresh Python process that reports its wall time and peak memory
(VmHWM). Alternating per repetition:

- start-up: ``best-run --help`` through the command line's ``main`` (baseline) and through the
  wheel entry point, found by name in the package's metadata and called with ``sys.argv`` as a
  Databricks ``python_wheel_task`` does;
- end to end: ``build-tables --full-refresh`` of an experiment of ``--runs`` runs (20 params,
  20 metrics, 20 tags) on the embedded engine, the same two ways, the wheel task with named
  parameters (``--name=value``, underscores, ``--full-refresh=true``);
- ``deploy --env prod --dry-run --wheel <built wheel>``.

Plus the wheel's build time and size. Targets: wheel task / command line <= 1.05 in time and
peak memory (the entry point only rewrites arguments); dry run under 10 s and 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_support import write_report

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

# Runs one command in this process, then prints wall seconds and VmHWM (MB) as JSON on stderr's
# last line. argv: mode ("cli" or "wheel"), command, arguments.
RUNNER = """
import json, sys, time
started = time.perf_counter()
mode, command, *args = sys.argv[1:]
def report():
    hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    sys.stderr.write("\\n" + json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": hwm}) + "\\n")
try:
    if mode == "cli":
        from mlflow_spark_tools.cli import main
        main([command, *args])
    else:
        from importlib.metadata import distribution
        entry = next(e for e in distribution("mlflow_spark_tools").entry_points if e.name == command)
        sys.argv = ["mlflow_spark_tools", *args]
        entry.load()()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
report()
"""


def measure(mode: str, command: str, *args: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", RUNNER, mode, command, *args], capture_output=True,
                            text=True, env=env, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise SystemExit(f"{mode} {command} failed: {result.stderr[-2000:]}")
    return json.loads(result.stderr.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "packaging.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()

    from mlflow import MlflowClient

    from mlflow_spark_tools.databricks.deploy import build_wheel
    from tests.support.local_server import LocalTrackingServer
    from tests.support.sqlite_seed import SeedSpec, seed_runs

    root = Path(tempfile.mkdtemp(prefix="bench-packaging-"))
    started = time.perf_counter()
    wheel = build_wheel(ROOT, root / "dist", isolated=False)
    wheel_seconds = time.perf_counter() - started
    results: dict[str, list[dict]] = {k: [] for k in ("help_cli", "help_wheel", "build_cli", "build_wheel",
                                                      "dry_run")}
    with LocalTrackingServer(root / "mlflow", workers=4) as server:
        experiment_id = MlflowClient(server.url).create_experiment("bench-packaging")
        seed_runs(server.db_path, experiment_id, SeedSpec(args.runs, 20, 20, 20))
        env = {**os.environ, "RUST_LOG": "error", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
            env.pop(name, None)
        warehouse = str(root / "warehouse")
        cli_args = ["--experiment-ids", experiment_id, "--full-refresh", "--tracking-uri", server.url,
                    "--warehouse", warehouse, "--database", "bench"]
        named = [f"--experiment_ids={experiment_id}", "--full-refresh=true", f"--tracking-uri={server.url}",
                 f"--warehouse={warehouse}", "--database=bench"]
        for rep in range(args.repetitions):
            for kind, mode, command, argv in (
                ("help_cli", "cli", "best-run", ["--help"]),
                ("help_wheel", "wheel", "best-run", ["--help"]),
                ("build_cli", "cli", "build-tables", cli_args),
                ("build_wheel", "wheel", "build-tables", named),
                ("dry_run", "cli", "deploy", ["--env", "prod", "--dry-run", "--wheel", str(wheel)]),
            ):
                r = measure(mode, command, *argv, env=env)
                results[kind].append(r)
                print(f"rep {rep} {kind}: {r}", flush=True)

    write_report(report_of(args, wheel, wheel_seconds, results), args.out)



def report_of(args: argparse.Namespace, wheel: Path, wheel_seconds: float, results: dict[str, list[dict]]) -> dict:
    """The medians, the wheel's against the command line's, and the targets met."""
    ratio = {
        "start_up_wheel_over_cli": median(results["help_wheel"], "seconds") / median(results["help_cli"], "seconds"),
        "build_wheel_over_cli": median(results["build_wheel"], "seconds") / median(results["build_cli"], "seconds"),
        "build_peak_wheel_over_cli": (median(results["build_wheel"], "peak_rss_mb")
                                      / median(results["build_cli"], "peak_rss_mb")),
    }
    dry_run_seconds = median(results["dry_run"], "seconds")
    dry_run_peak = median(results["dry_run"], "peak_rss_mb")
    return {
        "runs": args.runs,
        "repetitions": args.repetitions,
        "wheel": {"file": wheel.name, "bytes": wheel.stat().st_size, "build_seconds": wheel_seconds},
        "median_seconds": {k: median(v, "seconds") for k, v in results.items()},
        "median_peak_rss_mb": {k: median(v, "peak_rss_mb") for k, v in results.items()},
        "ratios": ratio,
        "targets_met": {
            "start-up wheel/cli <= 1.05": ratio["start_up_wheel_over_cli"] <= 1.05,
            "build wheel/cli <= 1.05": ratio["build_wheel_over_cli"] <= 1.05,
            "build peak wheel/cli <= 1.05": ratio["build_peak_wheel_over_cli"] <= 1.05,
            "dry run < 10 s": dry_run_seconds < 10,
            "dry run peak < 400 MB": dry_run_peak < 400,
        },
        "all": results,
    }


if __name__ == "__main__":
    main()
