"""The synthetic data generator: deterministic, correctly shaped, and messy in the promised ways.

Downstream tests (ingestion, quality, the failure model) rely on these properties, so each one is
checked here against the files as a consumer reads them (pandas, DuckDB), not against internals.
"""

from __future__ import annotations

import pathlib

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_platform.lib.generator import (
    MEASUREMENTS,
    PLAUSIBLE_RANGES,
    GeneratedFiles,
    GeneratorConfig,
    generate_labels,
    generate_readings,
    sensor_ids,
    write_files,
)

COLUMNS = ["timestamp", "sensor_id", *MEASUREMENTS]
SHAPE_CFG = GeneratorConfig(days=3, sensors=4, interval_s=60)


def _read_csv(path: pathlib.Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["timestamp"])


def _readings_frame(cfg: GeneratorConfig) -> pd.DataFrame:
    """All rows of all delivery days, with the delivery day as ``file_day``."""
    frames = [
        table.to_pandas().assign(file_day=pd.Timestamp(day, tz="UTC"))
        for day, table in generate_readings(cfg)
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    return write_files(SHAPE_CFG, tmp_path_factory.mktemp("shape"))


@pytest.fixture(scope="module")
def week() -> pd.DataFrame:
    """A default-sized week (20 sensors, 1-minute samples), generated in memory."""
    return _readings_frame(GeneratorConfig(days=7, sensors=20, interval_s=60))


def test_sensor_ids_are_zero_padded() -> None:
    assert sensor_ids(3) == ["sensor-001", "sensor-002", "sensor-003"]
    assert sensor_ids(1000)[0] == "sensor-0001"
    assert sensor_ids(1000)[-1] == "sensor-1000"


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="fmt"):
        GeneratorConfig(fmt="xlsx")
    with pytest.raises(ValueError, match="late_ratio"):
        GeneratorConfig(late_ratio=1.5)
    with pytest.raises(ValueError):
        GeneratorConfig(start="2024-13-01")


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: pathlib.Path) -> None:
    cfg = GeneratorConfig(days=2, sensors=3, interval_s=120)
    a = write_files(cfg, tmp_path / "a")
    b = write_files(cfg, tmp_path / "b")
    c = write_files(GeneratorConfig(days=2, sensors=3, interval_s=120, seed=43), tmp_path / "c")

    files_a = [*a.readings, a.labels]
    files_b = [*b.readings, b.labels]
    assert [p.name for p in files_a] == [p.name for p in files_b]
    for pa_, pb in zip(files_a, files_b, strict=True):
        assert pa_.read_bytes() == pb.read_bytes(), pa_.name
    assert a.rows == b.rows
    assert all(
        x.read_bytes() != y.read_bytes() for x, y in zip(a.readings, c.readings, strict=True)
    )


def test_shape_columns_dtypes_and_ids(shape_files: GeneratedFiles) -> None:
    assert [p.name for p in shape_files.readings] == [
        "readings_2024-01-01.csv",
        "readings_2024-01-02.csv",
        "readings_2024-01-03.csv",
    ]
    frames = [_read_csv(p) for p in shape_files.readings]
    df = pd.concat(frames, ignore_index=True)

    assert len(df) == shape_files.rows
    expected = 3 * 4 * 1440  # minus ~1% gaps (and repair downtime), plus 0.2% duplicates
    assert 0.95 * expected <= len(df) <= 1.005 * expected
    assert list(df.columns) == COLUMNS
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    for name in MEASUREMENTS:
        assert df[name].dtype == np.float64, name
    assert sorted(df["sensor_id"].unique()) == sensor_ids(4)
    assert (df["timestamp"].dt.second == 0).all()  # on the 60 s grid
    assert (
        shape_files.readings[0]
        .read_text()
        .startswith(
            "timestamp,sensor_id,temperature,vibration,pressure,current\n2024-01-01T00:00:00Z,"
        )
    )


def test_csv_timestamps_are_utc_for_duckdb(shape_files: GeneratedFiles) -> None:
    rel = duckdb.sql(f"SELECT * FROM read_csv('{shape_files.readings[0]}')")
    assert rel.columns == COLUMNS
    assert str(rel.types[0]) == "TIMESTAMP WITH TIME ZONE"
    assert [str(t) for t in rel.types[2:]] == ["DOUBLE"] * 4


