"""Everything about a run or an experiment, as JSON, YAML or text.

A run's dump holds its info (with start and end times in UTC words and the duration next to
the milliseconds), params, latest metrics, tags and, when asked, its artifact tree with the
size of every file and totals. An experiment's dump holds the experiment, counts of its runs by
lifecycle stage and status, and when asked every run (paged, never all at once in requests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import yaml

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.tools.output import json_value, to_json
from mlflow_spark_tools.tracking.client import RetryingClient, experiment_or_fail, get_run_or_fail
from mlflow_spark_tools.tracking.pages import ALL
from mlflow_spark_tools.tracking.rate_limit_errors import is_not_found

FORMATS = ("json", "yaml", "text")
RUN_INFO_FIELDS = ("run_id", "run_name", "experiment_id", "status", "lifecycle_stage", "user_id",
                   "artifact_uri", "start_time", "end_time")


def utc_words(ms: int | None) -> str | None:
    """``2020-08-04 20:41:37.304 UTC`` for milliseconds since the epoch."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def duration_words(seconds: float | None) -> str | None:
    """``1.471 seconds``; with hours, minutes and seconds beside it from a minute on."""
    if seconds is None:
        return None
    text = f"{seconds:.3f} seconds"
    if seconds >= 60:
        whole = int(seconds)
        text += f" ({whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d})"
    return text


