"""``training_set[week]``: label events joined point-in-time to the features known at each cut-off."""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from ml_platform.defs.features.assets import feature_views
from ml_platform.defs.ingest.assets import TRANSIENT_RETRIES, raw_labels
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.metadata import object_path, object_uri, table
from ml_platform.defs.partitions import weekly
from ml_platform.defs.resources import FeastResource, IngestResource, LakeResource
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.store import write_frame
from ml_platform.lib.training_set import BuiltTrainingSet, build_training_frame
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


@dataclass(frozen=True)
class _Classes:
    """How many rows of each class a training set holds."""

    rows: int
    positives: int
    negatives: int

    @classmethod
    def count(cls, frame: "pd.DataFrame") -> "_Classes":
        from ml_platform.lib import training

        positives = int(frame[training.TARGET].sum())
        return cls(len(frame), positives, len(frame) - positives)

    def big_enough(self, config: TrainingSetConfig) -> bool:
        return (
            self.rows >= config.min_rows
            and self.positives >= config.min_positives
            and self.negatives >= config.min_negatives
        )


def _input_versions(context: dg.AssetExecutionContext, built: BuiltTrainingSet) -> dict:
    """The data versions of the partitions the set was built from, as the instance records them."""
    import pandas as pd

    days = pd.date_range(built.first_day, built.last_day, freq="D").strftime("%Y-%m-%d").tolist()
    return {
        "daily_aggregates": latest_versions(context.instance, daily_aggregates.key, days),
        "raw_labels": latest_versions(context.instance, raw_labels.key, None),
    }


def _manifest(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    feast: FeastResource,
    feature_store,
    built: BuiltTrainingSet,
    classes: _Classes,
    week_end: datetime,
) -> dict:
    """What the set was built from and how, minus where it was written and when: the record
    ``ml-platform reproduce`` rebuilds the set from and checks the environment against."""
    from ml_platform.lib import training

    return {
        "week": context.partition_key,
        "window": {
            "first_day": built.first_day.isoformat(),
            "last_day": built.last_day.isoformat(),
        },
        "labels_known_before": week_end.isoformat(),
        "horizon_days": config.horizon_days,
        "target": training.TARGET,
        "rows": classes.rows,
        "positives": classes.positives,
        "negatives": classes.negatives,
        "feature_service": fs.FEATURE_SERVICE,
        "features": built.views,
        "registry_hash": fs.registry_hash(feature_store),
        "offline_store": feast.profile().offline_type,
        "code_versions": {
            "training_set": context.assets_def.code_versions_by_key.get(context.asset_key),
            "feature_views": feature_views.code_versions_by_key.get(feature_views.key),
        },
        "inputs": _input_versions(context, built),
        "leakage_guard": {
            "values_blanked": built.blanked,
            "leaks_after_guard": built.leaks,
            "require_created_before_cutoff": config.require_created_before_cutoff,
        },
    }


def _training_set_metadata(
    built: BuiltTrainingSet, classes: _Classes, manifest: dict, accepted: bool, started: float
) -> dict:
    frame = built.frame
    feature_names = [n for cols in built.views.values() for n in cols]
    return {
        "dagster/row_count": len(frame),
        "positives": classes.positives,
        "negatives": classes.negatives,
        "sensors": int(frame["sensor_id"].nunique()),
        "first_day": built.first_day.isoformat(),
        "last_day": built.last_day.isoformat(),
        "label_parts_read": len(built.label_keys),
        "registry_hash": manifest["registry_hash"],
        "accepted": accepted,
        "preview": table(frame.head(5).to_dict("records"), columns=8),
        "sensor_days_without_features": int(frame[feature_names].isna().all(axis=1).sum()),
        "point_in_time_join_s": round(built.join_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _leakage_check(built: BuiltTrainingSet) -> dg.AssetCheckResult:
    leaking = any(built.leaks.values())
    return dg.AssetCheckResult(
        check_name=LEAKAGE_CHECK,
        # Values left from the future fail the run (blocking). Values the guard had to blank
        # mean the join itself misbehaved: the set is clean, but it is flagged.
        passed=not leaking and not any(built.blanked.values()),
        severity=dg.AssetCheckSeverity.ERROR if leaking else dg.AssetCheckSeverity.WARN,
        metadata={
            "leaking_rows": dg.MetadataValue.json(built.leaks),
            "values_blanked_by_guard": dg.MetadataValue.json(built.blanked),
            # Informational unless require_created_before_cutoff: backfilled history is always
            # created after its event time.
            "rows_using_values_created_after_cutoff": dg.MetadataValue.json(built.created_late),
        },
    )


def _size_check(
    classes: _Classes, big_enough: bool, config: TrainingSetConfig
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=SIZE_CHECK,
        passed=big_enough,
        metadata={
            "rows": classes.rows,
            "positives": classes.positives,
            "negatives": classes.negatives,
            "min_rows": config.min_rows,
        },
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
    code_version=files_version(
        __file__, *(Path(fs.__file__).with_name(m) for m in ("training.py", "training_set.py"))
    ),
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
    started = time.perf_counter()
    week = context.partition_key
    week_end = context.partition_time_window.end.astimezone(UTC)
    store, feature_store = lake.store(), feast.store()
    names = fs.feature_names(ingest.contract("readings").columns)
    built = build_training_frame(store, feature_store, names, week_end, config)
    classes = _Classes.count(built.frame)
    big_enough = classes.big_enough(config)
    # A set that fails a blocking check is kept for inspection beside the week's last good
    # set, never in its place: failure_model always reads a set that passed.
    accepted = big_enough and not any(built.leaks.values())
    kept_for = None if accepted else context.run.run_id
    set_key = paths.training_set_object(week, kept_for)
    write_frame(store, built.frame, set_key)
    manifest = _manifest(context, config, feast, feature_store, built, classes, week_end)
    manifest.update(
        training_set=store.uri(set_key),
        dagster_run_id=context.run.run_id,
        built_at=datetime.now(UTC).isoformat(),
    )
    manifest_key = paths.training_manifest_object(week, kept_for)
    store.put_bytes(json.dumps(manifest, indent=2).encode(), manifest_key)
    return dg.MaterializeResult(
        metadata={
            **_training_set_metadata(built, classes, manifest, accepted, started),
            # The set is the object the asset writes; its manifest is written beside it.
            **object_uri(store, set_key),
            "manifest": object_path(store, manifest_key),
        },
        check_results=[_leakage_check(built), _size_check(classes, big_enough, config)],
    )
