"""A loopback stand-in for the artifact side of a Databricks workspace.

On Databricks a run's artifact URI is ``dbfs:/databricks/mlflow-tracking/<exp>/<run>/artifacts``.
MLflow's ``DatabricksArtifactRepository`` writes such a run's files by asking the workspace's
tracking API for signed URLs (``POST /api/2.0/mlflow/artifacts/credentials-for-write``, a
rate-limited request) and sending each file to cloud storage with a plain ``PUT`` to its URL
(not rate limited). This server answers both: the credential endpoints (behind the rate-limit
proxy, routed there, so that they take the workspace's limits) and the "cloud storage" the
signed URLs point at (straight, as S3 is reached). Files land under ``root/<run_id>/<path>``.
A logged model's files are written the same way, with the credentials of
``POST /api/2.0/mlflow/logged-models/<id>/artifacts/credentials-for-upload``; they land under
``root/<model_id>/<path>``.

An ``mlflow server`` started with ``--no-serve-artifacts --default-artifact-root
dbfs:/databricks/mlflow-tracking`` gives its runs artifact URIs of that shape; with
``DATABRICKS_HOST`` pointing at the proxy and a token in ``DATABRICKS_TOKEN``, MLflow's real
repository code then talks to this stand-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CREDENTIALS_PREFIX = "/api/2.0/mlflow/artifacts/"
LOGGED_MODEL_PREFIX = "/api/2.0/mlflow/logged-models/"
LOGGED_MODEL_CREDENTIALS = LOGGED_MODEL_PREFIX + "*/artifacts/credentials-for-"
HOST_METADATA = "/.well-known/databricks-config"
DEFAULT_ARTIFACT_ROOT = "dbfs:/databricks/mlflow-tracking"


class DatabricksArtifactStore:
    """The credential endpoints and the signed-URL storage; ``start()`` / ``stop()``.

    Args:
        root: where uploaded files are kept.
        token: the bearer token the credential endpoints require.
    """

    def __init__(self, root: Path, token: str) -> None:
        self.root = Path(root)
        self.token = token
        self._key = hashlib.sha256(token.encode() + b"signing").digest()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.startswith(LOGGED_MODEL_PREFIX):
                    store._model_credentials(self)
                else:
                    store._credentials(self)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == HOST_METADATA:  # the SDK's discovery probe
                    _send(self, 200, {"workspace_id": "1234567890", "oidc_endpoint": ""})
                elif self.path.startswith(CREDENTIALS_PREFIX):
                    store._credentials(self)
                else:
                    store._storage(self)

            def do_PUT(self) -> None:  # noqa: N802
                store._storage(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DatabricksArtifactStore:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def file(self, run_id: str, path: str) -> Path:
        return self.root / run_id / path

    # ---- the workspace API -----------------------------------------------------------------

    def _sign(self, run_id: str, path: str) -> str:
        return hmac.new(self._key, f"{run_id}/{path}".encode(), hashlib.sha256).hexdigest()

    def _credentials(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        endpoint = handler.path.split("?", 1)[0][len(CREDENTIALS_PREFIX):]
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return _send(handler, 401, {"error_code": "UNAUTHENTICATED", "message": "bad token"})
        if endpoint not in ("credentials-for-write", "credentials-for-read"):
            return _send(handler, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": endpoint})
        if raw:
            body = json.loads(raw)
        else:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
            body = {"run_id": query.get("run_id", [""])[0], "path": query.get("path", [])}
        run_id = body.get("run_id") or ""
        paths = body.get("path") or []
        paths = [paths] if isinstance(paths, str) else paths
        with self._lock:
            self.calls[endpoint] += 1
        infos = [{"run_id": run_id, "path": path, "type": "AWS_PRESIGNED_URL",
                  "signed_uri": f"{self.url}/storage/{urllib.parse.quote(run_id)}/"
                                f"{urllib.parse.quote(path)}?sig={self._sign(run_id, path)}"}
                 for path in paths]
        _send(handler, 200, {"credential_infos": infos})

    def _model_credentials(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else {}
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return _send(handler, 401, {"error_code": "UNAUTHENTICATED", "message": "bad token"})
        model_id, _, endpoint = handler.path.split("?", 1)[0][len(LOGGED_MODEL_PREFIX):].partition("/artifacts/")
        if endpoint not in ("credentials-for-upload", "credentials-for-download") or "/" in model_id:
            return _send(handler, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": endpoint})
        with self._lock:
            self.calls[f"logged-models/{endpoint}"] += 1
        credentials = [{"model_id": model_id, "credential_info": {
            "path": path, "type": "AWS_PRESIGNED_URL",
            "signed_uri": f"{self.url}/storage/{urllib.parse.quote(model_id)}/"
                          f"{urllib.parse.quote(path)}?sig={self._sign(model_id, path)}"}}
            for path in body.get("paths") or []]
        _send(handler, 200, {"credentials": credentials})

    # ---- the "cloud storage" ---------------------------------------------------------------

    def _storage(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        if not parts.path.startswith("/storage/"):
            return _send(handler, 404, {"message": "not found"})
        run_id, _, path = urllib.parse.unquote(parts.path[len("/storage/"):]).partition("/")
        signature = urllib.parse.parse_qs(parts.query).get("sig", [""])[0]
        if not hmac.compare_digest(signature, self._sign(run_id, path)) or ".." in path.split("/"):
            return _send(handler, 403, {"message": "bad signature"})
        target = self.file(run_id, path)
        if handler.command == "PUT":
            length = int(handler.headers.get("Content-Length") or 0)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(handler.rfile.read(length) if length else b"")
            with self._lock:
                self.calls["storage-put"] += 1
            return _send(handler, 200, {})
        if not target.is_file():
            return _send(handler, 404, {"message": "no such file"})
        data = target.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def routes(store: DatabricksArtifactStore) -> dict[str, str]:
    """The proxy routes that send the workspace's artifact endpoints to the stand-in."""
    return {CREDENTIALS_PREFIX: store.url, LOGGED_MODEL_CREDENTIALS: store.url, HOST_METADATA: store.url}