def test_files_sorted_with_late_rows_appended(shape_files: GeneratedFiles) -> None:
    seen_late = 0
    for i, path in enumerate(shape_files.readings):
        df = _read_csv(path)
        file_day = pd.Timestamp(path.stem.removeprefix("readings_"), tz="UTC")
        on_day = (df["timestamp"].dt.floor("D") == file_day).to_numpy()
        n_on = int(on_day.sum())
        # The file's own day comes first; anything after it is late data from the day before.
        assert on_day[:n_on].all() and not on_day[n_on:].any(), path.name
        late = df.iloc[n_on:]
        assert (late["timestamp"].dt.floor("D") == file_day - pd.Timedelta(days=1)).all()
        seen_late += len(late)
        if i == 0:
            assert late.empty
        for part in (df.iloc[:n_on], late):
            keys = list(zip(part["timestamp"], part["sensor_id"], strict=True))
            assert keys == sorted(keys), path.name
    assert seen_late > 0


def test_duplicates_are_exact_and_within_a_file(shape_files: GeneratedFiles) -> None:
    frames = [_read_csv(p).assign(file=p.name) for p in shape_files.readings]
    df = pd.concat(frames, ignore_index=True)
    exact = df.duplicated(subset=COLUMNS)
    assert 0 < exact.sum() < 0.01 * len(df)
    # Every duplicated key is an exact copy in the same file: late rows are moved, not copied.
    dup_keys = df.duplicated(subset=["timestamp", "sensor_id"], keep=False)
    assert (df[dup_keys].groupby(["timestamp", "sensor_id"])["file"].nunique() == 1).all()
    assert df.duplicated(subset=["timestamp", "sensor_id"]).sum() == exact.sum()


def test_late_ratio_and_duplicate_ratio_are_respected(week: pd.DataFrame) -> None:
    late = week["timestamp"].dt.floor("D") != week["file_day"]
    assert late.mean() == pytest.approx(0.01 * 6 / 7, rel=0.2)  # the last day keeps its rows
    assert week.duplicated(subset=COLUMNS).mean() == pytest.approx(0.002, rel=0.3)


def test_values_mostly_within_plausible_ranges(week: pd.DataFrame) -> None:
    inside = total = 0
    for name, (lo, hi) in PLAUSIBLE_RANGES.items():
        values = week[name].dropna()
        inside += int(values.between(lo, hi).sum())
        total += len(values)
    assert inside / total >= 0.999
    assert inside < total  # spikes exist and may leave the range


def test_missing_cells_and_offline_gaps_exist(week: pd.DataFrame) -> None:
    null_share = week[list(MEASUREMENTS)].isna().to_numpy().mean()
    assert 0.001 < null_share < 0.004
    steps = week.drop_duplicates(["timestamp", "sensor_id"]).sort_values("timestamp")
    steps = steps.groupby("sensor_id")["timestamp"].diff().dt.total_seconds()
    assert (steps > 10 * 60).sum() >= 5  # several sensors went offline for > 10 minutes
    coverage = week.drop_duplicates(["timestamp", "sensor_id"]).shape[0] / (7 * 20 * 1440)
    assert 0.95 < coverage < 0.999


def test_daily_cycle_drift_stuck_and_spikes(week: pd.DataFrame) -> None:
    hour = week["timestamp"].dt.hour
    afternoon = week.loc[hour.between(13, 17), "temperature"].mean()
    night = week.loc[hour.between(1, 5), "temperature"].mean()
    assert afternoon - night > 3.0  # temperature follows the daily load cycle

    healthy = week.drop_duplicates(["timestamp", "sensor_id"]).sort_values(
        ["sensor_id", "timestamp"]
    )
    longest_run = 0
    for _, g in healthy.groupby("sensor_id"):
        for name in MEASUREMENTS:
            v = g[name].dropna().to_numpy()
            change = np.flatnonzero(np.diff(v) != 0)
            bounds = np.concatenate([[-1], change, [len(v) - 1]])
            longest_run = max(longest_run, int(np.diff(bounds).max()))
    assert longest_run >= 60  # a stuck channel repeats one value for at least an hour

    medians = week.groupby("sensor_id")[list(MEASUREMENTS)].transform("median")
    ratio = (week[list(MEASUREMENTS)] / medians).to_numpy()
    assert np.nansum(ratio > 2.5) >= 3  # single-sample spikes of a few x the normal value


