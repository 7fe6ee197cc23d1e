"""Upload -> landing sensor -> run success through the real daemon, PostgreSQL and the S3 API."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERVAL_S = 1
BODY = (
    "timestamp,sensor_id,temperature,vibration,pressure,current\n"
    "2024-05-01T10:00:00Z,s1,50,2,5,20\n2024-05-02T10:00:00Z,s2,51,2,5,{n}\n"
)


def upload_to_success(uploads: int = 5) -> tuple[list[float], int]:
    import dagster as dg

    from ml_platform.devstack.flow import ingest_versions
    from ml_platform.lib import paths
    from ml_platform_tests.servers import dagster_daemon, moto_server, postgres_cluster

    ingest_runs = dg.RunsFilter(tags={"ml_platform/ingest": "readings"})

    timings: list[float] = []
    with moto_server() as s3, postgres_cluster() as pg, tempfile.TemporaryDirectory() as tmp:
        pg.create_database("dagster")
        s3.client().create_bucket(Bucket="bench")
        env = {
            **os.environ,
            **s3.env("bench"),
            **pg.dagster_env("dagster"),
            "ML_PLATFORM_SENSOR_INTERVAL_S": str(INTERVAL_S),
            "DAGSTER_HOME": tmp,
        }
        os.environ.update(env)
        with dagster_daemon(Path(tmp), env) as (instance, _daemon):
            client = s3.client()
            for n in range(uploads + 1):  # the first one warms up the daemon's code server
                started = time.monotonic()
                etag = client.put_object(
                    Bucket="bench", Key=f"landing/readings/{n}.csv", Body=BODY.format(n=n).encode()
                )["ETag"]
                key = paths.partition_key(f"{n}.csv", etag)
                while True:
                    runs = [r for r in instance.get_runs(ingest_runs) if key in ingest_versions(r)]
                    if runs and runs[0].is_finished:
                        assert runs[0].status == dg.DagsterRunStatus.SUCCESS, runs[0].status
                        break
                    if time.monotonic() - started > 180:
                        raise TimeoutError(f"no run for {key}")
                    time.sleep(0.1)
                if n:
                    timings.append(time.monotonic() - started)
    return timings, INTERVAL_S
