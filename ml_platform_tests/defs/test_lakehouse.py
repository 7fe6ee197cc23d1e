"""sensor_chunks and daily_aggregates: correctness, late data, checks, range runs and automation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.instance.ref import InstanceRef

from ml_platform.defs.lakehouse import checks
from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START, build_lakehouse_sensor
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.generator import GeneratorConfig, write_files
from ml_platform.lib.store import LocalStore
from ml_platform_tests.helpers import READINGS_HEADER, ingest, rows_by

# Real Dagster runs (in process and through the CLI) on a local lake.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
MEASUREMENTS = ["temperature", "vibration", "pressure", "current"]
LAKEHOUSE = [
    sensor_chunks,
    daily_aggregates,
    checks.sensor_chunks_checks,
    checks.daily_aggregates_pass_quality_suite,
]


def run_range(instance, start: str, end: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        LAKEHOUSE,
        instance=instance,
        resources=build_resources(),
        raise_on_error=False,
        tags={RANGE_START: start, RANGE_END: end},
    )


def objects(store: LocalStore, prefix: str) -> dict[str, bytes]:
    return {o.key: store.read_bytes(o.key) for o in store.list(prefix)}


def expected_chunks(store: LocalStore, day: str) -> pd.DataFrame:
    """Independent pandas version: newest ingested part wins per (sensor_id, timestamp)."""
    parts = sorted(store.list(paths.bronze_day_prefix("readings", day)),
                   key=lambda o: (o.last_modified, o.key))  # fmt: skip
    frame = pd.concat([pd.read_parquet(store.root / p.key) for p in parts], ignore_index=True)
    frame = frame.drop_duplicates(subset=["sensor_id", "timestamp"], keep="last")
    return frame.sort_values(["sensor_id", "timestamp"]).reset_index(drop=True)


def daily_means(chunks: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per day and sensor of ``chunks`` (``{day: rows}``): the rows and each measurement's mean."""
    frames = []
    for day, rows in chunks.items():
        means = rows.groupby("sensor_id")[MEASUREMENTS].mean().add_suffix("_mean")
        means["rows"] = rows.groupby("sensor_id").size()
        frames.append(means.reset_index().assign(day=pd.Timestamp(day)))
    return pd.concat(frames, ignore_index=True)


def trailing_week(daily: pd.DataFrame) -> pd.DataFrame:
    """The documented trailing-week features, with pandas' time-based rolling windows: for each
    sensor-day, over the sensor's days in the 7 calendar days before (``closed="left"``: from
    D-7 to D-1, the day itself excluded; days without data are simply absent), the mean of the
    daily means and the number of days with data. Indexed by (day, sensor_id); NaN / 0 where
    the window holds no day."""
    out = []
    for sensor, group in daily.sort_values("day").groupby("sensor_id"):
        series = group.set_index("day")
        window = series[[f"{m}_mean" for m in MEASUREMENTS]].rolling("7D", closed="left")
        features = window.mean().add_suffix("_7d")
        counted = (series["rows"] > 0).astype(float).rolling("7D", closed="left").sum()
        features["days_with_data_7d"] = counted.fillna(0).astype(int)
        out.append(features.assign(sensor_id=sensor).reset_index())
    return pd.concat(out, ignore_index=True).set_index(["day", "sensor_id"])


def expected_aggregates(chunks: pd.DataFrame, trailing: pd.DataFrame, day: str) -> pd.DataFrame:
    """The day's gold rows computed with pandas from its chunks; the trailing-week features
    from ``trailing`` (see :func:`trailing_week`)."""
    rows = []
    hours = (chunks["timestamp"] - chunks["timestamp"].dt.normalize()).dt.total_seconds() / 3600
    for sensor, group in chunks.groupby("sensor_id"):
        row = {"sensor_id": sensor, "rows": len(group)}
        past = trailing.loc[(pd.Timestamp(day), sensor)]
        for m in MEASUREMENTS:
            values = group[m]
            valid = group[values.notna()]
            row |= {
                f"{m}_count": values.count(),
                f"{m}_missing_ratio": 1 - values.count() / len(group),
                f"{m}_mean": values.mean(),
                f"{m}_std": values.std(),
                f"{m}_min": values.min(),
                f"{m}_max": values.max(),
                f"{m}_p05": values.quantile(0.05),
                f"{m}_p50": values.quantile(0.5),
                f"{m}_p95": values.quantile(0.95),
                f"{m}_last": valid.sort_values("timestamp")[m].iloc[-1],
                f"{m}_slope_per_h": np.polyfit(hours[valid.index], valid[m], 1)[0],
            }
            row[f"{m}_mean_7d"] = past[f"{m}_mean_7d"]
            row[f"{m}_change_vs_7d"] = row[f"{m}_mean"] - row[f"{m}_mean_7d"]
        row["days_with_data_7d"] = int(past["days_with_data_7d"])
        rows.append(row)
    return pd.DataFrame(rows)


