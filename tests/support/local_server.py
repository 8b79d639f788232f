"""A local MLflow tracking server for the demo, tests and benchmarks.

Starts ``mlflow server`` with a sqlite backend (or another SQLAlchemy store) on a free loopback
port, waits until it answers ``/health`` and stops only the process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow_spark_tools.errors import TrackingServerError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TrackingServerError(f"mlflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TrackingServerError(f"mlflow server at {url} did not answer /health within {timeout:.0f}s")


class LocalTrackingServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite store (or ``backend_store_uri``) and, unless
    ``artifact_root`` names another root, served artifacts under ``root``.

    Args:
        root: directory for the database, artifacts and the server log.
        workers: server worker processes.
        server_args: more options for ``mlflow server``.
        artifact_root: the runs' artifact root instead of served artifacts: a directory (runs
            get plain path artifact URIs) or ``dbfs:/databricks/mlflow-tracking``.
        backend_store_uri: the server's store, a SQLAlchemy URI such as ``postgresql://...``;
            the sqlite file :attr:`db_path` when not given. It reaches the server through the
            environment, so a password in it stays out of the process list.
    """

    def __init__(self, root: Path | str, workers: int = 2, server_args: tuple[str, ...] = (),
                 artifact_root: str | None = None, backend_store_uri: str | None = None) -> None:
        self.root = Path(root)
        self.backend_store_uri = backend_store_uri
        self.artifact_root = artifact_root
        self.workers = workers
        self.server_args = tuple(server_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def db_path(self) -> Path:
        """The sqlite store's file (the store unless ``backend_store_uri`` names another)."""
        return self.root / "mlflow.db"

    def start(self, timeout: float = 120.0) -> LocalTrackingServer:
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        log_file = open(self.root / "server.log", "ab")
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        # The server's background job runner (GenAI evaluation jobs) is not needed here and
        # would take CPU from the requests being measured.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.artifact_root and self.artifact_root.startswith("dbfs:/databricks/mlflow-tracking"):
            # logged models under <experiment>/logged_models/<id>, as a workspace keeps them
            site = str(Path(__file__).parent / "databricks_site")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
            env["MLFLOW_SPARK_TOOLS_TEST_LOGGED_MODELS_FOLDER"] = "logged_models"
        if self.backend_store_uri is None:
            store_args = ["--backend-store-uri", f"sqlite:///{self.db_path}"]
        else:
            store_args = []
            env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        self.process = subprocess.Popen(
            [
                mlflow_cli,
                "server",
                *store_args,
                *self._artifact_args(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *self.server_args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log_file.close()
        try:
            wait_for_health(self.url, timeout, self.process)
        except Exception:
            self.stop()
            raise
        return self

    def _artifact_args(self) -> list[str]:
        if self.artifact_root is None:
            # Artifacts go through the server (mlflow-artifacts:/ URIs): uploads are REST
            # requests of the tracking server, which rate limits apply to.
            return ["--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts")]
        # Runs get artifact URIs under this root (a directory, or dbfs:/databricks/mlflow-tracking
        # as on Databricks) that clients write with MLflow's repository for it.
        return ["--no-serve-artifacts", "--default-artifact-root", self.artifact_root]

    def stop(self) -> None:
        """Stop the server and the worker processes it started (its own process group)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self.process = None

    def __enter__(self) -> LocalTrackingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
