"""A backfill launched the way the UI does it (GraphQL on the webserver) runs a range as one run."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from ml_platform_tests.defs.test_lakehouse import DAYS
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.servers import ROOT, dagster_daemon, free_port, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def graphql(port: int, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())["data"]


def test_a_ui_backfill_over_three_days_is_one_run(tmp_path, store, landed, monkeypatch):
    # SQLite instance (the local profile) shared by the daemon, the webserver and this test.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # Automation reaches the feature store: keep its state out of the checkout.
    monkeypatch.setenv("ML_PLATFORM_FEAST_REPO", str(copy_feature_repo(tmp_path / "feature_repo")))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    port = free_port()
    web = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p",
         str(port), "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        process_group=0,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "webserver did not start"
                time.sleep(0.5)
        params = {
            "title": "three days",
            "partitionsByAssets": [
                {
                    "assetKey": {"path": [asset]},
                    "partitions": {"range": {"start": DAYS[0], "end": DAYS[-1]}},
                }
                for asset in ("sensor_chunks", "daily_aggregates")
            ],
        }
        launched = graphql(port, LAUNCH, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill = launched["backfillId"]
        with dagster_daemon(home, env, tmp_path / "daemon.log", "dagster.yaml") as (
            instance,
            daemon,
        ):
            deadline = time.monotonic() + 180
            while True:
                assert daemon.poll() is None, "the daemon exited"
                runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
                if runs and all(r.is_finished for r in runs):
                    status = instance.get_backfill(backfill).status
                    if status.value != "REQUESTED":
                        break
                assert time.monotonic() < deadline, "backfill did not finish"
                time.sleep(1)
            print(
                "RUNS",
                [
                    (
                        r.run_id[:8],
                        r.status,
                        dict((k, v) for k, v in r.tags.items() if "range" in k or "partition" in k),
                    )
                    for r in runs
                ],
            )
            [run] = runs
            assert run.status == dg.DagsterRunStatus.SUCCESS
            assert (run.tags["dagster/asset_partition_range_start"],
                    run.tags["dagster/asset_partition_range_end"]) == (DAYS[0], DAYS[-1])  # fmt: skip
            assert instance.get_materialized_partitions(dg.AssetKey("daily_aggregates")) >= set(
                DAYS
            )
    finally:
        stop_process_group(web)