def _info_section(info: Mapping[str, Any], experiment_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {name: info.get(name) for name in RUN_INFO_FIELDS}
    out["experiment_name"] = experiment_name
    for name in ("start_time", "end_time"):
        out[name] = int(out[name]) if out[name] not in (None, "") else None
    start, end = out["start_time"], out["end_time"]
    seconds = (end - start) / 1000.0 if start is not None and end is not None else None
    out["_start_time"] = utc_words(start)
    out["_end_time"] = utc_words(end)
    out["_duration_seconds"] = seconds
    out["_duration"] = duration_words(seconds)
    return out


def run_document(info: Mapping[str, Any], params: Mapping[str, str], metrics: Mapping[str, float],
                 tags: Mapping[str, str], experiment_name: str | None = None) -> dict[str, Any]:
    """The dump of one run from its parts (keys sorted)."""
    return {
        "info": _info_section(info, experiment_name),
        "params": dict(sorted(params.items())),
        "metrics": dict(sorted(metrics.items())),
        "tags": dict(sorted(tags.items())),
    }


def _run_document_from_json(run: Mapping[str, Any], experiment_name: str | None) -> dict[str, Any]:
    data = run.get("data", {})
    info = dict(run.get("info", {}))
    info.setdefault("run_id", info.get("run_uuid"))
    return run_document(
        info,
        {p["key"]: p.get("value", "") for p in data.get("params", ())},
        {m["key"]: float(m["value"]) for m in data.get("metrics", ())},
        {t["key"]: t.get("value", "") for t in data.get("tags", ())},
        experiment_name,
    )


def artifact_tree(client: RetryingClient, run_id: str, max_depth: int | None = None) -> dict[str, Any]:
    """The run's artifacts: a tree of files and directories, file sizes and totals.

    ``max_depth`` 0 lists the top level only; directories below the limit are marked
    ``not_listed`` and their files are not in the totals.
    """
    if max_depth is not None and max_depth < 0:
        raise UsageError("--max-depth must be 0 or more.")
    totals = {"bytes": 0, "files": 0, "directories_not_listed": 0}

    def listing(path: str | None, depth: int) -> list[dict[str, Any]]:
        entries = []
        for item in sorted(client.list_artifacts(run_id, path), key=lambda f: f.path):
            entry: dict[str, Any] = {"path": item.path}
            if item.is_dir:
                if max_depth is not None and depth >= max_depth:
                    entry["not_listed"] = True
                    totals["directories_not_listed"] += 1
                else:
                    entry["children"] = listing(item.path, depth + 1)
            else:
                entry["bytes"] = item.file_size
                totals["bytes"] += item.file_size or 0
                totals["files"] += 1
            entries.append(entry)
        return entries

    tree = listing(None, 0)
    return {"root": tree, "total_bytes": totals["bytes"], "total_files": totals["files"],
            "directories_not_listed": totals["directories_not_listed"], "max_depth": max_depth}


def _experiment_name(client: RetryingClient, experiment_id: str) -> str | None:
    try:
        return client.get_experiment(experiment_id).name
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def dump_run(client: RetryingClient, run_id: str, *, artifacts: bool = False,
             max_depth: int | None = None) -> dict[str, Any]:
    """The dump of a run; raises RunNotFoundError for an unknown id."""
    run = get_run_or_fail(client, run_id)
    info = {name: getattr(run.info, name, None) for name in RUN_INFO_FIELDS}
    doc = run_document(info, run.data.params, run.data.metrics, run.data.tags,
                       _experiment_name(client, run.info.experiment_id))
    if artifacts:
        doc["artifacts"] = artifact_tree(client, run_id, max_depth)
    return doc


def dump_experiment(client: RetryingClient, experiment_id: str | None = None, name: str | None = None, *,
                    runs: bool = False, max_runs: int | None = None, page_size: int = 1000) -> dict[str, Any]:
    """The dump of an experiment: its info and tags, run counts and, with ``runs``, its active
    runs, latest started first (at most ``max_runs``)."""
    exp = experiment_or_fail(client, experiment_id, name)
    info = {
        "experiment_id": str(exp.experiment_id),
        "name": exp.name,
        "artifact_location": exp.artifact_location,
        "lifecycle_stage": exp.lifecycle_stage,
        "creation_time": exp.creation_time,
        "last_update_time": exp.last_update_time,
        "_creation_time": utc_words(exp.creation_time),
        "_last_update_time": utc_words(exp.last_update_time),
        "tags": dict(sorted((exp.tags or {}).items())),
    }
    counts: dict[str, Any] = {"total": 0, "active": 0, "deleted": 0, "by_status": {}}
    documents: list[dict[str, Any]] = []
    for page in client.search_runs_pages([info["experiment_id"]], "", ALL,
                                         ["attributes.start_time DESC"], page_size):
        for run in page:
            run_info = run.get("info", {})
            counts["total"] += 1
            stage = run_info.get("lifecycle_stage", "active")
            counts["deleted" if stage == "deleted" else "active"] += 1
            if stage != "deleted":
                status = run_info.get("status", "UNKNOWN")
                counts["by_status"][status] = counts["by_status"].get(status, 0) + 1
                if runs and (max_runs is None or len(documents) < max_runs):
                    documents.append(_run_document_from_json(run, exp.name))
    counts["by_status"] = dict(sorted(counts["by_status"].items()))
    doc: dict[str, Any] = {"experiment": info, "runs_summary": counts}
    if runs:
        doc["runs"] = documents
    return doc


# ---- rendering -------------------------------------------------------------------------

def render(doc: Mapping[str, Any], fmt: str) -> str:
    """The dump as ``json``, ``yaml`` or ``text``."""
    if fmt == "json":
        return to_json(doc)
    if fmt == "yaml":
        return yaml.safe_dump(json_value(doc, special_floats=True), sort_keys=False, allow_unicode=True,
                              width=1000)
    if fmt == "text":
        return "\n".join(_text_lines(doc))
    raise UsageError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")


def _scalar(value: Any) -> str:
    return "-" if value is None else str(value)


def _mapping_lines(title: str, values: Mapping[str, Any], indent: str = "") -> list[str]:
    lines = [f"{indent}{title}:"]
    lines.extend(f"{indent}  {key}: {_scalar(value)}" for key, value in values.items())
    return lines


def _run_info_lines(info: Mapping[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}RunInfo:"]
    for key in ("run_id", "run_name", "experiment_id", "experiment_name", "status",
                "lifecycle_stage", "user_id", "artifact_uri"):
        lines.append(f"{indent}  {key}: {_scalar(info.get(key))}")
    lines.append(f"{indent}  start_time: {_scalar(info.get('_start_time'))}   {_scalar(info.get('start_time'))}")
    lines.append(f"{indent}  end_time:   {_scalar(info.get('_end_time'))}   {_scalar(info.get('end_time'))}")
    lines.append(f"{indent}  _duration:  {_scalar(info.get('_duration'))}")
    return lines


def _artifact_lines(entries: Iterable[Mapping[str, Any]], level: int, indent: str) -> list[str]:
    entries = list(entries)
    lines: list[str] = []
    for n, entry in enumerate(entries, 1):
        lines.append(f"{indent}Artifact {n}/{len(entries)} - level {level}:")
        lines.append(f"{indent}  path: {entry['path']}")
        if "bytes" in entry:
            lines.append(f"{indent}  bytes: {entry['bytes']}")
        elif entry.get("not_listed"):
            lines.append(f"{indent}  (directory not listed: --max-depth)")
        else:
            lines.extend(_artifact_lines(entry.get("children", ()), level + 1, indent + "  "))
    return lines


def _run_lines(doc: Mapping[str, Any], indent: str = "") -> list[str]:
    lines = _run_info_lines(doc["info"], indent)
    for title, key in (("Params", "params"), ("Metrics", "metrics"), ("Tags", "tags")):
        lines.extend(_mapping_lines(title, doc[key], indent))
    if "artifacts" in doc:
        artifacts = doc["artifacts"]
        lines.append(f"{indent}Artifacts:")
        lines.extend(_artifact_lines(artifacts["root"], 0, indent + "  "))
        lines.append(f"{indent}Total: bytes: {artifacts['total_bytes']} artifacts: {artifacts['total_files']}")
    return lines


def _text_lines(doc: Mapping[str, Any]) -> list[str]:
    if "info" in doc:
        return _run_lines(doc)
    exp = doc["experiment"]
    lines = ["Experiment:"]
    for key in ("experiment_id", "name", "artifact_location", "lifecycle_stage"):
        lines.append(f"  {key}: {_scalar(exp.get(key))}")
    lines.append(f"  creation_time:    {_scalar(exp['_creation_time'])}   {_scalar(exp['creation_time'])}")
    lines.append(f"  last_update_time: {_scalar(exp['_last_update_time'])}   {_scalar(exp['last_update_time'])}")
    lines.extend(_mapping_lines("Tags", exp["tags"], "  "))
    summary = doc["runs_summary"]
    lines.append("Runs:")
    lines.append(f"  total: {summary['total']}  active: {summary['active']}  deleted: {summary['deleted']}")
    lines.extend(_mapping_lines("by status (active runs)", summary["by_status"], "  "))
    for n, run in enumerate(doc.get("runs", ()), 1):
        lines.append(f"Run {n}/{len(doc['runs'])}:")
        lines.extend(_run_lines(run, "  "))
    return lines

