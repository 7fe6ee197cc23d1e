"""Great Expectations suites on every day partition of the lakehouse assets.

Each check judges a run's outputs against the inputs the asset read, as the asset recorded them
(``lake/_inputs/<asset>/run=<id>.json``), never against a fresh listing: files that land while a
lakehouse run is between its asset and its checks cannot fail the checks. A range of days is
validated in one pass (one GX context and one validation per check step) and reported as one
evaluation per day (``partition=day``), so the UI's checks tab shows a result for every partition
of a single-run backfill. A blocking failure stops the downstream step of that run and names the
day, the failed expectations and their unexpected counts.
"""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks
from ml_platform.defs.partitions import daily
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.defs.runs import latest_runs_of
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import read_partitions
from ml_platform.lib.quality import Expect, SuiteOutcome, run_suite_by_partition
from ml_platform.lib.store import ObjectStore

DAY = "_partition"


def _evaluation(
    asset: str, check: str, day: str, outcome: SuiteOutcome, seen: dict, *, blocking: bool
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset),
        check_name=check,
        passed=outcome.success,
        partition=day,
        blocking=blocking,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=outcome.summary,
        metadata={
            "evaluated_expectations": outcome.evaluated,
            "failed_expectations": dg.MetadataValue.json(outcome.failed),
            **{
                k: v if isinstance(v, int | float | str) else dg.MetadataValue.json(v)
                for k, v in seen.items()
            },
        },
    )


def recorded_inputs(
    context: dg.AssetCheckExecutionContext, store: ObjectStore, asset: str
) -> dict[str, dict | None]:
    """What the asset read for each checked day: from this run's record, or (for a check run on
    its own) from the record of the run that last materialized the day. None: no record."""
    days = list(context.partition_keys)
    runs: dict[str, str | None] = {day: context.run.run_id for day in days}
    own = _read_record(store, asset, context.run.run_id)
    missing = [d for d in days if d not in own]
    if missing:
        found = latest_runs_of(context.instance, dg.AssetKey(asset), missing)
        runs |= {day: found.get(day) for day in missing}
    records = {context.run.run_id: own}
    for run_id in {r for r in runs.values() if r} - set(records):
        records[run_id] = _read_record(store, asset, run_id)
    return {day: records[run].get(day) if (run := runs[day]) else None for day in days}


def _read_record(store: ObjectStore, asset: str, run_id: str) -> dict[str, dict]:
    try:
        return json.loads(store.read_bytes(paths.run_inputs_object(asset, run_id)))["days"]
    except FileNotFoundError:
        return {}


def _no_record(day: str) -> SuiteOutcome:
    return SuiteOutcome(success=False, evaluated=0, failed=[{
        "expectation": "inputs_recorded", "unexpected_count": None,
        "error": f"no record of what the asset read for {day}: materialize the day again"}])  # fmt: skip


def _row_count_outcome(observed: int, expected: int) -> SuiteOutcome:
    """A day without any row to validate: it passes only if nothing was expected."""
    ok = observed == expected
    return SuiteOutcome(success=ok, evaluated=1, failed=[] if ok else [
        {"expectation": "expect_table_row_count_to_equal", "observed_value": observed,
         "unexpected_count": expected - observed}])  # fmt: skip


def _frame_of(store: ObjectStore, keys: dict[str, list[str]], tmp: Path) -> Any:
    """The objects of every day, fetched in one go, as one frame with the day in ``DAY``."""
    flat = [(day, key) for day, ks in keys.items() for key in ks]
    try:
        files = store.fetch([k for _, k in flat], tmp)
    except FileNotFoundError:  # an object recorded but gone since: its day counts no rows
        flat = [(day, key) for day, key in flat if store.exists(key)]
        files = store.fetch([k for _, k in flat], tmp)
    by_day: dict[str, list[Path]] = {}
    for (day, _), file in zip(flat, files, strict=True):
        by_day.setdefault(day, []).append(file)
    return read_partitions(by_day, DAY)


