"""Catalog of the MLflow and Databricks system run tags (tag keys under the reserved ``mlflow.`` prefix).

For each known tag the catalog says what it holds, which component writes it and which kinds of run
carry it. The kinds of run are:

* ``python`` - OSS MLflow, run created by a plain Python program (no MLproject).
* ``project`` - OSS MLflow, run created by ``mlflow run`` from an MLproject.
* ``notebook_ui`` - Databricks, run created from a notebook used interactively.
* ``notebook_job`` - Databricks, run created by a notebook job.
* ``repo`` - Databricks, run created from a notebook inside a Databricks Repo.

The kinds of the tags up to ``mlflow.user`` in the original survey were observed with MLflow 1.30.
Tags added from ``mlflow/utils/mlflow_tags.py`` (MLflow 3.x) get the kinds that MLflow's own code
gives them; a tag written only under a condition that no kind implies (nested runs, autologging,
a Docker or Databricks project backend, ...) has no kinds, and its meaning says what writes it.
Experiment, trace and logged-model tags of that file are not run tags and are left out.

Sources: ``mlflow client`` (the tracking client and its run context providers), ``mlflow projects``,
``databricks`` (added because the run was made on Databricks, by the client's Databricks context
providers or by the Databricks backend), ``mlflow autologging``, ``mlflow server`` (runs the
server creates for UI features), ``mlflow genai`` (``mlflow.genai.evaluate``) and ``user/UI``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RUN_KINDS: tuple[str, ...] = ("python", "project", "notebook_ui", "notebook_job", "repo")
RUN_KIND_LABELS: dict[str, str] = {
    "python": "Python",
    "project": "Project",
    "notebook_ui": "NB UI",
    "notebook_job": "NB job",
    "repo": "Repo",
}
SYSTEM_PREFIX = "mlflow."

CLIENT, PROJECTS, DATABRICKS = "mlflow client", "mlflow projects", "databricks"
AUTOLOG, SERVER, GENAI, USER = "mlflow autologging", "mlflow server", "mlflow genai", "user/UI"


@dataclass(frozen=True)
class SystemTag:
    """One known system run tag.

    Attributes:
        key: The tag key, e.g. ``mlflow.runName``.
        meaning: What the tag value holds.
        kinds: The kinds of run (members of ``RUN_KINDS``) that carry the tag.
        source: The component that writes the tag.
    """

    key: str
    meaning: str
    kinds: frozenset[str]
    source: str


@dataclass(frozen=True)
class TagPresence:
    """A catalog entry (or an unknown system tag) checked against one run's tags.

    Attributes:
        key: The tag key.
        meaning: The catalog meaning; ``""`` for a system tag the catalog does not know.
        kinds: The kinds of run that carry the tag; empty for an unknown tag.
        present: Whether the run has the tag; ``None`` when no run was given.
        value: The run's value of the tag; ``None`` if absent or no run was given.
        known: ``False`` for an ``mlflow.*`` tag found on the run but missing from the catalog.
    """

    key: str
    meaning: str
    kinds: frozenset[str]
    present: bool | None
    value: str | None
    known: bool


def _k(kinds: str = "") -> frozenset[str]:
    """Build a kinds set from a space-separated string of ``RUN_KINDS`` members."""
    return frozenset(kinds.split())


_DB = "notebook_ui notebook_job repo"
_ALL = "python project notebook_ui notebook_job repo"

SYSTEM_TAGS: tuple[SystemTag, ...] = (
    SystemTag("mlflow.autologging", "Name of the autologging integration (flavor) that created the run; "
              "set by autologging on the runs it starts", _k(), AUTOLOG),
    SystemTag("mlflow.databricks.cluster.id", "ID of the Databricks cluster the run was made on", _k(_DB),
              DATABRICKS),
    SystemTag("mlflow.databricks.cluster.info", "JSON description of the cluster (Spark version, node "
              "types, workers, ...)", _k(_DB), DATABRICKS),
    SystemTag("mlflow.databricks.cluster.libraries", "JSON list of the libraries installed on the cluster",
              _k(_DB), DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoCommit", "Commit checked out in the Databricks Repo", _k("repo"),
              DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoProvider", "Git hosting provider of the Repo (gitHub, gitLab, ...)",
              _k("repo"), DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoReference", "Branch or tag checked out in the Repo", _k("repo"),
              DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoReferenceType", "Whether gitRepoReference is a branch or a tag",
              _k("repo"), DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoRelativePath", "Path of the notebook relative to the Repo root",
              _k("repo"), DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoStatus", "State of the Repo working copy", _k("repo"), DATABRICKS),
    SystemTag("mlflow.databricks.gitRepoUrl", "Remote URL of the Git repository behind the Repo", _k("repo"),
              DATABRICKS),
    SystemTag("mlflow.databricks.jobID", "ID of the Databricks job that made the run", _k("notebook_job"),
              DATABRICKS),
    SystemTag("mlflow.databricks.jobRunID", "ID of the job run that made the run", _k("notebook_job"),
              DATABRICKS),
    SystemTag("mlflow.databricks.jobType", "Task type of the job (e.g. NOTEBOOK)", _k("notebook_job"),
              DATABRICKS),
    SystemTag("mlflow.databricks.jobTypeInfo", "Kind of job (normal, ephemeral, ...); set by Databricks, "
              "not written by the OSS client", _k(), DATABRICKS),
    SystemTag("mlflow.databricks.notebook.commandID", "ID of the notebook command that made the run",
              _k(_DB), DATABRICKS),
    SystemTag("mlflow.databricks.notebookID", "Numeric ID of the notebook that made the run",
              _k("notebook_ui repo"), DATABRICKS),
    SystemTag("mlflow.databricks.notebookPath", "Workspace path of the notebook that made the run",
              _k("notebook_ui repo"), DATABRICKS),
    SystemTag("mlflow.databricks.notebookRevisionID", "Notebook revision saved when the run was made",
              _k("notebook_ui"), DATABRICKS),
    SystemTag("mlflow.databricks.runURL", "URL of the Databricks job run; set by mlflow projects when run "
              "with the databricks backend", _k(), PROJECTS),
    SystemTag("mlflow.databricks.shellJobID", "ID of the Databricks job running the project; set by mlflow "
              "projects with the databricks backend", _k(), PROJECTS),
    SystemTag("mlflow.databricks.shellJobRunID", "ID of the Databricks job run executing the project; set by "
              "mlflow projects with the databricks backend", _k(), PROJECTS),
    SystemTag("mlflow.databricks.webappURL", "URL of the Databricks web application",
              _k("notebook_ui notebook_job"),
              DATABRICKS),
    SystemTag("mlflow.databricks.workspaceID", "ID of the Databricks workspace", _k(_DB), DATABRICKS),
    SystemTag("mlflow.databricks.workspaceURL", "Host name of the Databricks workspace", _k(_DB), DATABRICKS),
    SystemTag("mlflow.docker.image.id", "ID (digest) of the Docker image the project ran in; set by mlflow "
              "projects with a docker environment", _k(), PROJECTS),
    SystemTag("mlflow.docker.image.uri", "Name/URI of the Docker image the project ran in; set by mlflow "
              "projects with a docker environment", _k(), PROJECTS),
    SystemTag("mlflow.genaiEvaluate.agent.digest", "sha256 of the source of the evaluated predict function; "
              "set by mlflow.genai.evaluate", _k(), GENAI),
    SystemTag("mlflow.genaiEvaluate.agent.function", "<module>.<qualname> of the evaluated predict function; "
              "set by mlflow.genai.evaluate", _k(), GENAI),
    SystemTag("mlflow.genaiEvaluate.agent.uri", "URI of the remote agent under evaluation; "
              "set by mlflow.genai.evaluate", _k(), GENAI),
    SystemTag("mlflow.genaiEvaluate.jobId", "ID of the server job running a UI-started evaluation; "
              "set by the server", _k(), SERVER),
    SystemTag("mlflow.genaiEvaluate.scorersDigest", "JSON digest of the scorer definitions; set by "
              "mlflow.genai.evaluate", _k(), GENAI),
    SystemTag("mlflow.gitRepoURL", "Git remote URL of the project (older name of mlflow.source.git.repoURL)",
              _k("project"), PROJECTS),
    SystemTag("mlflow.issueDetection.jobId", "ID of the server job running issue detection; set by the "
              "server", _k(), SERVER),
    SystemTag("mlflow.latest_checkpoint_artifact", "Artifact path of the newest model checkpoint; set by the "
              "checkpoint callbacks of autologging", _k(), AUTOLOG),
    SystemTag("mlflow.log-model.history", "JSON list of the models logged in the run (path, flavors, time)",
              _k("python project repo"), CLIENT),
    SystemTag("mlflow.loggedArtifacts", "JSON list of the tables logged in the run (path and type); set by "
              "log_table", _k(), CLIENT),
    SystemTag("mlflow.loggedImages", "Marks a run with images logged by log_image; set by log_image", _k(),
              CLIENT),
    SystemTag("mlflow.note.content", "Run description (markdown) edited in the UI or given to start_run",
              _k(), USER),
    SystemTag("mlflow.parentRunId", "Run ID of the parent run; set by the client for nested runs (and by "
              "projects started inside a run)", _k(), CLIENT),
    SystemTag("mlflow.project.backend", "Backend the project ran on (local, databricks, kubernetes)",
              _k("project"), PROJECTS),
    SystemTag("mlflow.project.entryPoint", "MLproject entry point that was run", _k("project"), PROJECTS),
    SystemTag("mlflow.project.env", "Environment manager of the project (conda, virtualenv, docker, local)",
              _k("project"), PROJECTS),
    SystemTag("mlflow.runName", "Display name of the run", _k(_ALL), CLIENT),
    SystemTag("mlflow.runSourceType", "What produced the run (e.g. PROMPT_ENGINEERING); set by the server "
              "for prompt engineering runs", _k(), SERVER),
    SystemTag("mlflow.runType", "Class of run (genai_evaluate, issue_detection, test); set by the server, "
              "evaluation and the pytest plugin", _k(), SERVER),
    SystemTag("mlflow.source.git.branch", "Git branch of the code; set by the git context for a main file "
              "in a checkout and by projects given a branch as version", _k("python"), CLIENT),
    SystemTag("mlflow.source.git.commit", "Git commit of the code that made the run", _k("python project"),
              CLIENT),
    SystemTag("mlflow.source.git.repoURL", "Git remote URL of the code", _k("project"), PROJECTS),
    SystemTag("mlflow.source.name", "Entry file, project URI, notebook path or job run of the run",
              _k(_ALL), CLIENT),
    SystemTag("mlflow.source.type", "Origin kind: LOCAL, PROJECT, NOTEBOOK, JOB, ...", _k(_ALL), CLIENT),
    SystemTag("mlflow.user", "User that created the run", _k("python project repo"), CLIENT),
)

_BY_KEY: dict[str, SystemTag] = {tag.key: tag for tag in SYSTEM_TAGS}


def is_system_tag(key: str) -> bool:
    """Tell whether a tag key is under the reserved ``mlflow.`` prefix.

    Args:
        key: A run tag key.

    Returns:
        ``True`` if the key starts with ``mlflow.``, known to the catalog or not.
    """
    return key.startswith(SYSTEM_PREFIX)


def lookup(key: str) -> SystemTag | None:
    """Find a system tag in the catalog.

    Args:
        key: A run tag key.

    Returns:
        The catalog entry, or ``None`` if the key is not in the catalog.
    """
    return _BY_KEY.get(key)


def tag_report(run_tags: Mapping[str, str] | None = None) -> list[TagPresence]:
    """Report every catalog tag and, given a run, which of them it carries.

    Args:
        run_tags: The tags of one run (key to value), or ``None`` to list the catalog only.

    Returns:
        One row per catalog tag in catalog (key) order, with ``present``/``value`` filled in when
        ``run_tags`` is given, followed by the run's ``mlflow.*`` tags that the catalog does not know
        (``known=False``), sorted by key. Tags outside the ``mlflow.`` prefix are not reported.
    """
    rows: list[TagPresence] = []
    for tag in SYSTEM_TAGS:
        if run_tags is None:
            present, value = None, None
        else:
            present, value = tag.key in run_tags, run_tags.get(tag.key)
        rows.append(TagPresence(tag.key, tag.meaning, tag.kinds, present, value, True))
    if run_tags is not None:
        unknown = sorted(k for k in run_tags if is_system_tag(k) and k not in _BY_KEY)
        rows.extend(TagPresence(k, "", frozenset(), True, run_tags[k], False) for k in unknown)
    return rows