def test_chunks_and_aggregates_match_an_independent_pandas_computation(store, instance, landed):
    assert all(landed)
    result = run_range(instance, DAYS[0], DAYS[-1])
    assert result.success
    assert {m.partition for m in result.asset_materializations_for_node("daily_aggregates")} == set(
        DAYS
    )
    evaluations = {
        (e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()
    }
    for day in DAYS:  # one GX result per partition, even in a range run
        assert evaluations[("sensor_chunks_pass_quality_suite", day)]
        assert evaluations[("daily_aggregates_pass_quality_suite", day)]
        assert ("sensor_chunks_values_within_contract_ranges", day) in evaluations
    [chunk_meta] = result.asset_materializations_for_node("sensor_chunks")[:1]
    shown = {k: v.value for k, v in chunk_meta.metadata.items()}
    built = rows_by(shown["days"], "day")
    for day in DAYS:  # per-sensor row counts and gaps of every day, and a preview
        counts = expected_chunks(store, day).groupby("sensor_id").size().to_dict()
        assert shown["rows_per_sensor"][day] == counts
        assert set(shown["gaps"][day]) <= set(counts)
        assert built[day]["rows"] == sum(counts.values())
    # A typed table, the silver zone's address, and no per-partition count for a range.
    preview = shown["preview"]
    types = {c.name: c.type for c in preview.schema.columns}
    assert list(types)[:2] == ["timestamp", "sensor_id"] and types["temperature"] == "float"
    sensors = set(expected_chunks(store, DAYS[0])["sensor_id"])
    assert preview.records and {r.data["sensor_id"] for r in preview.records} <= sensors
    assert shown["dagster/uri"] == (store.root / "lake" / "silver" / "sensor_chunks").as_uri()
    # The run's input record, a path beside it, holds the same days.
    record = paths.run_inputs_object("sensor_chunks", result.run_id)
    assert isinstance(chunk_meta.metadata["inputs"], dg.PathMetadataValue)
    assert shown["inputs"] == store.uri(record)
    assert set(json.loads(store.read_bytes(record))["days"]) == set(built) == set(DAYS)
    assert "dagster/partition_row_count" not in shown

    trailing = trailing_week(daily_means({day: expected_chunks(store, day) for day in DAYS}))
    for day in DAYS:
        expected = expected_chunks(store, day)
        sensors = sorted(expected["sensor_id"].unique())
        assert sorted(o.key for o in store.list(paths.chunks_day_prefix(day))) == [
            paths.chunk_object(day, f"sensor_id={s}") for s in sensors
        ]
        actual = pd.concat(
            [
                pd.read_parquet(store.root / paths.chunk_object(day, f"sensor_id={s}"))
                for s in sensors
            ],
            ignore_index=True,
        )
        for sensor, group in actual.groupby("sensor_id"):  # each object is sorted by time
            assert group["timestamp"].is_monotonic_increasing, sensor
        pd.testing.assert_frame_equal(actual[expected.columns], expected, check_dtype=False)
        assert actual["timestamp"].dt.date.astype(str).eq(day).all()

        gold = pd.read_parquet(store.root / paths.aggregates_object(day))
        want = expected_aggregates(expected, trailing, day)
        pd.testing.assert_frame_equal(
            gold[want.columns].reset_index(drop=True), want, check_dtype=False, rtol=1e-9
        )
        assert (gold["event_timestamp"] == pd.Timestamp(f"{day}T23:59:59.999999Z")).all()
        assert gold["created_timestamp"].notna().all()


TEN_DAYS = [f"2024-01-{d:02d}" for d in range(1, 11)]


def ten_days_file(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Ten days of two sensors with hand-picked daily means: temperature 90 on day 1 and 20 + d
    on day d for sensor-a; 10 on day 1 and 50 + d for sensor-b, which sends nothing on day 5.
    Day 1 of sensor-a has four readings, the others two (so a mean over readings would differ
    from the mean of daily means). Every value lies within the contract's ranges."""
    rows = []
    for d, day in enumerate(TEN_DAYS, start=1):
        for sensor, temperature in (("sensor-a", 90 if d == 1 else 20 + d),
                                    ("sensor-b", 10 if d == 1 else 50 + d)):  # fmt: skip
            if sensor == "sensor-b" and d == 5:
                continue
            hours = (0, 6, 12, 18) if (sensor, d) == ("sensor-a", 1) else (6, 18)
            for i, hour in enumerate(hours):
                spread = -1 if i % 2 == 0 else 1  # readings T -/+ 1: the day's mean is T
                rows.append({
                    "timestamp": pd.Timestamp(f"{day}T{hour:02d}:00:00Z"), "sensor_id": sensor,
                    "temperature": temperature + spread, "vibration": 1 + d / 10 + spread / 20,
                    "pressure": 5 + (d % 3) + spread / 10, "current": 20 + 2 * d + spread,
                })  # fmt: skip
    frame = pd.DataFrame(rows)
    path = tmp_path / "ten_days.csv"
    frame.assign(timestamp=frame.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
        path, index=False
    )
    return path, frame


def test_trailing_week_features_are_the_seven_calendar_days_before(tmp_path, store, instance):
    """The trailing-week features of day D cover D-7..D-1 (docs/architecture.md: "from the 7
    previous days"; the day itself excluded, missing days skipped): day 8 is the last to see
    day 1, day 9 the first without it."""
    path, readings = ten_days_file(tmp_path)
    assert ingest(instance, store, path)
    result = run_range(instance, TEN_DAYS[0], TEN_DAYS[-1])
    assert result.success
    gold = {
        day: pd.read_parquet(store.root / paths.aggregates_object(day)).set_index("sensor_id")
        for day in TEN_DAYS
    }
    assert {day: sorted(g.index) for day, g in gold.items()} == {
        day: ["sensor-a"] if day == "2024-01-05" else ["sensor-a", "sensor-b"] for day in TEN_DAYS
    }

    # By hand (temperature): sensor-a's day 8 averages days 1-7, (90 + 22 + ... + 27) / 7;
    # day 9 days 2-8, (22 + ... + 28) / 7 = 25: day 1's 90 has left the window.
    a = {day: g.loc["sensor-a"] for day, g in gold.items()}
    assert np.isnan(a["2024-01-01"]["temperature_mean_7d"])
    assert a["2024-01-01"]["days_with_data_7d"] == 0
    assert a["2024-01-02"]["temperature_mean_7d"] == pytest.approx(90)
    assert a["2024-01-08"]["temperature_mean_7d"] == pytest.approx(237 / 7)
    assert a["2024-01-09"]["temperature_mean_7d"] == pytest.approx(25)
    assert a["2024-01-10"]["temperature_mean_7d"] == pytest.approx(26)
    assert a["2024-01-09"]["temperature_change_vs_7d"] == pytest.approx(29 - 25)
    assert [a[day]["days_with_data_7d"] for day in TEN_DAYS] == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]
    # sensor-b has no day 5: its windows hold six days, not seven (and no zero for day 5).
    b = {day: g.loc["sensor-b"] for day, g in gold.items() if "sensor-b" in g.index}
    assert b["2024-01-06"]["temperature_mean_7d"] == pytest.approx((10 + 52 + 53 + 54) / 4)
    assert b["2024-01-08"]["temperature_mean_7d"] == pytest.approx(
        (10 + 52 + 53 + 54 + 56 + 57) / 6
    )
    assert b["2024-01-09"]["temperature_mean_7d"] == pytest.approx(
        (52 + 53 + 54 + 56 + 57 + 58) / 6
    )
    assert b["2024-01-10"]["temperature_mean_7d"] == pytest.approx(
        (53 + 54 + 56 + 57 + 58 + 59) / 6
    )
    assert [b[day]["days_with_data_7d"] for day in b] == [0, 1, 2, 3, 4, 5, 6, 6, 6]

    # Every measurement, sensor and day against pandas' rolling("7D") over the daily means of
    # the input file itself.
    by_day = {day: readings[readings.timestamp.dt.date.astype(str) == day] for day in TEN_DAYS}
    expected = trailing_week(daily_means(by_day))
    for day, g in gold.items():
        for sensor, row in g.iterrows():
            want = expected.loc[(pd.Timestamp(day), sensor)]
            assert row["days_with_data_7d"] == want["days_with_data_7d"], (day, sensor)
            for m in MEASUREMENTS:
                assert row[f"{m}_mean_7d"] == pytest.approx(
                    want[f"{m}_mean_7d"], rel=1e-12, nan_ok=True
                ), (day, sensor, m)
                assert row[f"{m}_change_vs_7d"] == pytest.approx(
                    row[f"{m}_mean"] - want[f"{m}_mean_7d"], rel=1e-12, nan_ok=True
                ), (day, sensor, m)

    # Days 9-10 on their own read days 2-8 from the gold files instead: the same bytes, and the
    # run's metadata counts seven days of history (days of the trailing week with aggregates).
    before = objects(store, "lake/gold/")
    again = run_range(instance, TEN_DAYS[8], TEN_DAYS[9])
    assert again.success
    assert objects(store, "lake/gold/") == before
    shown = again.asset_materializations_for_node("daily_aggregates")[0].metadata["days"].value
    assert {day: v["history_days"] for day, v in rows_by(shown, "day").items()} == {
        TEN_DAYS[8]: 7,
        TEN_DAYS[9]: 7,
    }


def test_a_late_file_reopens_its_day_and_leaves_the_others_byte_identical(
    tmp_path, store, instance, landed
):
    assert run_range(instance, DAYS[0], DAYS[-1]).success
    before = objects(store, "lake/silver/") | objects(store, "lake/gold/")
    day2 = pd.read_parquet(store.root / paths.chunk_object(DAYS[1], "sensor_id=sensor-001"))
    corrected = day2.iloc[[0]].assign(temperature=-1.5)  # a correction of an existing reading
    newcomer = day2.iloc[[1]].assign(sensor_id="sensor-late")  # a sensor first seen late
    late = tmp_path / "late.parquet"
    pd.concat([corrected, newcomer]).to_parquet(late)
    late_partition = ingest(instance, store, late)
    assert late_partition

    # The automation asks for exactly the late file's day, in one run (the earlier files' days
    # were rebuilt after they landed).
    sensor = build_lakehouse_sensor(interval_s=1, max_requests_per_tick=10)
    context = dg.build_sensor_context(instance=instance)
    requests = sensor(context).run_requests
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests] == [(DAYS[1], DAYS[1])]
    assert run_range(instance, DAYS[1], DAYS[1]).success

    after = objects(store, "lake/silver/") | objects(store, "lake/gold/")
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {
        paths.chunk_object(DAYS[1], "sensor_id=sensor-001"),
        paths.chunk_object(DAYS[1], "sensor_id=sensor-late"),
        paths.aggregates_object(DAYS[1]),
    }
    fixed = pd.read_parquet(store.root / paths.chunk_object(DAYS[1], "sensor_id=sensor-001"))
    assert fixed.loc[fixed.timestamp == corrected.timestamp.iloc[0], "temperature"].tolist() == [
        -1.5
    ]
    gold = pd.read_parquet(store.root / paths.aggregates_object(DAYS[1]))
    assert "sensor-late" in set(gold.sensor_id)

    # Re-running the day rewrites identical objects.
    assert run_range(instance, DAYS[1], DAYS[1]).success
    assert objects(store, "lake/silver/") | objects(store, "lake/gold/") == after

    # Withdrawing the late bronze part and re-running the day removes the sensor it brought:
    # the day is again exactly what it was before the late file.
    [late_part] = [o.key for o in store.list(paths.bronze_day_prefix("readings", DAYS[1]))
                   if paths.file_id(late_partition) in o.key]  # fmt: skip
    store.delete(late_part)
    assert run_range(instance, DAYS[1], DAYS[1]).success
    assert objects(store, "lake/silver/") | objects(store, "lake/gold/") == before


