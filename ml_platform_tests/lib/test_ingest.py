"""Ingest of one local file against the contract (pure lib code, no Dagster)."""

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.lib.contract import ContractError, load_contract, parse_contract
from ml_platform.lib.ingest import RejectedFileError, ingest_file
from ml_platform_tests.helpers import READINGS_HEADER as HEADER

NOW = datetime(2024, 2, 1, tzinfo=UTC)


@pytest.fixture
def contract():
    return load_contract()


def ingest(tmp_path: Path, contract, name: str, content: bytes | str, **kw):
    src = tmp_path / name
    src.write_bytes(content.encode() if isinstance(content, str) else content)
    return ingest_file(src, contract, tmp_path / "out", now=NOW, **kw)


def test_a_file_spanning_three_days_gives_exactly_three_day_parts(tmp_path, contract):
    rows = [
        "2024-01-01T23:59:59Z,007,50,2,5,20",
        "2024-01-02T00:00:00Z,007,51,2,5,20",
        "2024-01-02T12:00:00+02:00,008,52,2,5,20",
        "2024-01-03 08:00:00,008,53,2,5,20",  # naive means UTC
        "2024-01-03 08:00:00,008,53,2,5,20",  # exact duplicate
    ]
    report = ingest(tmp_path, contract, "r.csv", HEADER + "\n".join(rows) + "\n")
    assert report.dates == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert report.rows_by_date == {"2024-01-01": 1, "2024-01-02": 2, "2024-01-03": 1}
    assert (report.rows_in, report.rows_out, report.duplicate_rows) == (5, 4, 1)
    assert report.sensors == ["007", "008"]  # ids keep their leading zeros
    day2 = pd.read_parquet(report.parts["2024-01-02"]).sort_values("timestamp")
    assert list(day2.columns) == [
        "timestamp",
        "sensor_id",
        "temperature",
        "vibration",
        "pressure",
        "current",
    ]
    assert str(day2["timestamp"].dt.tz) == "UTC"
    assert day2["timestamp"].tolist() == [
        pd.Timestamp("2024-01-02T00:00:00Z"),
        pd.Timestamp("2024-01-02T10:00:00Z"),
    ]


def test_renames_delimiter_gzip_and_epoch_timestamps(tmp_path):
    contract = parse_contract(
        {
            "csv": {"delimiter": ";"},
            "renames": {"time": "timestamp", "device": "sensor_id", "temp": "temperature"},
            "columns": {"temperature": {"type": "double", "min": -40, "max": 150}},
        }
    )
    body = "time;device;temp;humidity\n1704067200;a;20.5;40\n1704153600000;b;21;41\n"
    report = ingest(tmp_path, contract, "x.data", gzip.compress(body.encode()))
    assert report.source_format == "csv+gzip"
    assert report.dates == ["2024-01-01", "2024-01-02"]  # seconds and milliseconds both understood
    assert report.renamed == {"time": "timestamp", "device": "sensor_id", "temp": "temperature"}
    assert report.extra_columns == ["humidity"]  # reported, not silently dropped


def test_parquet_input(tmp_path, contract):
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-05T01:00:00Z", "2024-01-06T01:00:00Z"]),
            "sensor_id": ["s1", "s2"],
            "temperature": [40.0, 41.0],
            "vibration": [1.0, 2.0],
            "pressure": [3.0, 4.0],
            "current": [10, 11],  # integers are fine for a double column
        }
    )
    src = tmp_path / "r.parquet"
    df.to_parquet(src)
    report = ingest_file(src, contract, tmp_path / "out", now=NOW)
    assert report.source_format == "parquet"
    assert report.rows_by_date == {"2024-01-05": 1, "2024-01-06": 1}


def test_bad_rows_are_counted_by_reason_and_out_of_range_values_reported(tmp_path, contract):
    rows = [
        "2024-01-01T00:00:00Z,s1,50,2,5,20",
        "2024-01-01T00:01:00Z,s1,50,2,5,999",  # current out of range: kept and counted
        ",s1,50,2,5,20",  # null timestamp
        "yesterday,s1,50,2,5,20",  # unparseable
        "2024-01-01T00:02:00Z,,50,2,5,20",  # no sensor id
        "2030-01-01T00:00:00Z,s1,50,2,5,20",  # beyond the future tolerance
    ]
    report = ingest(tmp_path, contract, "r.csv", HEADER + "\n".join(rows) + "\n")
    assert report.rejected_rows == {
        "future_timestamp": 1,
        "null_sensor_id": 1,
        "null_timestamp": 1,
        "unparseable_timestamp": 1,
    }
    assert report.out_of_range == {"current": 1}
    assert report.rows_out == 2


