"""Which MLflow database schemas the database source reads, and the check made before reading.

MLflow versions its backend database with Alembic: the table alembic_version holds the
revision the database was migrated to (``mlflow db upgrade``). The database source reads the
tables experiments, runs, params, tags, latest_metrics, metrics,
datasets, inputs and input_tags, whose columns it uses have not changed from revision
``7f2a7d5fae7d`` (MLflow 2.4, which added the dataset tables) to the last revision listed
below. A database at a revision that is not listed (older, or written by a newer MLflow whose
migrations this package has not been checked against) is refused before anything is read:
an unknown migration could have renamed or moved what the queries read.

When a new MLflow release adds migrations, append them here after checking that they leave the
columns above alone (a unit test compares this list with the installed MLflow's migrations).
"""

from __future__ import annotations

from mlflow_spark_tools.backend_store.connection import BackendDatabase, DatabaseError
from mlflow_spark_tools.errors import UsageError

# (revision, migration name) from MLflow 2.4 on, oldest first.
KNOWN_REVISIONS: tuple[tuple[str, str], ...] = (
    ("7f2a7d5fae7d", "add_datasets_inputs_input_tags_tables"),
    ("2d6e25af4d3e", "increase_max_param_val_length"),
    ("acf3f17fdcc7", "add_storage_location_field_to_model_"),
    ("867495a8f9d4", "add_trace_tables"),
    ("5b0e9adcef9c", "add_cascade_deletion_to_trace_tables_fk"),
    ("4465047574b1", "increase_max_dataset_schema_size"),
    ("f5a4f2784254", "increase_run_tag_value_limit"),
    ("0584bdc529eb", "add_cascading_deletion_to_datasets_from_experiments"),
    ("400f98739977", "add_logged_model_tables"),
    ("6953534de441", "add_step_to_inputs_table"),
    ("bda7b8c39065", "increase_model_version_tag_value_limit"),
    ("cbc13b556ace", "add_v3_trace_schema_columns"),
    ("770bee3ae1dd", "add_assessments_table"),
    ("a1b2c3d4e5f6", "add_spans_table"),
    ("de4033877273", "create_entity_associations"),
    ("1a0cddfcaa16", "add_webhooks_and_webhook_events_tables"),
    ("534353b11cbc", "add_scorer_table"),
    ("71994744cf8e", "add_evaluation_datasets"),
    ("3da73c924c2f", "add_outputs_to_dataset_record"),
    ("bf29a5ff90ea", "add_jobs_table"),
    ("1bd49d398cd23", "add_secrets_tables"),
    ("b7c8d9e0f1a2", "add_trace_metrics_table"),
    ("5d2d30f0abce", "update_job_table"),
    ("c9d4e5f6a7b8", "add_routing_strategy_to_endpoints"),
    ("2c33131f4dae", "add_online_scoring_configs_table"),
    ("d3e4f5a6b7c8", "add_display_name_to_endpoint_bindings"),
    ("d0e1f2a3b4c5", "add_experiment_id_to_endpoints"),
    ("c8d9e0f1a2b3", "add_span_metrics_and_dimension_attributes"),
    ("1b5f0d9ad7c1", "add_workspace_columns_and_catalog"),
    ("e1f2a3b4c5d6", "add_budget_policies_table"),
    ("76601a5f987d", "add_issues_table"),
    ("c3d6457b6d8a", "add_status_details_column_to_jobs_table"),
    ("a5b4c3d2e1f0", "add_metrics_run_key_step_index"),
    ("ae8bbe7743c9", "add_guardrails_tables"),
    ("7d34483879f0", "add_model_version_tags_workspace_index"),
    ("da6fb0208061", "add_workspaces_trace_archival_location"),
    ("89d3d66ed43f", "add_label_schemas_table"),
    ("b7e4c1a90f23", "add_review_queue_tables"),
    ("a8b9c0d1e2f3", "add_mcp_server_registry_tables"),
    ("c1d2e3f4a5b6", "add_span_experiment_start_time_index"),
    ("c3d9e7f1a2b4", "add_target_value_to_budget_policies"),
    ("6f8d9c3b2a1e", "add_experiment_fk_cascades"),
    ("1971f2d9a75b", "add_trace_archival_candidate_index"),
    ("17e22815139b", "increase_experiment_tag_value_limit"),
    ("b7e2c1a4d9f3", "add_jobs_creator"),
    ("75868b020152", "add_sql_trace_analytics_schema"),
    ("dc11669786a5", "add_job_executor_persistence_model"),
)
FIRST_MLFLOW, LAST_MLFLOW = "2.4", "3.17"
_KNOWN = {revision for revision, _ in KNOWN_REVISIONS}
# from this revision on (MLflow 3.17), experiments belong to a workspace: their names are unique
# within it only, and a server run with --enable-workspaces answers only the client's workspace
WORKSPACES_REVISION = "1b5f0d9ad7c1"
DEFAULT_WORKSPACE = "default"


def has_workspaces(revision: str) -> bool:
    """Whether a database at ``revision`` (one of :data:`KNOWN_REVISIONS`) has workspaces."""
    order = [known for known, _ in KNOWN_REVISIONS]
    return order.index(revision) >= order.index(WORKSPACES_REVISION)


class UnknownSchemaError(UsageError):
    """The database's MLflow schema revision is not one the database source reads."""


def schema_revision(db: BackendDatabase) -> str:
    """The Alembic revision of an MLflow backend database.

    Raises:
        UnknownSchemaError: the database has no alembic_version table (not an MLflow
            database) or its revision is not in :data:`KNOWN_REVISIONS`.
    """
    try:
        revision = db.scalar("SELECT version_num FROM alembic_version")
    except DatabaseError:
        raise UnknownSchemaError(
            f"Backend store {db.description} has no MLflow schema (no alembic_version table): is it the "
            f"database of an MLflow tracking server? Use --source rest otherwise.") from None
    if revision not in _KNOWN:
        raise UnknownSchemaError(
            f"Backend store {db.description} is at MLflow schema revision {revision!r}, which this version of "
            f"mlflow-spark-tools does not read (it reads the schemas of MLflow {FIRST_MLFLOW} to {LAST_MLFLOW}, "
            f"revisions {KNOWN_REVISIONS[0][0]} to {KNOWN_REVISIONS[-1][0]}). Upgrade mlflow-spark-tools, run "
            f"`mlflow db upgrade` for an older database, or use --source rest.")
    return str(revision)