def _built(result: dg.ExecuteInProcessResult, day: str) -> dict:
    [event] = result.asset_materializations_for_node("sensor_chunks")
    return rows_by(event.metadata["days"].value, "day")[day]


def test_a_day_built_before_is_rebuilt_from_its_chunks_and_the_parts_added_since(
    tmp_path, monkeypatch, store, instance, landed
):
    day = DAYS[1]
    assert run_range(instance, day, day).success
    parts_before = len(list(store.list(paths.bronze_day_prefix("readings", day))))
    chunk = store.root / paths.chunk_object(day, "sensor_id=sensor-001")
    late = tmp_path / "late.parquet"
    pd.read_parquet(chunk).iloc[[0]].assign(temperature=-7.25).to_parquet(late)
    assert ingest(instance, store, late)

    result = run_range(instance, day, day)
    assert result.success
    built = _built(result, day)
    # One day built: its row count is the partition's.
    [aggregates] = result.asset_materializations_for_node("daily_aggregates")
    assert aggregates.metadata["dagster/partition_row_count"].value == len(
        pd.read_parquet(store.root / paths.aggregates_object(day))
    )
    assert (built["bronze_parts"], built["bronze_parts_read"], built["chunks_reused"]) == (
        parts_before + 1,
        1,
        3,
    )
    incremental = objects(store, paths.chunks_day_prefix(day))
    chunks = pd.concat([pd.read_parquet(store.root / k) for k in sorted(incremental)])
    pd.testing.assert_frame_equal(
        chunks.reset_index(drop=True), expected_chunks(store, day), check_like=True
    )
    # The same day built from every part, in a copy of the lake, by an instance that knows no
    # earlier build: the same bytes.
    copy = LocalStore(shutil.copytree(store.root, tmp_path / "copy"))
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", copy.root.as_uri())
    with dg.instance_for_test() as fresh:
        full = run_range(fresh, day, day)
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", store.root.as_uri())
    assert full.success and _built(full, day)["chunks_reused"] == 0
    assert objects(copy, paths.chunks_day_prefix(day)) == incremental

    # A chunk written after the last recorded build (as by a build that failed before its
    # record) is not trusted: the next build reads every part again.
    late2 = tmp_path / "late2.parquet"
    pd.read_parquet(chunk).iloc[[1]].assign(temperature=-8.5).to_parquet(late2)
    assert ingest(instance, store, late2)
    os.utime(chunk)
    again = run_range(instance, day, day)
    assert again.success
    assert (_built(again, day)["chunks_reused"], _built(again, day)["bronze_parts_read"]) == (
        0,
        parts_before + 2,
    )


