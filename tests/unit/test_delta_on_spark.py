"""What the package says and reads about Delta Lake on Spark: the jars that match a Spark
version, a MERGE's answer, a commit conflict."""

from __future__ import annotations

from pyspark.sql import Row

from mlflow_spark_tools.failed_runs.lease import _is_commit_conflict
from mlflow_spark_tools.spark.catalog import MergeCounts, delta_missing, delta_package

MISSING = ("[DATA_SOURCE_NOT_FOUND] Failed to find the data source: delta. Make sure the provider name is "
           "correct and the package is properly registered and compatible with your Spark version.")


def test_the_delta_release_of_each_spark_minor_version():
    assert delta_package("4.1.1") == "io.delta:delta-spark_2.13:4.1.0"
    assert delta_package("4.0.0") == "io.delta:delta-spark_2.13:4.0.0"
    assert delta_package("3.5.0") == "io.delta:delta-spark_2.12:3.2.0"
    assert delta_package("3.4.1") is None


def test_the_missing_delta_error_names_the_jars_and_both_settings():
    error = str(delta_missing(Exception(MISSING), "3.5.0"))
    assert "--packages io.delta:delta-spark_2.12:3.2.0 " in error and "Spark 3.5.0" in error
    assert "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in error
    assert "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog" in error
    assert "\n" not in error
    unknown = str(delta_missing(Exception(MISSING), "3.3.4"))
    assert "the release for Spark 3.3.4" in unknown and "docs.delta.io/releases" in unknown
    assert delta_missing(Exception("[TABLE_OR_VIEW_NOT_FOUND] nope"), "4.1.1") is None


def test_a_merge_answer_gives_its_counts_or_none():
    answer = [Row(num_affected_rows=7, num_updated_rows=2, num_deleted_rows=1, num_inserted_rows=4)]
    assert MergeCounts.of(answer) == MergeCounts(updated=2, deleted=1, inserted=4)
    assert MergeCounts.of([]) is None  # an engine whose MERGE answers nothing
    assert MergeCounts.of([Row(num_affected_rows=7)]) is None


def test_commit_conflicts_are_told_from_other_failures():
    conflict = Exception("[DELTA_CONCURRENT_APPEND.WITHOUT_HINT] ConcurrentAppendException: Files were added to "
                         "the root of the table by a concurrent update. Please try the operation again.")
    assert _is_commit_conflict(conflict)
    assert not _is_commit_conflict(Exception("[TABLE_OR_VIEW_NOT_FOUND] The table or view `x` cannot be found."))
