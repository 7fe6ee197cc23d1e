"""Feature-store benchmark, run in a fresh process: ``python -m benchmarks.features OUT``.

Builds (once, cached in benchmarks/data/) a lakehouse of 365 days x 50 sensors through the real
ingest and lakehouse assets, applies the Feast repo, writes the last day to the SQLite online store
and then measures, printing one JSON line:

- online retrieval through the Feast Python SDK (``get_online_features`` of the failure model's
  feature service), 1 sensor and 50 sensors per call; reference: the same rows read straight from
  Feast's SQLite table with ``sqlite3`` (the floor under any SDK);
- the ``training_set`` asset over the full year (18,250 sensor-days); reference: the same
  point-in-time join written by hand with ``pandas.merge_asof`` on the same gold files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from benchmarks.sizes import size

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
#: The smoke's sensors are enough for a cross-validation fold to hold both classes.
DAYS, SENSORS = size((365, 50), (35, 20))
#: The training week labels the days up to its Sunday; a year back covers the whole lake.
WEEK = size("2024-12-23", "2024-01-29")
LAST_DAY = size("2024-12-30", "2024-02-04")
REPEATS = size({"warm_up": 50, "one": 2000, "fifty": 500}, {"warm_up": 1, "one": 5, "fifty": 5})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def build_lake(target: Path) -> None:
    import dagster as dg

    from ml_platform.lib.generator import GeneratorConfig
    from ml_platform_tests.feature_helpers import build_lake as build

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    os.environ["ML_PLATFORM_STORE_URL"] = (partial / "lake").as_uri()
    with dg.instance_for_test() as instance:
        build(instance, partial, GeneratorConfig(days=DAYS, sensors=SENSORS, interval_s=3600))
    shutil.rmtree(partial / "generated")
    partial.replace(target)


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main(out: Path) -> dict:
    import dagster as dg
    import pandas as pd

    lake = DATA / f"features_lake_{DAYS}x{SENSORS}"
    if not lake.exists():
        build_lake(lake)
    os.environ["ML_PLATFORM_STORE_URL"] = (lake / "lake").as_uri()
    from ml_platform_tests.feature_helpers import copy_feature_repo, metadata, run

    repo = copy_feature_repo(out / "feature_repo")
    os.environ["ML_PLATFORM_FEAST_REPO"] = str(repo)
    os.environ.pop("FEAST_FS_YAML_FILE_PATH", None)

    from ml_platform.defs.features.assets import feature_views, online_features
    from ml_platform.defs.ml.assets import training_set
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib import feature_store as fs
    from ml_platform.lib import paths
    from ml_platform.lib.contract import load_contract
    from ml_platform.lib.lakehouse import end_of_day

    result = {}
    with dg.instance_for_test() as instance:
        run(instance, [feature_views])
        last_day = LAST_DAY
        run(instance, [online_features], partition_key=last_day)

        store = build_resources()["feast"].store()
        service = store.get_feature_service(fs.FEATURE_SERVICE)
        sensors = sorted(
            pd.read_parquet(lake / "lake" / paths.aggregates_object(last_day))["sensor_id"]
        )
        one = [{"sensor_id": sensors[min(7, len(sensors) - 1)]}]
        fifty = [{"sensor_id": s} for s in sensors[:50]]
        for _ in range(REPEATS["warm_up"]):  # warm-up: registry cache, connection, code paths
            store.get_online_features(features=service, entity_rows=one).to_dict()
        sdk_1 = timed(
            lambda: store.get_online_features(features=service, entity_rows=one).to_dict(),
            REPEATS["one"],
        )
        sdk_50 = timed(
            lambda: store.get_online_features(features=service, entity_rows=fifty).to_dict(),
            REPEATS["fifty"],
        )

        # Reference: the same rows straight out of Feast's SQLite tables.
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        def key(sensor: str) -> bytes:
            return serialize_entity_key(
                EntityKey(join_keys=["sensor_id"], entity_values=[Value(string_val=sensor)]),
                entity_key_serialization_version=3,
            )

        con = sqlite3.connect(repo / "data" / "online_store.db")
        tables = [f"ml_platform_{view}" for view in fs.VIEWS]

        def raw(keys: list[bytes]) -> None:
            marks = ",".join("?" * len(keys))
            for table in tables:
                con.execute(
                    f"SELECT entity_key, feature_name, value, event_ts FROM {table} "
                    f"WHERE entity_key IN ({marks})",
                    keys,
                ).fetchall()

        one_key, fifty_keys = [key(one[0]["sensor_id"])], [key(s) for s in sensors[:50]]
        raw_1 = timed(lambda: raw(one_key), REPEATS["one"])
        raw_50 = timed(lambda: raw(fifty_keys), REPEATS["fifty"])
        con.close()
        result.update(
            online_p50_ms_1=statistics.median(sdk_1),
            online_p99_ms_1=_percentile(sdk_1, 99),
            online_p99_ms_50=_percentile(sdk_50, 99),
            sqlite_p50_ms_1=statistics.median(raw_1),
            sqlite_p99_ms_1=_percentile(raw_1, 99),
            sqlite_p99_ms_50=_percentile(raw_50, 99),
            features=len(service.feature_view_projections[0].features)
            + len(service.feature_view_projections[1].features),
        )

        started = time.perf_counter()
        built = run(
            instance,
            [training_set],
            partition_key=WEEK,
            config={"ops": {"training_set": {"config": {"min_rows": size(1000, 1)}}}},
        )
        wall = time.perf_counter() - started
        meta = metadata(built, "training_set")
        result.update(
            training_set_365x50_s=wall,
            training_set_asset_s=meta["seconds"],
            training_set_rows=meta["dagster/row_count"],
            point_in_time_join_s=meta["point_in_time_join_s"],
        )

    # Reference: the same point-in-time join by hand (merge_asof within the views' TTLs).
    started = time.perf_counter()
    files = sorted((lake / "lake" / paths.GOLD_AGGREGATES).glob("date=*/*.parquet"))
    gold = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    gold["event_timestamp"] = pd.to_datetime(gold["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    names = fs.feature_names(load_contract(None).columns)
    days = sorted(gold["day"].unique())[-358:]  # the sensor-days the asset labels
    entities = gold.loc[gold["day"].isin(days), ["sensor_id", "day"]].copy()
    entities["cutoff"] = pd.to_datetime(
        [end_of_day(str(d)) for d in entities["day"]], utc=True
    ).as_unit("us")
    entities = entities.sort_values("cutoff")
    joined = entities
    for view in fs.VIEWS:
        right = gold[["sensor_id", "event_timestamp", *names[view]]].sort_values("event_timestamp")
        joined = pd.merge_asof(
            joined,
            right,
            left_on="cutoff",
            right_on="event_timestamp",
            by="sensor_id",
            tolerance=pd.Timedelta(days=fs.TTL_DAYS[view]),
        ).drop(columns="event_timestamp")
    result["pandas_pit_join_s"] = time.perf_counter() - started
    result["pandas_pit_rows"] = len(joined)
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