def test_automation_requests_one_run_covering_the_files_days_and_none_for_quarantine(
    tmp_path, store, instance
):
    header = "timestamp,sensor_id,temperature,vibration,pressure,current\n"
    spanning = tmp_path / "span.csv"
    spanning.write_text(header + "".join(f"{d}T12:00:00Z,s1,50,2,5,20\n" for d in DAYS))
    bad = tmp_path / "bad.csv"
    bad.write_text(header)
    assert ingest(instance, store, spanning)
    assert not ingest(instance, store, bad)  # quarantined: fails before materializing

    sensor = build_lakehouse_sensor(interval_s=1, max_requests_per_tick=10)
    context = dg.build_sensor_context(instance=instance)
    result = sensor(context)
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests] == [
        (DAYS[0], DAYS[-1])
    ]
    assert result.run_requests[0].run_key.startswith("lakehouse:")
    # Before the Feast registry is applied the run builds chunks and aggregates only.
    assert {k.to_user_string() for k in result.run_requests[0].asset_selection} == {
        "sensor_chunks",
        "daily_aggregates",
    }
    # Exactly once: the next tick with the returned cursor has nothing to do.
    again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)

    # Once feature_views has materialized, the same run also publishes the days' online features.
    instance.report_runless_asset_event(dg.AssetMaterialization("feature_views"))
    with_online = sensor(dg.build_sensor_context(instance=instance)).run_requests
    assert "online_features" in {k.to_user_string() for k in with_online[0].asset_selection}

    # Days rebuilt after the file landed (a manual or demo run) need no run for it.
    assert run_range(instance, DAYS[0], DAYS[-1]).success
    rebuilt = sensor(dg.build_sensor_context(instance=instance))
    assert not getattr(rebuilt, "run_requests", None)


