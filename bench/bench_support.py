"""What the benchmarks share: the rate-limit proxy as a process, its counters, the engine in a
process of its own, workers in fresh processes, timed builds, the report."""

from __future__ import annotations

import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# the tracking server and seeding helpers are shared with the tests (tests/support)
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def use_package_tree(tree: str | None) -> None:
    """Import ``mlflow_spark_tools`` from another checkout (``git worktree add DIR COMMIT``)
    instead of this one, to measure a change against the code before it in the same run.
    Call before anything imports the package; the proxy process still runs this checkout's."""
    if tree is None:
        return
    import importlib.util

    # the editable install's import hook would find this checkout first
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    # only the package comes from the other tree: tests/support stays this checkout's
    package = Path(tree).resolve() / "mlflow_spark_tools"
    spec = importlib.util.spec_from_file_location("mlflow_spark_tools", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    mlflow_spark_tools = importlib.util.module_from_spec(spec)
    sys.modules["mlflow_spark_tools"] = mlflow_spark_tools
    spec.loader.exec_module(mlflow_spark_tools)

    print(f"package: {mlflow_spark_tools.__file__}", flush=True)


def start_proxy(upstream: str, profile: str, latency_ms: float,
                routes: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow-spark-tools rate-limit-proxy`` in its own process; returns it and its URL."""
    from tests.support.local_server import free_port, wait_for_health

    port = free_port()
    route_args = [arg for prefix, url in (routes or {}).items() for arg in ("--route", f"{prefix}={url}")]
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_spark_tools.cli", "rate-limit-proxy", "--upstream", upstream,
         "--port", str(port), "--profile", profile, "--latency-ms", str(latency_ms), *route_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, 60, process)
    return process, url


def proxy_stats(url: str, reset: bool = False) -> dict:
    """The proxy's counters, or (``reset``) zero them and refill its buckets."""
    if reset:
        urllib.request.urlopen(urllib.request.Request(f"{url}/__proxy/reset", data=b"{}"), timeout=30).close()
        return {}
    with urllib.request.urlopen(f"{url}/__proxy/stats", timeout=30) as response:
        return json.loads(response.read())


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux's VmHWM, not ``ru_maxrss``: a worker started by ``subprocess`` inherits in
    ``ru_maxrss`` the RSS its parent had when it forked, which would hide a smaller peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def serve_engine() -> None:
    """An engine's process: a Sail Spark Connect server until killed (``--serve-engine``)."""
    import time

    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    print(server.listening_address[1], flush=True)
    while True:
        time.sleep(3600)


CLASSIC = "classic"  # in place of a Spark Connect URL: classic local JVM Spark with Delta, in the worker


def classic_engine(warehouse: str) -> Any:
    """Classic local JVM Spark (``local[2]``) with the venv's Delta jars (``make jars``), its
    tables at ``warehouse`` (registered again by each new process, as with ``spark-submit
    --warehouse``)."""
    from mlflow_spark_tools.spark.engine import get_engine
    from tests.support.classic_spark import start_classic

    return get_engine(spark=start_classic(Path(warehouse).parent / "spark-managed").spark, warehouse=warehouse)


def jvm_peak_rss_mb() -> float:
    """The peak resident memory of this process's JVM child (classic Spark's driver and
    executors in local mode), in MB; 0 without one."""
    import psutil

    peaks = [peak_rss_of(child.pid) for child in psutil.Process().children(recursive=True)
             if child.name() == "java"]
    return max(peaks, default=0.0)


def start_engine(script: Path) -> tuple[subprocess.Popen, str]:
    """``script --serve-engine`` in a process of its own, so that a build's peak memory is the
    driver's alone; returns the process and its Spark Connect URL."""
    process = subprocess.Popen([sys.executable, str(script), "--serve-engine"], stdout=subprocess.PIPE, text=True)
    port = process.stdout.readline().strip()  # type: ignore[union-attr]
    return process, f"sc://127.0.0.1:{port}"


@contextmanager
def engine_process(script: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """:func:`start_engine` for the ``with`` block: yields the process and its Spark Connect URL,
    and kills the process at the end."""
    process, remote = start_engine(script)
    try:
        yield process, remote
    finally:
        process.kill()
        process.wait()


def worker_on_engine(script: Path, arguments: list[str]) -> dict:
    """:func:`worker_result` of ``script --worker ...arguments --remote URL`` on an engine started
    for it alone (so that the engine's peak RSS is this worker's), stopped after."""
    with engine_process(script) as (engine, remote):
        return worker_result(script, [*arguments, "--remote", remote], engine.pid)


def peak_rss_of(pid: int) -> float:
    """Another process's peak resident memory so far, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def bench_engine(remote: str | None, warehouse: str) -> Any:
    """The engine of a worker: the Spark Connect server at ``remote``, classic local JVM Spark
    (``remote`` is :data:`CLASSIC`), or without ``remote`` an embedded engine started here."""
    from mlflow_spark_tools.spark.engine import get_engine, start_embedded

    if remote == CLASSIC:
        return classic_engine(warehouse)
    if remote is None:
        return start_embedded(warehouse)
    return get_engine(remote=remote, warehouse=warehouse)


def timed_build(remote: str | None, warehouse: str, overrides: dict, **build_arguments) -> tuple[float, Any, Any]:
    """One ``build_experiment_tables`` in this process on the engine of :func:`bench_engine`,
    timed: (seconds, its result, the engine). The first experiment that failed ends the process
    with its error."""
    import time

    import mlflow  # noqa: F401 - imported before the clock starts

    from mlflow_spark_tools.config import load_settings
    from mlflow_spark_tools.tables.build import build_experiment_tables

    engine = bench_engine(remote, warehouse)
    settings = load_settings().with_overrides(**overrides)
    started = time.perf_counter()
    result = build_experiment_tables(settings, engine=engine, **build_arguments)
    seconds = time.perf_counter() - started
    failed = [s for s in result.summaries if not s.ok]
    if failed:
        raise SystemExit(f"{len(failed)} experiments failed, the first: {failed[0].error}")
    return seconds, result, engine


def worker_result(script: Path, arguments: list[str], engine_pid: int | None) -> dict:
    """``script --worker ...arguments`` in a fresh process: the JSON of its last output line,
    with the engine's peak RSS so far; a failed worker ends this process with its stderr's end."""
    out = subprocess.run([sys.executable, str(script), "--worker", *arguments], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{script.name} worker {arguments[:1]} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if engine_pid is not None:  # else the worker ran its engine itself and said its peak
        result["engine_peak_rss_mb"] = peak_rss_of(engine_pid)
    return result


def execute(target: str, statements: list[tuple[str, list]]) -> None:
    """Run statements with ``?`` parameters on a sqlite path or a PostgreSQL URI."""
    if target.startswith("postgresql"):
        import psycopg2

        conn = psycopg2.connect(target)
        with conn, conn.cursor() as cursor:
            for sql, rows in statements:
                cursor.executemany(sql.replace("?", "%s"), rows)
        conn.close()
        return
    with sqlite3.connect(target) as conn:
        for sql, rows in statements:
            conn.executemany(sql, rows)


def mark_running(store: str | Path, run_ids: list[str]) -> None:
    """Set up a repetition: these runs of a backend store (a sqlite path or a PostgreSQL URI)
    are unfinished when the table is built."""
    execute(str(store), [("UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE run_uuid = ?",
                          [(r,) for r in run_ids])])


def median_of(results: dict[str, list[dict]], kind: str, key: str) -> float:
    """The median of ``key`` over the repetitions of one kind of measurement."""
    return statistics.median(r[key] for r in results[kind])


def write_report(report: dict, out: str) -> None:
    """Write the whole report as JSON and print it without the per-repetition details."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "all"}, indent=2))


def store_root(on: str, base: Path) -> tuple[Path, Any]:
    """Where a benchmark's failed-run stores go: ``base`` on the local disk, or a folder of the
    object-store FUSE mount of the tests (``on="objectstore"``); returns it and the mount to
    close (None)."""
    if on == "local":
        return base, None
    from tests.support.object_store_fuse import ObjectStoreMount, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"No object-store FUSE mount here: {reason}")
    mount = ObjectStoreMount(base / "backing", base / "mount")
    return mount.__enter__() / "stores", mount


def replayer_for(store: Path, url: str, profile: Any, engine_warehouse: Path, **kwargs: Any) -> tuple[Any, Any]:
    """A ``Replayer`` of whichever package is loaded (this checkout's, or the one of
    ``--package-tree``); with a package whose replayer holds its store through a lease, the
    lease on an embedded engine started here. Returns it and the engine to stop (or None)."""
    import inspect

    from mlflow_spark_tools.failed_runs.replayer import Replayer

    if "lease" not in inspect.signature(Replayer).parameters:
        return Replayer(str(store), url, profile, **kwargs), None
    from mlflow_spark_tools.failed_runs.lease import DeltaLease
    from mlflow_spark_tools.spark.engine import start_embedded

    engine = start_embedded(engine_warehouse)
    return Replayer(str(store), url, profile, lease=DeltaLease(engine, "bench", store), **kwargs), engine