def _with_day_counts(frame: Any, expected: dict[str, int]) -> Any:
    """Each row carries its day's row count and the count the inputs call for."""
    frame["_day_rows"] = frame.groupby(DAY)[DAY].transform("size").astype("int64")
    frame["_expected_day_rows"] = frame[DAY].map(expected).astype("int64")
    return frame


def _by_day(
    frame: Any, expectations: list[Expect], name: str, expected_rows: dict[str, int]
) -> dict[str, SuiteOutcome]:
    """The suite's outcome for every day: validated where the day has rows, else by count."""
    outcomes = run_suite_by_partition(frame, expectations, name, DAY) if len(frame) else {}
    for day, expected in expected_rows.items():
        outcomes.setdefault(day, _row_count_outcome(0, expected))
    return outcomes


CHUNK_SUITE = [
    Expect("ExpectColumnValuesToNotBeNull", {"column": "timestamp"}),
    Expect("ExpectColumnValuesToNotBeNull", {"column": "sensor_id"}),
    Expect("ExpectCompoundColumnsToBeUnique", {"column_list": ["sensor_id", "timestamp"]}),
    Expect("ExpectColumnValuesToBeInSet", {"column": "_on_partition_day", "value_set": [True]}),
    Expect("ExpectColumnPairValuesToBeEqual",
           {"column_A": "_day_rows", "column_B": "_expected_day_rows"}),
]  # fmt: skip


def _chunks(
    context: dg.AssetCheckExecutionContext, store: ObjectStore, tmp: Path
) -> tuple[Any, dict[str, dict | None]]:
    """The chunk objects the run wrote for each day (from its input record), as one frame."""
    inputs = recorded_inputs(context, store, "sensor_chunks")
    keys = {day: read["objects"] for day, read in inputs.items() if read}
    frame = _frame_of(store, keys, tmp)
    if len(frame):
        import pandas as pd

        day_start = pd.to_datetime(frame[DAY]).dt.tz_localize("UTC")  # cached: few distinct days
        frame["_on_partition_day"] = frame["timestamp"].dt.floor("D") == day_start
    return frame, inputs


CHUNK_CHECKS = [
    dg.AssetCheckSpec(
        "sensor_chunks_pass_quality_suite",
        asset=sensor_chunks,
        blocking=True,
        partitions_def=daily,
        description="GX: no null keys, unique (sensor_id, timestamp), rows inside their day, "
        "row count = distinct keys of the bronze parts the asset read.",
    ),
    dg.AssetCheckSpec(
        "sensor_chunks_values_within_contract_ranges",
        asset=sensor_chunks,
        partitions_def=daily,
        description="GX (warn): measurement values inside the contract's plausible ranges.",
    ),
]


@dg.multi_asset_check(specs=CHUNK_CHECKS, name="sensor_chunks_checks")
def sensor_chunks_checks(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, ingest: IngestResource
) -> Iterator[Any]:
    """Both suites of the chunks in one step: the objects are fetched and read once."""
    store = lake.store()
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        frame, inputs = _chunks(context, store, Path(tmp))
    rows = frame.groupby(DAY).size().to_dict() if len(frame) else {}
    yield from _chunk_suite(frame, inputs, rows)
    yield from _chunk_ranges(frame, inputs, rows, ingest.contract("readings").columns)
    for spec in CHUNK_CHECKS:
        yield dg.Output(None, output_name=spec.get_python_identifier())