def test_a_failing_blocking_check_stops_only_its_own_days_downstream(
    store, instance, landed, monkeypatch
):
    real = checks.recorded_inputs

    def one_row_short_on_day_2(context, store, asset):  # as if a chunk lost a row on day 2
        inputs = real(context, store, asset)
        if asset == "sensor_chunks" and inputs.get(DAYS[1]):
            inputs[DAYS[1]]["input_keys"] += 1
        return inputs

    monkeypatch.setattr(checks, "recorded_inputs", one_row_short_on_day_2)
    outcomes = {}
    for day in DAYS:
        result = dg.materialize(LAKEHOUSE, instance=instance, resources=build_resources(),
                                partition_key=day, raise_on_error=False)  # fmt: skip
        outcomes[day] = result
    assert outcomes[DAYS[0]].success and outcomes[DAYS[2]].success
    failed = outcomes[DAYS[1]]
    assert not failed.success
    assert not failed.asset_materializations_for_node("daily_aggregates")
    [evaluation] = [e for e in failed.get_asset_check_evaluations()
                    if e.check_name == "sensor_chunks_pass_quality_suite"]  # fmt: skip
    assert not evaluation.passed and evaluation.partition == DAYS[1]
    assert "expect_column_pair_values_to_be_equal" in evaluation.description
    assert instance.get_materialized_partitions(dg.AssetKey("daily_aggregates")) == {
        DAYS[0],
        DAYS[2],
    }


