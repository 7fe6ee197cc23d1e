"""lib/lakehouse.py on ranges of days: batches, merged chunks and gold aggregates.

Expected values come from hand-worked examples and from an independent pandas computation, and
every range result is compared byte for byte with the same day computed on its own.
"""

import hashlib
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_platform.lib.lakehouse import ChunkMerger, DailyAggregator, batch_days

MEASUREMENTS = ["temperature", "vibration"]
SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("sensor_id", pa.string()),
        ("temperature", pa.float64()),
        ("vibration", pa.float64()),
    ]
)


def write_part(path: Path, rows: list[tuple], schema: pa.Schema = SCHEMA) -> Path:
    """A bronze part (or chunk) from ``(iso time, sensor, *values)`` rows."""
    columns = list(zip(*rows, strict=True))
    arrays = [pd.to_datetime(list(columns[0]), utc=True), *columns[1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({f.name: pa.array(a, f.type) for f, a in zip(schema, arrays, strict=True)})
    pq.write_table(table, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(files: dict[str, Path]) -> dict[str, str]:
    return {name: digest(path) for name, path in files.items()}


# ---------------------------------------------------------------------------- batches of days


def test_batches_are_consecutive_and_bounded_by_days_and_bytes():
    sizes = {"d1": 10, "d2": 10, "d3": 10, "d4": 100, "d5": 1, "d6": 0}
    assert batch_days(sizes, max_days=2, max_bytes=25) == [
        ["d1", "d2"],  # two days: the day bound
        ["d3"],  # d3 + d4 would pass 25 bytes
        ["d4"],  # larger than the bound: a batch of its own
        ["d5", "d6"],
    ]
    assert batch_days({}, max_days=2, max_bytes=25) == []
    assert batch_days({"d1": 5}) == [["d1"]]


# ---------------------------------------------------------------------------- silver chunks


@pytest.fixture
def bronze(tmp_path) -> dict[str, list[Path]]:
    """Three days of bronze parts, oldest ingestion first within each day."""
    b = tmp_path / "bronze"
    day1 = [
        write_part(b / "1a.parquet", [  # the older part
            ("2024-01-01T00:00", "s1", 1.0, 0.1),
            ("2024-01-01T00:10", "s1", 2.0, 0.2),
            ("2024-01-01T00:20", "s1", 3.0, 0.3),
            ("2024-01-01T00:00", "s2", 5.0, 0.5),
            ("2024-01-01T00:10", "s1", 2.0, 0.2),  # an exact duplicate inside the part
        ]),
        write_part(b / "1b.parquet", [  # ingested later: it wins for a repeated key
            ("2024-01-01T00:20", "s1", 30.0, 0.3),  # a corrected reading
            ("2024-01-01T00:05", "s2", 6.0, 0.6),  # same key twice in one part:
            ("2024-01-01T00:05", "s2", 7.0, None),  # the larger values win
            ("2024-01-01T01:30", "s1", 4.0, 0.4),  # 70 minutes after 00:20: a gap
        ]),
    ]  # fmt: skip
    day2 = [write_part(b / "2.parquet", [
        ("2024-01-02T12:00", "a b/c", 9.0, 0.9),
        ("2024-01-02T00:00", "s2", 4.0, 0.4),
        # Stamped on day 1 (same key as a day-1 reading): it stays in the day of its part.
        ("2024-01-01T00:00", "s1", -1.0, -0.1),
    ])]  # fmt: skip
    with_humidity = SCHEMA.append(pa.field("humidity", pa.float64()))
    day3 = [
        write_part(b / "3.parquet", [("2024-01-03T06:00", "s1", 8.0, 0.8, 55.0)], with_humidity)
    ]
    return {"2024-01-01": day1, "2024-01-02": day2, "2024-01-03": day3, "2024-01-04": []}


def test_a_range_merges_each_day_with_the_newest_part_winning(tmp_path, bronze):
    with ChunkMerger() as merger:
        reports = merger.merge(bronze, tmp_path / "out")
    day1 = reports["2024-01-01"]
    assert (day1.rows_in, day1.input_keys, day1.rows_out, day1.duplicates_removed) == (9, 6, 6, 3)
    assert day1.rows_per_sensor == {"s1": 4, "s2": 2}
    assert day1.rows_written == 6
    assert set(day1.files) == {"sensor_id=s1", "sensor_id=s2"}
    s1 = pd.read_parquet(day1.files["sensor_id=s1"])
    assert list(s1.columns) == ["timestamp", "sensor_id", "temperature", "vibration"]
    assert s1["timestamp"].dt.strftime("%H:%M").tolist() == ["00:00", "00:10", "00:20", "01:30"]
    assert s1["temperature"].tolist() == [1.0, 2.0, 30.0, 4.0]  # 00:20 corrected by the later part
    s2 = pd.read_parquet(day1.files["sensor_id=s2"])
    assert s2["temperature"].tolist() == [5.0, 7.0] and s2["vibration"].isna().tolist() == [
        False,
        True,
    ]
    assert day1.gaps == {  # s1 steps 10, 10, 70 min; s2 one step of 5 min
        "s1": {"median_interval_s": 600.0, "max_gap_s": 4200.0, "gaps": 1},
        "s2": {"median_interval_s": 300.0, "max_gap_s": 300.0, "gaps": 0},
    }
    # One reading: no step. Steps never reach back to the day before (s2 at 00:05 on day 1).
    assert reports["2024-01-02"].gaps["s2"] == {"median_interval_s": 0.0, "max_gap_s": 0.0,
                                                "gaps": 0}  # fmt: skip
    # Each day is de-duplicated on its own: day 2's row stamped on day 1 replaces nothing.
    assert reports["2024-01-02"].rows_per_sensor == {"a b/c": 1, "s1": 1, "s2": 1}
    day2_s1 = pd.read_parquet(reports["2024-01-02"].files["sensor_id=s1"])
    assert day2_s1["temperature"].tolist() == [-1.0]
    # The sensor id is escaped in the file name as DuckDB names a hive partition.
    assert set(reports["2024-01-02"].files) == {
        "sensor_id=a%20b%2Fc", "sensor_id=s1", "sensor_id=s2"
    }  # fmt: skip
    # Each day keeps its own columns: the humidity of 2024-01-03 is not added to 2024-01-02.
    day3 = pd.read_parquet(reports["2024-01-03"].files["sensor_id=s1"])
    assert list(day3.columns) == ["timestamp", "sensor_id", "temperature", "vibration", "humidity"]
    day2 = pd.read_parquet(reports["2024-01-02"].files["sensor_id=a%20b%2Fc"])
    assert "humidity" not in day2.columns
    # A day without parts has nothing; the preview shows the last day with rows.
    empty = reports["2024-01-04"]
    assert (empty.rows_in, empty.rows_out, empty.files, empty.input_keys) == (0, 0, {}, 0)
    assert [r["temperature"] for r in reports["2024-01-03"].preview] == [8.0]


def test_chunks_match_an_independent_pandas_merge(tmp_path, bronze):
    with ChunkMerger() as merger:
        reports = merger.merge(bronze, tmp_path / "out")
    for day, parts in bronze.items():
        if not parts:
            continue
        frames = [pd.read_parquet(p).assign(_rank=i) for i, p in enumerate(parts)]
        frame = pd.concat(frames, ignore_index=True)
        values = [c for c in frame.columns if c not in ("timestamp", "sensor_id", "_rank")]
        # Newest part last, and inside a part the larger values last (missing values first).
        frame = frame.sort_values(["_rank", *values], na_position="first", kind="stable")
        frame = frame.drop_duplicates(["sensor_id", "timestamp"], keep="last").drop(columns="_rank")
        assert set(reports[day].files) == {f"sensor_id={quote(s, safe='')}"
                                           for s in frame["sensor_id"]}  # fmt: skip
        for sensor, want in frame.groupby("sensor_id"):
            got = pd.read_parquet(reports[day].files[f"sensor_id={quote(sensor, safe='')}"])
            want = want.sort_values("timestamp").reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want[got.columns], check_exact=True)


def test_a_day_merged_within_a_range_has_the_bytes_it_has_on_its_own(tmp_path, bronze):
    with ChunkMerger() as merger:
        together = merger.merge(bronze, tmp_path / "range")
        alone = {day: merger.merge({day: parts}, tmp_path / day)[day]
                 for day, parts in bronze.items()}  # fmt: skip
    for day in bronze:
        assert digests(together[day].files) == digests(alone[day].files), day
    with ChunkMerger() as merger:  # and a re-run writes the same bytes again
        again = merger.merge(bronze, tmp_path / "again")
    assert [digests(r.files) for r in again.values()] == [
        digests(r.files) for r in together.values()
    ]


# ---------------------------------------------------------------------------- gold aggregates

DAYS = [(date(2024, 3, 1) + timedelta(days=i)).isoformat() for i in range(10)]
EMPTY_DAY = "2024-03-05"  # no chunks: absent from the history of the days after it
HISTORY_DAY = "2024-02-27"  # aggregates from before the range (Feb 2024 has 29 days)
HISTORY = pd.DataFrame(
    {"sensor_id": ["s1", "s9"], "rows": [3, 2], "temperature_mean": [100.0, -5.0],
     "vibration_mean": [np.nan, 1.0]}
)  # fmt: skip


def chunk_rows(day: str, sensor: str, n: int) -> list[tuple]:
    """Irregular readings of one sensor-day, with missing values, from a fixed seed."""
    offset = int(hashlib.sha256(f"{day}{sensor}".encode()).hexdigest()[:6], 16)
    rng = np.random.default_rng(offset)
    minutes = np.sort(rng.choice(24 * 60, size=n, replace=False))
    rows = []
    for i, minute in enumerate(minutes):
        t = pd.Timestamp(day, tz="UTC") + pd.Timedelta(minutes=int(minute))
        temperature = None if i == 2 else float(np.round(rng.normal(20, 3), 3))
        vibration = None if i % 4 == 3 else float(np.round(rng.gamma(2, 0.5), 4))
        rows.append((t.isoformat(), sensor, temperature, vibration))
    return rows


@pytest.fixture
def chunks(tmp_path) -> dict[str, list[Path]]:
    """Chunk files of DAYS: s1 every day, s2 on even days, nothing on EMPTY_DAY."""
    files: dict[str, list[Path]] = {}
    for i, day in enumerate(DAYS):
        files[day] = []
        if day == EMPTY_DAY:
            continue
        for sensor in ["s1", "s2"] if i % 2 == 0 else ["s1"]:
            path = tmp_path / "chunks" / day / f"sensor_id={sensor}.parquet"
            files[day].append(write_part(path, chunk_rows(day, sensor, 6 + i)))
    return files


@pytest.fixture
def history_file(tmp_path) -> Path:
    path = tmp_path / "gold" / f"{HISTORY_DAY}.parquet"
    path.parent.mkdir(parents=True)
    HISTORY.to_parquet(path)
    return path


def created_of(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T08:00:00.123456+00:00") + timedelta(days=1)


def expected_gold(chunks: dict[str, list[Path]]) -> dict[str, pd.DataFrame]:
    """The gold rows of every day, computed day by day with pandas and numpy."""
    means = {HISTORY_DAY: HISTORY}  # day -> the day's rows, means and counts
    gold = {}
    for day in DAYS:
        if not chunks[day]:
            continue
        frame = pd.concat([pd.read_parquet(f) for f in chunks[day]], ignore_index=True)
        hours = (frame["timestamp"] - pd.Timestamp(day, tz="UTC")).dt.total_seconds() / 3600
        rows = []
        for sensor, group in frame.groupby("sensor_id"):
            row = {"sensor_id": sensor, "day": date.fromisoformat(day), "rows": len(group)}
            for m in MEASUREMENTS:
                values = group[m].dropna()
                last = group.loc[values.index].sort_values("timestamp")[m].iloc[-1]
                row |= {
                    f"{m}_count": len(values), f"{m}_missing_ratio": 1 - len(values) / len(group),
                    f"{m}_mean": values.mean(), f"{m}_std": values.std(),
                    f"{m}_min": values.min(), f"{m}_max": values.max(),
                    f"{m}_p05": values.quantile(0.05), f"{m}_p50": values.quantile(0.5),
                    f"{m}_p95": values.quantile(0.95), f"{m}_last": last,
                    f"{m}_slope_per_h": np.polyfit(hours[values.index], values, 1)[0],
                }  # fmt: skip
            rows.append(row)
        today = pd.DataFrame(rows)
        window = [d.isoformat() for d in pd.date_range(end=pd.Timestamp(day) - pd.Timedelta(days=1),
                                                       periods=7).date]  # fmt: skip
        past = pd.concat([means[d] for d in window if d in means], ignore_index=True)
        for m in MEASUREMENTS:
            mean_7d = today["sensor_id"].map(past.groupby("sensor_id")[f"{m}_mean"].mean())
            today[f"{m}_mean_7d"] = mean_7d
            today[f"{m}_change_vs_7d"] = today[f"{m}_mean"] - mean_7d
        with_data = past[past["rows"] > 0].groupby("sensor_id").size()
        today["days_with_data_7d"] = today["sensor_id"].map(with_data).fillna(0).astype("int64")
        today["event_timestamp"] = pd.Timestamp(day, tz="UTC") + pd.Timedelta(
            days=1, microseconds=-1
        )
        today["created_timestamp"] = pd.Timestamp(created_of(day))
        means[day] = today
        gold[day] = today
    return gold


def aggregate(chunks, days, history, out_dir, **kwargs) -> dict:
    with DailyAggregator(MEASUREMENTS, history, **kwargs) as aggregator:
        return aggregator.aggregate({d: chunks[d] for d in days},
                                    {d: created_of(d) for d in days if chunks[d]}, out_dir)  # fmt: skip


def test_a_range_whose_trailing_week_reads_days_of_the_range_matches_pandas(
    tmp_path, chunks, history_file
):
    reports = aggregate(chunks, DAYS, {HISTORY_DAY: history_file}, tmp_path / "range")
    want = expected_gold(chunks)
    assert set(want) == {d for d in DAYS if d != EMPTY_DAY}
    assert reports[EMPTY_DAY].file is None and reports[EMPTY_DAY].rows_per_sensor == {}
    for day, expected in want.items():
        got = pd.read_parquet(reports[day].file)
        assert list(got.columns[:3]) == ["sensor_id", "day", "rows"]
        assert list(got.columns[-3:]) == ["days_with_data_7d", "event_timestamp",
                                          "created_timestamp"]  # fmt: skip
        assert set(got.columns) == set(expected.columns)
        pd.testing.assert_frame_equal(
            got, expected[got.columns], check_dtype=False, rtol=1e-12, obj=day
        )
        assert reports[day].rows == len(expected)
        assert reports[day].rows_per_sensor == expected.set_index("sensor_id")["rows"].to_dict()
    # Hand-checked: 2024-03-01 sees only the pre-range day; 03-04 also sees 03-01..03-03.
    first = pd.read_parquet(reports["2024-03-01"].file).set_index("sensor_id")
    assert first.loc["s1", "temperature_mean_7d"] == 100.0
    assert np.isnan(first.loc["s2", "temperature_mean_7d"])
    assert first.loc["s1", "days_with_data_7d"] == 1 and first.loc["s2", "days_with_data_7d"] == 0
    fourth = pd.read_parquet(reports["2024-03-04"].file).set_index("sensor_id")
    s1_means = [100.0] + [want[d].set_index("sensor_id").loc["s1", "temperature_mean"]
                          for d in ("2024-03-01", "2024-03-02", "2024-03-03")]  # fmt: skip
    assert fourth.loc["s1", "temperature_mean_7d"] == pytest.approx(np.mean(s1_means), rel=1e-12)
    assert fourth.loc["s1", "days_with_data_7d"] == 4
    # History days: the days of the week before that have aggregates (03-05 has none).
    assert reports["2024-03-01"].history_days == 1
    assert reports["2024-03-06"].history_days == 4  # 02-27, 03-01..03-04
    assert reports["2024-03-10"].history_days == 6  # 03-03, 03-04, 03-06..03-09


def test_a_day_aggregated_within_a_range_has_the_bytes_it_has_on_its_own(
    tmp_path, chunks, history_file
):
    together = aggregate(chunks, DAYS, {HISTORY_DAY: history_file}, tmp_path / "range")
    # Day by day, as single-day runs do: the history is the gold files written before.
    written = {HISTORY_DAY: history_file}
    for day in DAYS:
        before = {d: f for d, f in written.items()
                  if date.fromisoformat(day) - date.fromisoformat(d) <= timedelta(days=7)}  # fmt: skip
        [alone] = aggregate(chunks, [day], before, tmp_path / day).values()
        if alone.file is None:
            assert together[day].file is None
            continue
        assert digest(alone.file) == digest(together[day].file), day
        written[day] = alone.file
    # Two calls on one aggregator (a batch boundary inside the range) give the same bytes too.
    with DailyAggregator(MEASUREMENTS, {HISTORY_DAY: history_file}) as aggregator:
        split = {}
        for days in (DAYS[:4], DAYS[4:]):
            split |= aggregator.aggregate({d: chunks[d] for d in days},
                                          {d: created_of(d) for d in days if chunks[d]},
                                          tmp_path / "split")  # fmt: skip
    for day in DAYS:
        if together[day].file:
            assert digest(split[day].file) == digest(together[day].file), day
