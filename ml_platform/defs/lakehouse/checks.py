"""Great Expectations suites on every day partition of the lakehouse assets.

Each check evaluates every day of the run's partition range and records one evaluation per day
(``partition=day``), so the UI's checks tab shows a result for every partition even when a
backfill ran a range in one run. A blocking failure stops the downstream step of that run and
names the day, the failed expectations and their unexpected counts.
"""

import tempfile
from datetime import date
from pathlib import Path

import dagster as dg

from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks
from ml_platform.defs.partitions import daily
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import distinct_keys, read_frame
from ml_platform.lib.quality import Expect, SuiteOutcome, run_suite


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


def _chunk_frame(store, day: str, tmp: Path):
    keys = [o.key for o in store.list(paths.chunks_day_prefix(day))]
    frame = read_frame(store.fetch(keys, tmp))
    if len(frame):
        frame["on_partition_day"] = frame["timestamp"].dt.date == date.fromisoformat(day)
    return frame, len(keys)


@dg.asset_check(
    asset=sensor_chunks,
    blocking=True,
    partitions_def=daily,
    description="GX: no null keys, unique (sensor_id, timestamp), rows inside their day, "
    "row count = distinct keys of the day's bronze parts.",
)
def sensor_chunks_pass_quality_suite(context: dg.AssetCheckExecutionContext, lake: LakeResource):
    store = lake.store()
    for day in context.partition_keys:
        with tempfile.TemporaryDirectory(prefix="check-") as tmp:
            frame, objects = _chunk_frame(store, day, Path(tmp, "chunks"))
            bronze = [o.key for o in store.list(paths.bronze_day_prefix("readings", day))]
            Path(tmp, "bronze").mkdir()
            expected = distinct_keys(store.fetch(bronze, Path(tmp, "bronze")))
        if not len(frame):
            outcome = SuiteOutcome(success=expected == 0, evaluated=1, failed=[] if expected == 0 else [
                {"expectation": "expect_table_row_count_to_equal", "observed_value": 0,
                 "unexpected_count": expected}])  # fmt: skip
        else:
            outcome = run_suite(
                frame,
                [
                    Expect("ExpectColumnValuesToNotBeNull", {"column": "timestamp"}),
                    Expect("ExpectColumnValuesToNotBeNull", {"column": "sensor_id"}),
                    Expect(
                        "ExpectCompoundColumnsToBeUnique",
                        {"column_list": ["sensor_id", "timestamp"]},
                    ),
                    Expect(
                        "ExpectColumnValuesToBeInSet",
                        {"column": "on_partition_day", "value_set": [True]},
                    ),
                    Expect("ExpectTableRowCountToEqual", {"value": expected}),
                ],
                name="sensor_chunks",
            )
        yield _evaluation(
            "sensor_chunks", "sensor_chunks_pass_quality_suite", day, outcome,
            {"rows": len(frame), "expected_rows": expected, "sensor_objects": objects},
            blocking=True,
        )  # fmt: skip
    yield dg.Output(None)


@dg.asset_check(
    asset=sensor_chunks,
    partitions_def=daily,
    description="GX (warn): measurement values inside the contract's plausible ranges.",
)
def sensor_chunks_values_within_contract_ranges(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, ingest: IngestResource
):
    store = lake.store()
    ranged = [
        c for c in ingest.contract("readings").columns if c.min is not None or c.max is not None
    ]
    for day in context.partition_keys:
        with tempfile.TemporaryDirectory(prefix="check-") as tmp:
            frame, _ = _chunk_frame(store, day, Path(tmp))
        expectations = [
            Expect("ExpectColumnValuesToBeBetween",
                   {"column": c.name, "min_value": c.min, "max_value": c.max})
            for c in ranged if c.name in frame
        ]  # fmt: skip
        outcome = (
            run_suite(frame, expectations, name="sensor_chunk_ranges")
            if len(frame) and expectations
            else SuiteOutcome(success=True, evaluated=0, failed=[])
        )
        yield _evaluation(
            "sensor_chunks", "sensor_chunks_values_within_contract_ranges", day, outcome,
            {"rows": len(frame)}, blocking=False,
        )  # fmt: skip
    yield dg.Output(None)


@dg.asset_check(
    asset=daily_aggregates,
    blocking=True,
    partitions_def=daily,
    description="GX: exactly one row per sensor of the day's chunks, required features present, "
    "row counts equal to the chunks'.",
)
def daily_aggregates_pass_quality_suite(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, ingest: IngestResource
):
    store = lake.store()
    measurements = [c.name for c in ingest.contract("readings").columns]
    for day in context.partition_keys:
        with tempfile.TemporaryDirectory(prefix="check-") as tmp:
            chunks, _ = _chunk_frame(store, day, Path(tmp, "chunks"))
            key = paths.aggregates_object(day)
            Path(tmp, "gold").mkdir()
            frame = read_frame(store.fetch([key], Path(tmp, "gold")) if store.exists(key) else [])
        sensors = chunks.groupby("sensor_id").size() if len(chunks) else None
        if not len(frame):
            ok = sensors is None
            outcome = SuiteOutcome(success=ok, evaluated=1, failed=[] if ok else [
                {"expectation": "expect_table_row_count_to_equal", "observed_value": 0,
                 "unexpected_count": len(sensors)}])  # fmt: skip
        else:
            frame["rows_in_chunks"] = frame["sensor_id"].map(sensors).fillna(-1).astype("int64")
            required = ["sensor_id", "rows", "event_timestamp", "created_timestamp"]
            required += [f"{m}_count" for m in measurements] + [
                f"{m}_missing_ratio" for m in measurements
            ]
            outcome = run_suite(
                frame,
                [
                    Expect("ExpectColumnValuesToBeUnique", {"column": "sensor_id"}),
                    Expect("ExpectTableRowCountToEqual", {"value": 0 if sensors is None else len(sensors)}),
                    *(Expect("ExpectColumnValuesToNotBeNull", {"column": c}) for c in required),
                    Expect("ExpectColumnPairValuesToBeEqual",
                           {"column_A": "rows", "column_B": "rows_in_chunks"}),
                ],
                name="daily_aggregates",
            )  # fmt: skip
        yield _evaluation(
            "daily_aggregates", "daily_aggregates_pass_quality_suite", day, outcome,
            {"rows": len(frame), "sensors_in_chunks": 0 if sensors is None else len(sensors)},
            blocking=True,
        )  # fmt: skip
    yield dg.Output(None)
