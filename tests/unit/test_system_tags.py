import dataclasses

import pytest

from mlflow_spark_tools.tools.system_tags import (
    RUN_KIND_LABELS,
    RUN_KINDS,
    SYSTEM_TAGS,
    SystemTag,
    TagPresence,
    is_system_tag,
    lookup,
    tag_report,
)

KEYS = [t.key for t in SYSTEM_TAGS]


def test_keys_unique_sorted_and_reserved():
    assert len(KEYS) == len(set(KEYS))
    assert KEYS == sorted(KEYS)
    assert all(k.startswith("mlflow.") for k in KEYS)
    assert all(is_system_tag(k) for k in KEYS)


def test_kinds_labels_and_fields():
    assert RUN_KINDS == ("python", "project", "notebook_ui", "notebook_job", "repo")
    assert [RUN_KIND_LABELS[k] for k in RUN_KINDS] == ["Python", "Project", "NB UI", "NB job", "Repo"]
    for tag in SYSTEM_TAGS:
        assert isinstance(tag.kinds, frozenset)
        assert tag.kinds <= set(RUN_KINDS), tag.key
        assert tag.meaning.strip() and tag.source.strip(), tag.key


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SYSTEM_TAGS[0].key = "x"  # type: ignore[misc]


# Rows of the MLflow 1.30 survey table: key -> kinds marked "y".
SEED_FACTS = {
    "mlflow.databricks.cluster.id": {"notebook_ui", "notebook_job", "repo"},
    "mlflow.databricks.jobID": {"notebook_job"},
    "mlflow.databricks.notebookID": {"notebook_ui", "repo"},
    "mlflow.databricks.notebookRevisionID": {"notebook_ui"},
    "mlflow.databricks.webappURL": {"notebook_ui", "notebook_job"},
    "mlflow.databricks.gitRepoStatus": {"repo"},
    "mlflow.gitRepoURL": {"project"},
    "mlflow.log-model.history": {"python", "project", "repo"},
    "mlflow.project.backend": {"project"},
    "mlflow.runName": set(RUN_KINDS),
    "mlflow.source.git.commit": {"python", "project"},
    "mlflow.source.git.repoURL": {"project"},
    "mlflow.source.type": set(RUN_KINDS),
    "mlflow.user": {"python", "project", "repo"},
}


@pytest.mark.parametrize("key, kinds", sorted(SEED_FACTS.items()))
def test_seed_table_facts(key, kinds):
    tag = lookup(key)
    assert tag is not None
    assert tag.kinds == kinds


def test_seed_table_rows_all_present_and_databricks_rows_have_no_oss_kind():
    databricks_rows = [k for k in KEYS if k.startswith("mlflow.databricks.")]
    assert {"mlflow.databricks.cluster.info", "mlflow.databricks.cluster.libraries"} <= set(databricks_rows)
    for key in databricks_rows:
        assert not lookup(key).kinds & {"python", "project"}, key


def test_tags_from_installed_mlflow():
    assert lookup("mlflow.parentRunId").source == "mlflow client"
    assert lookup("mlflow.docker.image.id").source == "mlflow projects"
    assert lookup("mlflow.autologging").source == "mlflow autologging"
    assert lookup("mlflow.note.content").source == "user/UI"
    assert lookup("mlflow.autologging").kinds == frozenset()
    # Experiment and trace tags of mlflow_tags.py are not run tags.
    assert lookup("mlflow.experiment.sourceId") is None
    assert lookup("mlflow.trace.spansLocation") is None


def test_lookup_and_is_system_tag():
    assert lookup("mlflow.no.such.tag") is None
    assert lookup("team") is None
    assert lookup("mlflow.runName") == SystemTag(
        "mlflow.runName", lookup("mlflow.runName").meaning, frozenset(RUN_KINDS), "mlflow client"
    )
    assert is_system_tag("mlflow.something.new")
    assert not is_system_tag("team")
    assert not is_system_tag("mlflowx.runName")


def test_tag_report_without_run():
    rows = tag_report()
    assert [r.key for r in rows] == KEYS
    assert all(r.present is None and r.value is None and r.known for r in rows)
    assert rows[KEYS.index("mlflow.user")].kinds == frozenset({"python", "project", "repo"})


def test_tag_report_with_run():
    run_tags = {
        "mlflow.runName": "train",
        "mlflow.user": "andre",
        "mlflow.something.new": "x",
        "mlflow.aaa": "first",
        "team": "ml",
    }
    rows = tag_report(run_tags)
    by_key = {r.key: r for r in rows}
    assert [r.key for r in rows[: len(KEYS)]] == KEYS
    assert by_key["mlflow.runName"].present is True
    assert by_key["mlflow.runName"].value == "train"
    assert by_key["mlflow.user"].value == "andre"
    assert by_key["mlflow.source.type"].present is False
    assert by_key["mlflow.source.type"].value is None
    assert rows[len(KEYS):] == [
        TagPresence("mlflow.aaa", "", frozenset(), True, "first", False),
        TagPresence("mlflow.something.new", "", frozenset(), True, "x", False),
    ]
    assert "team" not in by_key
    assert sum(r.present for r in rows) == 4


def test_tag_report_empty_run():
    rows = tag_report({})
    assert len(rows) == len(KEYS)
    assert all(r.present is False and r.value is None for r in rows)