@pytest.mark.parametrize(
    ("name", "content", "reason", "words"),
    [
        ("empty.csv", b"", "empty_file", "0 bytes"),
        ("header.csv", HEADER, "no_rows", "no data rows"),
        (
            "missing.csv",
            "timestamp,sensor_id,temperature\n2024-01-01,s1,5\n",
            "missing_columns",
            "vibration",
        ),
        (
            "wrongtype.csv",
            HEADER + "2024-01-01T00:00:00Z,s1,hot,2,5,20\n",
            "wrong_type",
            "temperature",
        ),
        (
            "truncated.csv",
            HEADER + "2024-01-01T00:00:00Z,s1,50,2,5,20\n2024-01-01T00:01:00Z,s1,5",
            "unreadable",
            "cannot read",
        ),
        ("garbage.parquet", b"PAR1\x00\x01garbage", "unreadable", "parquet"),
        ("bad.csv.gz", b"\x1f\x8b\x08\x00broken", "unreadable", "cannot read"),
        ("allbad.csv", HEADER + ",s1,50,2,5,20\n", "no_valid_rows", "rejected"),
    ],
)
def test_unacceptable_files_are_rejected_with_a_reason_and_write_nothing(
    tmp_path, contract, name, content, reason, words
):
    with pytest.raises(RejectedFileError) as info:
        ingest(tmp_path, contract, name, content)
    assert info.value.reason == reason
    assert words in info.value.message
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_parquet_with_a_string_measurement_is_rejected(tmp_path, contract):
    df = pd.DataFrame(
        {
            "timestamp": ["2024-01-01T00:00:00Z"],
            "sensor_id": ["s1"],
            "temperature": ["hot"],
            "vibration": [1.0],
            "pressure": [1.0],
            "current": [1.0],
        }
    )
    df.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(RejectedFileError, match="'temperature' has type VARCHAR"):
        ingest_file(tmp_path / "r.parquet", contract, tmp_path / "out", now=NOW)


def test_invalid_contracts_fail_loudly():
    with pytest.raises(ContractError, match="unknown keys"):
        parse_contract({"columns": {"t": {"type": "double"}}, "colums": {}})
    with pytest.raises(ContractError, match="min > max"):
        parse_contract({"columns": {"t": {"type": "double", "min": 5, "max": 1}}})
    with pytest.raises(ContractError, match=r"timestamp: unknown keys \['column'\]"):
        parse_contract({"timestamp": {"column": "ts"}, "columns": {"t": {"type": "double"}}})
    with pytest.raises(ContractError, match="type must be one of"):
        parse_contract({"columns": {"t": {"type": "float128"}}})


def test_a_bad_timestamp_past_the_sniffer_sample_is_a_bad_row_not_a_bad_file(tmp_path, contract):
    good = "".join(
        f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,s1,50,2,5,20\n" for i in range(3000)
    )
    body = HEADER + good * 20 + "garbage,s1,50,2,5,20\n"  # 60,000 rows before the bad one
    report = ingest(tmp_path, contract, "late-garbage.csv", body)
    assert report.rejected_rows == {"unparseable_timestamp": 1}
    assert report.rows_in == 60_001


def test_contract_bounds_are_numbers():
    contract = parse_contract({"columns": {"t": {"type": "double", "min": "-4e1", "max": "1e3"}}})
    assert (contract.columns[0].min, contract.columns[0].max) == (-40.0, 1000.0)
    with pytest.raises(ContractError, match="max must be a number"):
        parse_contract({"columns": {"t": {"type": "double", "max": "1; DROP TABLE x"}}})


# ------------------------------------------------------------------------------ contract policies


def _policy_contract(**extra):
    """Two bounded columns, as a user's own contract would declare them."""
    return parse_contract(
        {
            "columns": {
                "temperature": {"type": "double", "min": -40, "max": 150},
                "vibration": {"type": "double", "min": 0, "max": 100},
            },
            **extra,
        }
    )


