"""``training_set[week]``: label events joined point-in-time to the features known at each cut-off."""

import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from ml_platform.defs.features.assets import feature_views
from ml_platform.defs.ingest.assets import TRANSIENT_RETRIES, raw_labels
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.partitions import weekly
from ml_platform.defs.resources import FeastResource, IngestResource, LakeResource
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.store import read_frame, write_frame
from ml_platform.lib.tables import markdown_table
from ml_platform.lib.versions import files_version

if TYPE_CHECKING:
    import pandas as pd

LEAKAGE_CHECK = "training_set_is_point_in_time_correct"
SIZE_CHECK = "training_set_has_both_classes_and_enough_rows"


class TrainingSetConfig(dg.Config):
    """How sensor-days are labelled and which of them a week's training set holds."""

    horizon_days: float = 1.0  # a sensor-day is positive when a failure follows within this
    lookback_days: int = 365  # sensor-days before the week's last labelable day
    min_rows: int = 50
    min_positives: int = 1
    min_negatives: int = 1
    # Also treat feature rows *created* after a label's cut-off as leaks. Off by default: history
    # that is backfilled is created after its event time by construction; turn it on to train
    # only on what the live system had actually computed at each cut-off.
    require_created_before_cutoff: bool = False


def latest_versions(
    instance: dg.DagsterInstance, asset: dg.AssetKey, partitions: list[str] | None
) -> dict[str, str]:
    """Latest data version of each materialized partition of ``asset`` (all when None)."""
    found: dict[str, str] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=partitions),
            limit=1000,
            cursor=cursor,
            ascending=False,
        )
        for record in page.records:
            materialization = record.asset_materialization
            if materialization and materialization.partition not in found:
                found[materialization.partition] = materialization.tags.get(
                    "dagster/data_version", ""
                )
        if not page.has_more:
            return dict(sorted(found.items()))
        cursor = page.cursor


def _label_keys(store, until: datetime) -> list[str]:
    """Bronze label parts of the days up to ``until``."""
    last = until.date().isoformat()
    return [
        o.key
        for o in store.list(f"{paths.BRONZE}labels/")
        if (day := paths.bronze_day(o.key)) and day <= last
    ]


def _offline_rows(feature_store, names: dict[str, list[str]], start: datetime, end: datetime):
    """Every gold row the offline store holds with an event time in ``[start, end)``: the
    candidates the leakage guard traces feature values back to."""
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    from ml_platform.lib import training

    source = feature_store.get_feature_view(fs.DAILY_STATS_VIEW).batch_source
    job = get_offline_store_from_config(
        feature_store.config.offline_store
    ).pull_all_from_table_or_query(
        config=feature_store.config,
        data_source=source,
        join_key_columns=["sensor_id"],
        feature_name_columns=[n for view in fs.VIEWS for n in names[view]],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
        start_date=start,
        end_date=end,
    )
    rows = job.to_df()
    rows["event_timestamp"] = training.utc(rows["event_timestamp"])
    rows["created_timestamp"] = training.utc(rows["created_timestamp"])
    return rows[rows["event_timestamp"] < end]


@dataclass
class BuiltTrainingSet:
    """What :func:`build_training_frame` returns: the set and what the asset reports about it."""

    frame: "pd.DataFrame"
    first_day: date
    last_day: date
    label_keys: list[str]
    views: dict[str, list[str]]  # feature names of each view
    blanked: dict[str, int]  # values the leakage guard blanked, per view
    leaks: dict[str, int]  # rows still using future values after the guard, per view
    created_late: dict[str, int]  # rows using values created after their cut-off, per view
    join_seconds: float


def build_training_frame(
    store, feature_store, names: dict[str, list[str]], week_end: datetime, config: TrainingSetConfig
) -> BuiltTrainingSet:
    """The training set of the week ending at ``week_end``, as ``training_set`` builds it (and
    ``ml-platform reproduce`` rebuilds it): labels known before ``week_end``, sensor-days of the
    look-back window, Feast's point-in-time join at each cut-off, then the leakage guard."""
    # pandas-heavy: imported here so that loading the code location stays light.
    from ml_platform.lib import training

    horizon = timedelta(days=config.horizon_days)
    # The last day whose target is known by the end of the week: its cut-off plus the horizon.
    last_day: date = (week_end - horizon - timedelta(days=1) + timedelta(microseconds=1)).date()
    first_day = last_day - timedelta(days=config.lookback_days - 1)

    label_keys = _label_keys(store, week_end)
    failures = training.failure_events(read_frame(store, label_keys), until=week_end)
    oldest = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC) - timedelta(
        days=max(fs.TTL_DAYS.values())
    )
    candidates = _offline_rows(feature_store, names, oldest, week_end)
    entities = training.add_target(
        training.sensor_days(candidates, first_day, last_day), failures, horizon
    )
    joined_at = time.perf_counter()
    frame = entities.join(
        fs.features_at(
            feature_store,
            entities[["sensor_id"]].assign(event_timestamp=training.join_times(entities)),
        )
    )
    join_seconds = time.perf_counter() - joined_at

    views = {view: names[view] for view in fs.VIEWS}
    strict = config.require_created_before_cutoff
    frame, blanked = training.guard(frame, candidates, views, created_too=strict)
    leaks = {
        view: int(training.find_leaks(frame, candidates, cols, created_too=strict).sum())
        for view, cols in views.items()
    }
    created_late = {
        view: int(training.find_leaks(frame, candidates, cols, created_too=True).sum())
        - leaks[view]
        for view, cols in views.items()
    }
    return BuiltTrainingSet(
        frame,
        first_day,
        last_day,
        label_keys,
        views,
        blanked,
        leaks,
        created_late,
        join_seconds,
    )