def _chunk_suite(frame: Any, inputs: dict, rows: dict) -> Iterator[dg.AssetCheckEvaluation]:
    """The blocking suite: keys, days and row counts against the recorded inputs."""
    expected = {day: read["input_keys"] for day, read in inputs.items() if read}
    judged = _with_day_counts(frame.copy(), expected) if len(frame) else frame
    outcomes = _by_day(judged, CHUNK_SUITE, "sensor_chunks", expected)
    for day, read in inputs.items():
        seen = {"rows": int(rows.get(day, 0))}
        if read:
            seen |= {"expected_rows": read["input_keys"], "sensor_objects": len(read["objects"]),
                     "bronze_parts_read": read["bronze_parts"]}  # fmt: skip
        yield _evaluation(
            "sensor_chunks", "sensor_chunks_pass_quality_suite", day,
            outcomes[day] if read else _no_record(day), seen, blocking=True,
        )  # fmt: skip


def _chunk_ranges(
    frame: Any, inputs: dict, rows: dict, columns: list
) -> Iterator[dg.AssetCheckEvaluation]:
    """The warning suite: measurements inside the contract's plausible ranges."""
    expectations = [
        Expect("ExpectColumnValuesToBeBetween",
               {"column": c.name, "min_value": c.min, "max_value": c.max})
        for c in columns if (c.min is not None or c.max is not None) and c.name in frame
    ]  # fmt: skip
    outcomes = (
        run_suite_by_partition(frame, expectations, "sensor_chunk_ranges", DAY)
        if len(frame) and expectations
        else {}
    )
    nothing = SuiteOutcome(success=True, evaluated=0, failed=[])
    for day in inputs:
        yield _evaluation(
            "sensor_chunks", "sensor_chunks_values_within_contract_ranges", day,
            outcomes.get(day, nothing), {"rows": int(rows.get(day, 0))}, blocking=False,
        )  # fmt: skip


def _aggregates_suite(measurements: list[str]) -> list[Expect]:
    required = ["sensor_id", "rows", "event_timestamp", "created_timestamp"]
    required += [f"{m}_count" for m in measurements] + [f"{m}_missing_ratio" for m in measurements]
    return [
        Expect("ExpectCompoundColumnsToBeUnique", {"column_list": [DAY, "sensor_id"]}),
        Expect("ExpectColumnPairValuesToBeEqual",
               {"column_A": "_day_rows", "column_B": "_expected_day_rows"}),
        *(Expect("ExpectColumnValuesToNotBeNull", {"column": c}) for c in required),
        Expect("ExpectColumnPairValuesToBeEqual", {"column_A": "rows", "column_B": "rows_in_chunks"}),
    ]  # fmt: skip


@dg.asset_check(
    asset=daily_aggregates,
    blocking=True,
    partitions_def=daily,
    description="GX: exactly one row per sensor of the chunks the asset read, required features "
    "present, row counts equal to those chunks'.",
)
def daily_aggregates_pass_quality_suite(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, ingest: IngestResource
) -> Iterator[Any]:
    store = lake.store()
    measurements = [c.name for c in ingest.contract("readings").columns]
    inputs = recorded_inputs(context, store, "daily_aggregates")
    sensors = {day: read["rows_per_sensor"] for day, read in inputs.items() if read}
    keys = {day: [paths.aggregates_object(day)] for day, counts in sensors.items() if counts}
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        frame = _frame_of(store, keys, Path(tmp))
    if len(frame):
        frame = _with_day_counts(frame, {day: len(counts) for day, counts in sensors.items()})
        frame["rows_in_chunks"] = [
            sensors[day].get(sensor, -1)
            for day, sensor in zip(frame[DAY], frame["sensor_id"], strict=True)
        ]
    expected = {day: len(counts) for day, counts in sensors.items()}
    outcomes = _by_day(frame, _aggregates_suite(measurements), "daily_aggregates", expected)
    rows = frame.groupby(DAY).size().to_dict() if len(frame) else {}
    for day, read in inputs.items():
        seen = {"rows": int(rows.get(day, 0)), "sensors_in_chunks": len(sensors.get(day, {}))}
        yield _evaluation(
            "daily_aggregates", "daily_aggregates_pass_quality_suite", day,
            outcomes[day] if read else _no_record(day), seen, blocking=True,
        )  # fmt: skip
    yield dg.Output(None)
