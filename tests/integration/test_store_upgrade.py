"""A store written by the earlier release (documents renamed into pending/, claims in claimed/,
progress.json and result.json, documents moved to done/) after the upgrade: every run exists
once, complete, and nothing is lost."""

from __future__ import annotations

import json
import os

from mlflow.entities import Metric, Param, RunTag

from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG, canonical_json, payload_tag_value
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.runs.run_data import RunData, batches, tags_at_create

from .run_content import assert_run_complete, log_sample_run, runs_by_index
from .store_files import document_path


def test_an_earlier_releases_store_is_replayed_after_the_upgrade(closed_proxy, tracking_server, client, experiment,
                                                                  tmp_path, signing_key, make_replayer):
    key = SigningKey(signing_key)
    store_path = tmp_path / "store"
    collector = FailedRunCollector(store_path, tracking_uri=closed_proxy.url, fail_fast_seconds=0.2)
    ids = []
    for i in range(4):
        status, _, payload_id = log_sample_run(collector, experiment, i, with_model=False)
        assert status == DEFERRED
        ids.append(payload_id)
    documents = {i: json.loads(document_path(store_path, ids[i]).read_text()) for i in range(4)}
    for i in range(4):
        document_path(store_path, ids[i]).unlink()

    # 0: a document the earlier collector renamed into pending/
    (store_path / "pending" / f"{ids[0]}.json").write_text(json.dumps(documents[0]))
    # 1: claimed by the earlier replayer, which created the run and sent its first batch, checkpointed
    #    (progress.json, signed with the key) and died
    run = RunData.from_json(documents[1]["run"])
    tags = {**tags_at_create(run), PAYLOAD_TAG: payload_tag_value(ids[1], documents[1]["run_secret"])}
    created = client.create_run(experiment, run_name=run.run_name, start_time=run.start_time, tags=tags)
    first = batches(run)[0]
    client.log_batch(created.info.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in first.metrics],
                     params=[Param(k, v) for k, v in first.params], tags=[RunTag(k, v) for k, v in first.tags])
    progress = {"payload_id": ids[1], "run_id": created.info.run_id, "ops_done": 2, "attempts": 1,
                "owner": "old-host-1-0a1b2c3d"}
    progress["signature"] = key.sign(canonical_json(progress))
    (store_path / "data" / ids[1] / "progress.json").write_text(json.dumps(progress))
    (store_path / "claimed").mkdir()
    (store_path / "claimed" / f"{ids[1]}@old-host-1-0a1b2c3d.json").write_text(json.dumps(documents[1]))
    # 2: replayed by the earlier release: its document moved to done/, result.json beside
    replayed_before = tmp_path / "replayed before"
    (replayed_before / "pending").mkdir(parents=True)
    (replayed_before / "pending" / f"{ids[2]}.json").write_text(json.dumps(documents[2]))
    (replayed_before / "data").mkdir()
    os.rename(store_path / "data" / ids[2], replayed_before / "data" / ids[2])
    assert make_replayer(replayed_before, tracking_server.url, signing_key=key).run().replayed == 1
    run_2 = FailedRunStore(replayed_before).result(ids[2])["run_id"]
    (store_path / "done" / f"{ids[2]}.json").write_text(json.dumps(documents[2]))
    (store_path / "data" / ids[2]).mkdir()
    (store_path / "data" / ids[2] / "result.json").write_text(json.dumps({"run_id": run_2, "replayed_at": 1}))
    # 3: a document of this release; and what an earlier collector left half written in tmp/
    (store_path / "pending" / f"{ids[3]}.json").write_text(json.dumps(documents[3]))
    (store_path / "tmp").mkdir()
    (store_path / "tmp" / f".{ids[3]}.json.0123.tmp").write_text('{"format": "mlflow-spark-tools/fai')

    summary = make_replayer(store_path, tracking_server.url, signing_key=key).run_until_empty(pause=0)
    assert (summary.replayed, summary.resumed, summary.failed) == (3, 1, 0), summary.as_dict()
    store = FailedRunStore(store_path)
    assert store.documents() == [] and list((store_path / "claimed").iterdir()) == []
    assert sorted(store.ids("done")) == sorted(ids)
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == [0, 1, 2, 3]
    for i in range(4):
        assert len(runs[i]) == 1, f"run {i} exists {len(runs[i])} times"
        assert_run_complete(client, runs[i][0], i, with_model=False)
    assert runs[1][0].info.run_id == created.info.run_id  # the earlier replayer's run was finished
    assert runs[2][0].info.run_id == run_2