#: Row 2's temperature (200) and row 3's vibration (-1) are out of range; row 1 is in range.
OUT_OF_RANGE = (
    "timestamp,sensor_id,temperature,vibration\n"
    "2024-01-01T01:00:00Z,a,20,1\n"
    "2024-01-01T02:00:00Z,a,200,2\n"
    "2024-01-01T03:00:00Z,b,30,-1\n"
)


def _folder(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def _rows(report) -> list[tuple]:
    day = pd.read_parquet(report.parts["2024-01-01"]).sort_values("timestamp")
    return [
        (r.sensor_id, None if pd.isna(r.temperature) else r.temperature,
         None if pd.isna(r.vibration) else r.vibration)
        for r in day.itertuples()
    ]  # fmt: skip


def test_out_of_range_keep_null_and_reject_row(tmp_path):
    kept = ingest(_folder(tmp_path, "keep"), _policy_contract(), "r.csv", OUT_OF_RANGE)
    assert _rows(kept) == [("a", 20.0, 1.0), ("a", 200.0, 2.0), ("b", 30.0, -1.0)]
    assert kept.out_of_range == {"temperature": 1, "vibration": 1}

    blanked = ingest(
        _folder(tmp_path, "null"), _policy_contract(out_of_range="null"), "r.csv", OUT_OF_RANGE
    )
    assert _rows(blanked) == [("a", 20.0, 1.0), ("a", None, 2.0), ("b", 30.0, None)]
    assert blanked.out_of_range == {"temperature": 1, "vibration": 1}

    dropped = ingest(
        _folder(tmp_path, "reject"),
        _policy_contract(out_of_range="reject_row"),
        "r.csv",
        OUT_OF_RANGE,
    )
    assert _rows(dropped) == [("a", 20.0, 1.0)]
    assert (dropped.rows_in, dropped.rows_out) == (3, 1)


def test_extra_columns_reject_quarantines_the_whole_file(tmp_path):
    body = "timestamp,sensor_id,temperature,vibration,humidity\n2024-01-01T01:00:00Z,a,20,1,40\n"
    reported = ingest(_folder(tmp_path, "report"), _policy_contract(), "r.csv", body)
    assert reported.extra_columns == ["humidity"] and reported.rows_out == 1
    with pytest.raises(RejectedFileError) as rejected:
        ingest(_folder(tmp_path, "reject"), _policy_contract(extra_columns="reject"), "r.csv", body)
    assert "humidity" in str(rejected.value)
    assert not (tmp_path / "reject" / "out").exists() or not any(
        (tmp_path / "reject" / "out").rglob("*.parquet")
    )


def test_a_strptime_format_in_a_non_utc_time_zone(tmp_path):
    """Day-first local times of Europe/Berlin: 01/07/2023 01:30 is 2023-06-30T23:30Z (summer,
    UTC+2); 15/01/2024 00:30 is 2024-01-14T23:30Z (winter, UTC+1)."""
    contract = _policy_contract(timestamp={"format": "%d/%m/%Y %H:%M", "timezone": "Europe/Berlin"})
    body = (
        "timestamp,sensor_id,temperature,vibration\n"
        "01/07/2023 01:30,a,20,1\n"
        "15/01/2024 00:30,a,21,1\n"
    )
    report = ingest(tmp_path, contract, "r.csv", body)
    assert report.rows_by_date == {"2023-06-30": 1, "2024-01-14": 1}
    summer = pd.read_parquet(report.parts["2023-06-30"])["timestamp"].tolist()
    winter = pd.read_parquet(report.parts["2024-01-14"])["timestamp"].tolist()
    assert summer == [pd.Timestamp("2023-06-30T23:30:00Z")]
    assert winter == [pd.Timestamp("2024-01-14T23:30:00Z")]


def test_epoch_microseconds_declared_and_detected(tmp_path):
    """1704067200123456 µs is 2024-01-01T00:00:00.123456Z."""
    body = "timestamp,sensor_id,temperature,vibration\n1704067200123456,a,20,1\n"
    expected = [pd.Timestamp("2024-01-01T00:00:00.123456Z")]
    for fmt in ("epoch_us", "auto"):
        contract = _policy_contract(timestamp={"format": fmt})
        report = ingest(_folder(tmp_path, fmt), contract, "r.csv", body)
        assert pd.read_parquet(report.parts["2024-01-01"])["timestamp"].tolist() == expected, fmt
