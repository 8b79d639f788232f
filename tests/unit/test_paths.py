import pytest

from mlflow_spark_tools.databricks.paths import (
    DBFS,
    LOCAL,
    VOLUME,
    WORKSPACE,
    is_shared_storage,
    path_kind,
    to_dbfs_uri,
    to_fuse_path,
    volume_parts,
)
from mlflow_spark_tools.errors import UsageError


@pytest.mark.parametrize("given, fuse, uri, kind", [
    ("dbfs:/ml/failed", "/dbfs/ml/failed", "dbfs:/ml/failed", DBFS),
    ("/dbfs/ml", "/dbfs/ml", "dbfs:/ml", DBFS),
    ("dbfs:/", "/dbfs/", "dbfs:/", DBFS),
    ("/Volumes/main/ml/runs/failed", "/Volumes/main/ml/runs/failed", "dbfs:/Volumes/main/ml/runs/failed", VOLUME),
    ("dbfs:/Volumes/main/ml/runs", "/Volumes/main/ml/runs", "dbfs:/Volumes/main/ml/runs", VOLUME),
    ("/Workspace/Users/a@b.c/x", "/Workspace/Users/a@b.c/x", "/Workspace/Users/a@b.c/x", WORKSPACE),
    ("file:///tmp/x", "/tmp/x", "/tmp/x", LOCAL),
    ("  relative/dir ", "relative/dir", "relative/dir", LOCAL),
])
def test_fuse_paths_and_uris(given, fuse, uri, kind):
    assert to_fuse_path(given) == fuse
    assert to_dbfs_uri(given) == uri
    assert path_kind(fuse) == kind
    assert is_shared_storage(fuse) == (kind != LOCAL)


@pytest.mark.parametrize("bad, words", [
    ("", "empty"),
    ("dbfs:ml", "dbfs:/path"),
    ("dbfs://ml", "dbfs:/path"),
    ("s3://bucket/x", "not a file path"),
    ("abfss://c@a.dfs.core.windows.net/x", "not a file path"),
    ("/Volumes/main", "/Volumes/<catalog>/<schema>/<volume>"),
    ("/Volumes/main/ml", "/Volumes/<catalog>/<schema>/<volume>"),
    ("dbfs:/Volumes/main/ml", "/Volumes/<catalog>/<schema>/<volume>"),
    ("/dbfs/Volumes/main/ml/v/x", "not under /dbfs"),
    ("dbfs:/ml/../etc", ".."),
    ("/Volumes/main/ml/v/../../x", ".."),
])
def test_bad_paths_are_named_with_what_to_write(bad, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")) as raised:
        to_fuse_path(bad)
    assert raised.value.exit_code == 2


def test_volume_parts():
    parts = volume_parts("/Volumes/main/ml/runs/failed/x.json")
    assert (parts.catalog, parts.schema, parts.volume, parts.rest) == ("main", "ml", "runs", "failed/x.json")
    assert parts.full_name == "main.ml.runs"
    assert volume_parts("dbfs:/Volumes/c/s/v").rest == ""
    with pytest.raises(UsageError):
        volume_parts("/Volumes/c/s/.hidden")
