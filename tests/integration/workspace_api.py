"""A loopback stand-in for the few Databricks workspace APIs that deploy and secrets use.

No Databricks workspace is reachable from the test machine, so databricks-sdk talks to this
server instead: Files API (directories, file upload), Workspace API (mkdirs, import), Jobs API
2.2 (list by name, create, reset, get) and Secrets (get). It keeps what it is sent and records
every request, so tests compare what the SDK really sent with what ``deploy --dry-run`` printed.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


@dataclass
class WorkspaceState:
    files: dict[str, bytes] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    next_job_id: int = 1001


class _Handler(BaseHTTPRequestHandler):
    state: WorkspaceState
    token: str

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, document: Any = None) -> None:
        data = json.dumps(document if document is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._answer(status, {"error_code": code, "message": message})

    def _handle(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type") or ""
        if content_type.startswith("application/json") and raw:
            body: Any = json.loads(raw)
        elif content_type.startswith("multipart/form-data"):
            message = email.message_from_bytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
            body = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                    for part in message.iter_parts()}
        else:
            body = raw
        auth = self.headers.get("Authorization")
        self.state.requests.append(Recorded(self.command, path, query, body, auth))
        if path.startswith("/.well-known/"):  # host metadata the SDK asks for: none here
            return self._error(404, "NOT_FOUND", path)
        if auth != f"Bearer {self.token}":
            return self._error(401, "UNAUTHENTICATED", "bad token")
        self._route(self.command, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        state = self.state
        if method == "PUT" and path.startswith("/api/2.0/fs/directories/"):
            state.directories.add(path[len("/api/2.0/fs/directories"):])
            return self._answer(200)
        if method == "PUT" and path.startswith("/api/2.0/fs/files/"):
            target = path[len("/api/2.0/fs/files"):]
            if target in state.files and query.get("overwrite") != "true":
                return self._error(409, "ALREADY_EXISTS", target)
            state.files[target] = body
            return self._answer(204)
        if method == "POST" and path == "/api/2.0/workspace/mkdirs":
            state.directories.add(body["path"])
            return self._answer(200)
        if method == "POST" and path == "/api/2.0/workspace/import":
            state.files[body["path"].decode()] = body["content"]
            return self._answer(200)
        if method == "GET" and path == "/api/2.2/jobs/list":
            name = query.get("name")
            jobs = [{"job_id": job_id, "settings": settings} for job_id, settings in state.jobs.items()
                    if name is None or settings.get("name", "").lower() == name.lower()]
            return self._answer(200, {"jobs": jobs} if jobs else {})
        if method == "POST" and path == "/api/2.2/jobs/create":
            job_id = state.next_job_id
            state.next_job_id += 1
            state.jobs[job_id] = body
            return self._answer(200, {"job_id": job_id})
        if method == "POST" and path == "/api/2.2/jobs/reset":
            if body["job_id"] not in state.jobs:
                return self._error(400, "INVALID_PARAMETER_VALUE", f"Job {body['job_id']} does not exist.")
            state.jobs[body["job_id"]] = body["new_settings"]
            return self._answer(200)
        if method == "GET" and path == "/api/2.0/secrets/get":
            value = state.secrets.get((query.get("scope"), query.get("key")))
            if value is None:
                return self._error(404, "RESOURCE_DOES_NOT_EXIST", "no such secret")
            return self._answer(200, {"key": query["key"],
                                      "value": base64.b64encode(value.encode()).decode()})
        return self._error(404, "ENDPOINT_NOT_FOUND", f"{method} {path}")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class WorkspaceAPI:
    """Start with ``WorkspaceAPI(token).start()``; ``url`` is the workspace host to use."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.state = WorkspaceState()
        handler = type("Handler", (_Handler,), {"state": self.state, "token": token})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WorkspaceAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