def test_a_file_landing_between_the_asset_and_its_checks_fails_no_check(
    tmp_path, store, instance, landed, monkeypatch
):
    """The run is held after both assets and before the chunk checks; a file of the same day is
    ingested meanwhile. The checks judge what the assets read, so every check passes."""
    import threading

    held, go_on = threading.Event(), threading.Event()
    real = checks.recorded_inputs

    def hold_first_check(context, store, asset):
        if not held.is_set():
            held.set()
            assert go_on.wait(120), "the test never let the run go on"
        return real(context, store, asset)

    monkeypatch.setattr(checks, "recorded_inputs", hold_first_check)
    runs: list[dg.ExecuteInProcessResult] = []
    lakehouse = threading.Thread(target=lambda: runs.append(run_range(instance, DAYS[1], DAYS[1])))
    lakehouse.start()
    try:
        assert held.wait(120), "the run never reached its checks"
        late = tmp_path / "late.csv"
        late.write_text(READINGS_HEADER + f"{DAYS[1]}T12:34:56Z,sensor-new,50,2,5,20\n")
        assert ingest(instance, store, late)  # bronze of the day now differs from what was read
    finally:
        go_on.set()
        lakehouse.join(300)
    [result] = runs
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {
        "sensor_chunks_pass_quality_suite", "sensor_chunks_values_within_contract_ranges",
        "daily_aggregates_pass_quality_suite", "sensor_chunks_conserve_rows",
        "daily_aggregates_one_row_per_sensor_object",
    }  # fmt: skip
    assert all(e.passed for e in evaluations)  # and so the run succeeded: no failure alert
    # The new file's rows are in bronze but not in the chunks this run wrote: the next run's job.
    chunks = pd.read_parquet(store.root / paths.chunks_day_prefix(DAYS[1]))
    assert "sensor-new" not in set(chunks["sensor_id"].astype(str))
    bronze = pd.read_parquet(store.root / paths.bronze_day_prefix("readings", DAYS[1]))
    assert "sensor-new" in set(bronze["sensor_id"].astype(str))