@dg.asset(
    partitions_def=weekly,
    deps=[
        dg.AssetDep(raw_labels, partition_mapping=dg.AllPartitionMapping()),
        # The year of days before the week (the default look-back) feeds its sensor-days.
        dg.AssetDep(
            daily_aggregates,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-52, allow_nonexistent_upstream_partitions=True
            ),
        ),
        feature_views,
    ],
    group_name="ml",
    kinds={"feast", "pandas", "parquet"},
    owners=["team:ml"],
    code_version=files_version(__file__, Path(fs.__file__).with_name("training.py")),
    retry_policy=TRANSIENT_RETRIES,
    check_specs=[
        dg.AssetCheckSpec(
            LEAKAGE_CHECK,
            asset="training_set",
            blocking=True,
            description="No feature value used for a label comes from a feature row whose event "
            "timestamp is after the label's cut-off (nor created after it, when configured).",
        ),
        dg.AssetCheckSpec(
            SIZE_CHECK,
            asset="training_set",
            blocking=True,
            description="The set has at least min_rows rows and both classes.",
        ),
    ],
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    feast: FeastResource,
    ingest: IngestResource,
) -> dg.MaterializeResult:
    """One week's training set: a row per sensor-day, its target, and the feature values Feast's
    point-in-time join returned for the day's cut-off; a manifest of its inputs beside it."""
    import pandas as pd

    from ml_platform.lib import training

    started = time.perf_counter()
    week = context.partition_key
    week_end = context.partition_time_window.end.astimezone(UTC)
    store, feature_store = lake.store(), feast.store()
    names = fs.feature_names(ingest.contract("readings").columns)
    built = build_training_frame(store, feature_store, names, week_end, config)
    frame, views, leaks, blanked = built.frame, built.views, built.leaks, built.blanked
    first_day, last_day = built.first_day, built.last_day
    strict = config.require_created_before_cutoff

    positives = int(frame[training.TARGET].sum())
    negatives = len(frame) - positives
    big_enough = (
        len(frame) >= config.min_rows
        and positives >= config.min_positives
        and negatives >= config.min_negatives
    )
    # A set that fails a blocking check is kept for inspection beside the week's last good
    # set, never in its place: failure_model always reads a set that passed.
    accepted = big_enough and not any(leaks.values())
    set_key = paths.training_set_object(week, None if accepted else context.run.run_id)
    write_frame(store, frame, set_key)

    days = pd.date_range(first_day, last_day, freq="D").strftime("%Y-%m-%d").tolist()
    manifest = {
        "week": week,
        "window": {"first_day": first_day.isoformat(), "last_day": last_day.isoformat()},
        "labels_known_before": week_end.isoformat(),
        "horizon_days": config.horizon_days,
        "target": training.TARGET,
        "rows": len(frame),
        "positives": positives,
        "negatives": negatives,
        "feature_service": fs.FEATURE_SERVICE,
        "features": views,
        "registry_hash": fs.registry_hash(feature_store),
        "offline_store": feast.profile().offline_type,
        "code_versions": {
            "training_set": context.assets_def.code_versions_by_key.get(context.asset_key),
            "feature_views": feature_views.code_versions_by_key.get(feature_views.key),
        },
        "inputs": {
            "daily_aggregates": latest_versions(context.instance, daily_aggregates.key, days),
            "raw_labels": latest_versions(context.instance, raw_labels.key, None),
        },
        "leakage_guard": {
            "values_blanked": blanked,
            "leaks_after_guard": leaks,
            "require_created_before_cutoff": strict,
        },
        "training_set": store.uri(set_key),
        "dagster_run_id": context.run.run_id,
        "built_at": datetime.now(UTC).isoformat(),
    }
    manifest_key = paths.training_manifest_object(week, None if accepted else context.run.run_id)
    store.put_bytes(json.dumps(manifest, indent=2).encode(), manifest_key)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "positives": positives,
            "negatives": negatives,
            "sensors": int(frame["sensor_id"].nunique()),
            "first_day": first_day.isoformat(),
            "last_day": last_day.isoformat(),
            "label_parts_read": len(built.label_keys),
            "registry_hash": manifest["registry_hash"],
            "training_set": store.uri(set_key),
            "accepted": accepted,
            "manifest": store.uri(manifest_key),
            "preview": dg.MetadataValue.md(
                markdown_table(frame.head(5).to_dict("records"), columns=8)
            ),
            "sensor_days_without_features": int(
                frame[[n for cols in views.values() for n in cols]].isna().all(axis=1).sum()
            ),
            "point_in_time_join_s": round(built.join_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=LEAKAGE_CHECK,
                # Values left from the future fail the run (blocking). Values the guard had to
                # blank mean the join itself misbehaved: the set is clean, but it is flagged.
                passed=not any(leaks.values()) and not any(blanked.values()),
                severity=dg.AssetCheckSeverity.ERROR
                if any(leaks.values())
                else dg.AssetCheckSeverity.WARN,
                metadata={
                    "leaking_rows": dg.MetadataValue.json(leaks),
                    "values_blanked_by_guard": dg.MetadataValue.json(blanked),
                    # Informational unless require_created_before_cutoff: backfilled history
                    # is always created after its event time.
                    "rows_using_values_created_after_cutoff": dg.MetadataValue.json(
                        built.created_late
                    ),
                },
            ),
            dg.AssetCheckResult(
                check_name=SIZE_CHECK,
                passed=big_enough,
                metadata={
                    "rows": len(frame),
                    "positives": positives,
                    "negatives": negatives,
                    "min_rows": config.min_rows,
                },
            ),
        ],
    )