def test_labels_file_and_degradation_before_failures(tmp_path: pathlib.Path) -> None:
    cfg = GeneratorConfig(days=14, sensors=10, interval_s=300)
    out = write_files(cfg, tmp_path)

    lines = out.labels.read_text().splitlines()
    assert lines[0] == "sensor_id,timestamp,failure"
    labels = pd.read_csv(out.labels, parse_dates=["timestamp"])
    assert len(labels) == out.failures > 0
    assert all(line.split(",")[1].endswith("Z") for line in lines[1:])
    assert (labels["failure"] == 1).all()
    assert labels["timestamp"].is_monotonic_increasing
    pd.testing.assert_frame_equal(labels, generate_labels(cfg))
    first_allowed = pd.Timestamp(cfg.start, tz="UTC") + pd.Timedelta(days=cfg.degradation_days)
    assert (labels["timestamp"] >= first_allowed).all()  # healthy history before any failure

    df = pd.concat([_read_csv(p) for p in out.readings], ignore_index=True)
    median = df.groupby("sensor_id")["vibration"].median()
    for event in labels.itertuples():
        rows = df[df["sensor_id"] == event.sensor_id]
        before = rows[
            rows["timestamp"].between(event.timestamp - pd.Timedelta(hours=12), event.timestamp)
        ]
        after = rows[
            rows["timestamp"].between(
                event.timestamp + pd.Timedelta(hours=6), event.timestamp + pd.Timedelta(hours=18)
            )
        ]
        assert before["vibration"].mean() > 1.5 * median[event.sensor_id], event
        if not after.empty:  # maintenance resets the machine to its baseline
            assert after["vibration"].mean() < 1.3 * median[event.sensor_id], event


@pytest.mark.parametrize("seed", range(10))
def test_default_config_has_a_few_failures_and_healthy_sensors(seed: int) -> None:
    labels = generate_labels(GeneratorConfig(seed=seed))
    assert len(labels) >= 3
    assert labels["sensor_id"].nunique() < 20
    assert str(labels["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert labels["failure"].dtype == np.int64


def test_generate_readings_yields_days_in_order_with_schema() -> None:
    days = [(day, table) for day, table in generate_readings(SHAPE_CFG)]
    assert [day for day, _ in days] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    schema = days[0][1].schema
    assert schema.names == COLUMNS
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("sensor_id").type == pa.string()


def test_csv_gz_and_parquet_hold_the_same_rows_as_csv(tmp_path: pathlib.Path) -> None:
    base = dict(days=2, sensors=3, interval_s=120)
    csv = write_files(GeneratorConfig(**base, fmt="csv"), tmp_path / "csv")
    gz = write_files(GeneratorConfig(**base, fmt="csv.gz"), tmp_path / "gz")
    parquet = write_files(GeneratorConfig(**base, fmt="parquet"), tmp_path / "pq")

    assert [p.name for p in gz.readings] == [
        "readings_2024-01-01.csv.gz",
        "readings_2024-01-02.csv.gz",
    ]
    assert parquet.readings[0].suffix == ".parquet"
    assert csv.rows == gz.rows == parquet.rows
    assert csv.labels.read_bytes() == gz.labels.read_bytes() == parquet.labels.read_bytes()
    for c, g, p in zip(csv.readings, gz.readings, parquet.readings, strict=True):
        expected = _read_csv(c)
        pd.testing.assert_frame_equal(_read_csv(g), expected)
        table = pq.read_table(p)
        assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        from_parquet = table.to_pandas()
        from_parquet["timestamp"] = from_parquet["timestamp"].dt.as_unit("ns")
        pd.testing.assert_frame_equal(from_parquet, expected)