def test_a_year_in_one_range_checks_every_day_in_one_pass(tmp_path, store, instance):
    """365 days of 2 sensors: one run, one evaluation per day and check, every one passing, and
    one GX validation per check step (not one per day)."""
    from ml_platform.lib import quality

    files = write_files(
        GeneratorConfig(days=365, sensors=2, interval_s=6 * 3600, seed=5), tmp_path / "gen"
    )
    year_file = tmp_path / "year.csv"
    with year_file.open("w") as out:  # one upload of the whole year
        out.write(READINGS_HEADER)
        for day_file in files.readings:
            out.writelines(day_file.read_text().splitlines(keepends=True)[1:])
    assert ingest(instance, store, year_file)
    validations = []
    real = quality._validate
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(quality, "_validate", lambda *a: validations.append(a[2]) or real(*a))
    try:
        result = run_range(instance, "2024-01-01", "2024-12-30")
    finally:
        monkeypatch.undo()
    assert result.success
    year = {str(d.date()) for d in pd.date_range("2024-01-01", "2024-12-30")}
    per_check: dict[str, set] = {}
    for e in result.get_asset_check_evaluations():
        # The generator plants a few implausible values: only the warning check may flag them.
        if e.check_name != "sensor_chunks_values_within_contract_ranges":
            assert e.passed, (e.check_name, e.partition, e.description)
        per_check.setdefault(e.check_name, set()).add(e.partition)
    for name in ("sensor_chunks_pass_quality_suite", "sensor_chunks_values_within_contract_ranges",
                 "daily_aggregates_pass_quality_suite"):  # fmt: skip
        assert per_check[name] == year, name
    assert sorted(validations) == ["daily_aggregates", "sensor_chunk_ranges", "sensor_chunks"]


def test_single_run_backfill_of_seven_days_from_the_cli(tmp_path, store, instance):
    week = [f"2024-01-0{d}" for d in range(1, 8)]
    files = write_files(
        GeneratorConfig(days=7, sensors=2, interval_s=1800, seed=3), tmp_path / "gen"
    )
    assert all(ingest(instance, store, f) for f in files.readings)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
         "ml_platform.definitions", "--select", "sensor_chunks,daily_aggregates",
         "--partition-range", f"{week[0]}...{week[-1]}"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as cli_instance:
        [run] = cli_instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        for asset in ("sensor_chunks", "daily_aggregates"):
            assert cli_instance.get_materialized_partitions(dg.AssetKey(asset)) == set(week)
    assert all(store.exists(paths.aggregates_object(d)) for d in week)


def test_an_in_process_range_is_one_run(store, instance, landed):
    before = len(instance.get_runs())
    assert run_range(instance, DAYS[0], DAYS[-1]).success
    assert len(instance.get_runs()) == before + 1


def test_the_gold_zone_is_a_ready_feast_source(tmp_path, store, instance, landed):
    """Feast's file offline store reads lake/gold/daily_aggregates/ as it is (point in time)."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    assert run_range(instance, DAYS[0], DAYS[-1]).success
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: lakehouse_test\nregistry: data/registry.db\nprovider: local\n"
        "offline_store: {type: file}\nonline_store: {type: sqlite, path: data/online.db}\n"
        "entity_key_serialization_version: 3\n"
    )
    sensor = Entity(name="sensor", join_keys=["sensor_id"], value_type=ValueType.STRING)
    source = FileSource(
        name="daily_aggregates",
        path=str(store.root / paths.GOLD_AGGREGATES),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )
    view = FeatureView(
        name="daily_stats", entities=[sensor], ttl=pd.Timedelta(days=2), source=source,
        schema=[Field(name="vibration_mean", dtype=Float64), Field(name="rows", dtype=Int64)],
    )  # fmt: skip
    feast = FeatureStore(repo_path=str(repo))
    feast.apply([sensor, source, view])
    asked = pd.DataFrame(
        {
            "sensor_id": ["sensor-001", "sensor-002"],
            # Noon of day 3 only sees day 2's aggregates (day 3 ends at midnight).
            "event_timestamp": pd.to_datetime([f"{DAYS[2]}T12:00:00Z"] * 2),
        }
    )
    got = feast.get_historical_features(
        entity_df=asked, features=["daily_stats:vibration_mean", "daily_stats:rows"]
    ).to_df()
    day2 = pd.read_parquet(store.root / paths.aggregates_object(DAYS[1])).set_index("sensor_id")
    for row in got.itertuples():
        assert row.vibration_mean == pytest.approx(day2.loc[row.sensor_id, "vibration_mean"])
        assert row.rows == day2.loc[row.sensor_id, "rows"]
