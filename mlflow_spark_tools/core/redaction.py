"""One redaction of credentials for every message, log line, repr and summary this package shows.

Credentials reach text in several ways: a tracking URI with ``user:password@`` in it (the form
MLflow accepts for basic authentication) quoted by our own messages or by MLflow's exception
text; an ``Authorization`` header or a ``token=`` parameter echoed by an HTTP library; a
Databricks personal access token (``dapi...``); or the value of an environment variable that
holds a secret, quoted verbatim anywhere. :func:`redact` removes all of them; the command line's
error line, its log handler and its ``--debug`` tracebacks pass through it, and messages that
name a tracking server use :func:`redact_uri` at the source, so library callers never see one
either.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse

MASK = "***"

# Environment variables whose values are secrets: quoted anywhere, they are masked.
SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "DATABRICKS_TOKEN",
    "DATABRICKS_PASSWORD",
    "DATABRICKS_CLIENT_SECRET",
    "ARM_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "MLFLOW_SPARK_TOOLS_SIGNING_KEY",
    "MLFLOW_SPARK_TOOLS_BACKEND_STORE_URI",
    "PGPASSWORD",
)
_MIN_SECRET = 4  # shorter values would mask ordinary words
# Secrets this process learned from its settings (a database password in a backend store URI):
# quoted anywhere, in any form a driver may echo, they are masked like the environment's.
_KNOWN_SECRETS: set[str] = set()

_URL_USERINFO = re.compile(r"(?<=//)[^/@\s'\"]+@")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic|token)?(\s*)[^\s'\",}]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_PAT = re.compile(r"\bdapi[0-9a-f]{16,}(-\d+)?\b|\bdose[0-9a-f]{16,}\b")
_KEY_VALUE = re.compile(
    r"(?i)((?<![A-Za-z0-9])(?:access_token|refresh_token|id_token|token|password|passwd|secret|client_secret|api_key)"
    r"['\"]?\s*[:=]\s*['\"]?)([^\s'\"&,;}]+)"
)


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-quoted form) in every text :func:`redact` sees from now on."""
    if value and len(value) >= _MIN_SECRET:
        _KNOWN_SECRETS.add(value)
        _KNOWN_SECRETS.add(urllib.parse.quote(value, safe=""))


def _env_secrets() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_ENV} | _KNOWN_SECRETS
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact(text: object) -> str:
    """``text`` with URL credentials, authorization values, tokens and secret values masked."""
    out = str(text)
    for secret in _env_secrets():
        if secret in out:
            out = out.replace(secret, MASK)
    out = _URL_USERINFO.sub(MASK + "@", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{m.group(3)}{MASK}", out)
    out = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", out)
    out = _PAT.sub(MASK, out)
    return _KEY_VALUE.sub(lambda m: m.group(1) + MASK, out)


def redact_uri(uri: str | None) -> str:
    """A URI as messages show it: without ``user:password@`` and secret query parameters."""
    if uri is None:
        return "None"
    try:
        parts = urllib.parse.urlsplit(str(uri))
    except ValueError:
        return redact(uri)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        netloc = f"{MASK}@{host}" + (f":{port}" if port else "")
        uri = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return redact(uri)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments and traceback) passes :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
