"""``feature_views`` (Feast apply) and ``online_features[day]`` (one day into the online store)."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from ml_platform.defs.automation import eager_after_parents
from ml_platform.defs.ingest.assets import TRANSIENT_RETRIES
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.metadata import row_counts, table
from ml_platform.defs.partitions import daily
from ml_platform.defs.resources import FeastResource, IngestResource, LakeResource
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.store import read_prefixes
from ml_platform.settings import settings

_settings = settings()
#: Below this share of non-missing values a feature view's day is reported (warning): the
#: trailing-week view is sparse for a sensor's first days, which is expected but worth seeing.
COMPLETENESS_WARN_BELOW = 0.95


@dg.asset(
    group_name="features",
    kinds={"feast"},
    owners=["team:data-platform"],
    # Follows the definitions: editing feature_repo/ (or the readings contract the features are
    # generated from) changes this version and marks the asset stale.
    code_version=fs.definitions_version(
        Path(_settings.feast_repo),
        _settings.readings_contract or None,
        fs.profile_yaml(Path(_settings.feast_repo), _settings.feast_yaml or None),
    ),
    # Applied on a fresh install (on_missing() would skip an asset already missing when the
    # sensor first looks) and again whenever the definitions change; a failed apply waits for a
    # change instead of being retried every tick.
    automation_condition=(
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.execution_failed()
    )
    | dg.AutomationCondition.code_version_changed(),
)
def feature_views(context: dg.AssetExecutionContext, feast: FeastResource) -> dg.MaterializeResult:
    """The Feast registry holds the repo's entity, feature views and feature service.

    Applies only when ``feast plan`` would change something, so re-materializing unchanged
    definitions leaves the registry (and the online tables) untouched.
    """
    fs.import_feast_unchecked()
    from feast.diff.property_diff import TransitionType
    from feast.feature_view import DUMMY_ENTITY_NAME
    from feast.repo_operations import apply_total_with_repo_instance

    store = feast.store()
    project = store.config.project
    repo = fs.load_repo_contents(Path(feast.repo_path), project)
    registry_diff, infra_diff, _ = store.plan(repo)
    changes = [
        f"{d.transition_type.name.lower()} {d.feast_object_type.value} {d.name}"
        for d in registry_diff.feast_object_diffs
        # Feast keeps a placeholder entity the repo never defines; `feast plan` hides it too.
        if d.transition_type != TransitionType.UNCHANGED and d.name != DUMMY_ENTITY_NAME
    ]
    infra = [
        f"{d.transition_type.name.lower()} {d.infra_object_type} {d.name}"
        for d in infra_diff.infra_object_diffs
        if d.transition_type != TransitionType.UNCHANGED
    ]
    if changes or infra:
        # What `feast apply` runs after parsing the repo: plan, then apply the diffs (this also
        # records the online tables in the registry, so the next plan sees no infra change).
        # Sources are not probed: the gold zone may still be empty on a fresh install.
        apply_total_with_repo_instance(
            store, project, store.registry, repo, skip_source_validation=True
        )
        context.log.info(f"applied: {changes + infra}")
    else:
        context.log.info("registry already matches the definitions: nothing applied")
    views = [
        {
            "feature_view": v.name,
            "features": len(v.features),
            "ttl_days": v.ttl.total_seconds() / 86400 if v.ttl else None,
            "online": v.online,
            "source": getattr(v.batch_source, "path", None) or v.batch_source.name,
        }
        for v in sorted(store.list_feature_views(), key=lambda v: v.name)
    ]
    profile = feast.profile()
    return dg.MaterializeResult(
        metadata={
            "applied": bool(changes or infra),
            "changes": dg.MetadataValue.json(changes + infra),
            "registry_hash": fs.registry_hash(store),
            "feature_views": table(views),
            "feature_service": fs.FEATURE_SERVICE,
            "profile": str(profile.yaml_path),
            "offline_store": profile.offline_type,
        }
    )


def _days_table(per_day: dict[str, dict]) -> dg.TableMetadataValue:
    """A row per day of the run: its sensors, per view the sensors written and those whose newer
    value was kept online, and what the read-back found wrong (empty for a day without rows)."""
    rows = []
    for day, d in per_day.items():
        row = {"day": day, "sensors": d["sensors"]}
        for figure in ("written", "kept_newer_online"):
            row |= {f"{figure}_{view}": d.get(figure, {}).get(view) for view in fs.VIEWS}
        row |= {k: d.get(k) for k in ("sensors_without_answer", "values_not_as_written")}
        rows.append(row)
    return table(rows)


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[daily_aggregates, feature_views],
    group_name="features",
    kinds={"feast", "sqlite", "postgres"},
    owners=["team:data-platform"],
    retry_policy=TRANSIENT_RETRIES,
    # Every day whose aggregates change, not only the latest one (eager's default): a late file or
    # a backfill re-publishes its days; the write keeps newer online values, so this is safe.
    automation_condition=eager_after_parents(),
    # Yesterday's features are online by 07:00 UTC (an hour after the aggregates are due).
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="0 7 * * *", lower_bound_delta=timedelta(hours=24)
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "online_store_answers_for_every_sensor",
            asset="online_features",
            description="After the write, the online store returns the day's values for every "
            "sensor of the day (newer values kept where a later day is already online).",
        ),
        *[
            dg.AssetCheckSpec(
                f"{view}_is_complete",
                asset="online_features",
                description=f"At least {COMPLETENESS_WARN_BELOW:.0%} of the {view} values of "
                "the day are present (warning).",
            )
            for view in fs.VIEWS
        ],
    ],
)
def online_features(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    feast: FeastResource,
    ingest: IngestResource,
) -> dg.MaterializeResult:
    """The gold rows of a range of days written to the Feast online store, every sensor of
    every day answered.

    The range is written through Feast's online write path (what ``feast materialize`` calls per
    row batch), reading the days' gold files directly instead of scanning the whole offline
    store. Each sensor's newest row of the range is written once; an older day (a backfill)
    never replaces a newer value already online, and the same range writes the same values.
    With the PostgreSQL offline store, the days' rows are first published to its table
    (replacing those days) in one transaction, so training sees them too.
    """
    from ml_platform.lib.training import completeness

    started = time.perf_counter()
    store, feature_store, profile = lake.store(), feast.store(), feast.profile()
    names = fs.feature_names(ingest.contract("readings").columns)
    days = sorted(context.partition_keys)
    rows = read_prefixes(store, [paths.aggregates_day_prefix(day) for day in days])
    if profile.offline_type == "postgres":
        fs.publish_offline_days(profile, days, rows)
    reports = fs.publish_online_days(feature_store, rows, names) if len(rows) else {}
    per_day: dict[str, dict] = {}
    failing: list[str] = []
    sparse: dict[str, list[str]] = {view: [] for view in fs.VIEWS}
    for day in days:
        if day not in reports:
            per_day[day] = {"sensors": 0}
            context.log.warning(f"{day}: no gold rows; nothing written")
            continue
        day_rows = rows[rows["day"] == day]
        per_day[day] = {"sensors": len(day_rows), **reports[day]}
        if reports[day]["sensors_without_answer"] or reports[day]["values_not_as_written"]:
            failing.append(day)
        for view in fs.VIEWS:
            share = completeness(day_rows, names[view])
            if share < COMPLETENESS_WARN_BELOW:
                sparse[view].append(f"{day}: {share:.1%}")
    context.log.info(f"{len(reports)} days written, {len(failing)} failing: {failing[:10]}")
    newest = rows[rows["day"] == max(reports)] if reports else rows
    preview = newest.head(5)[["sensor_id", *names[fs.DAILY_STATS_VIEW][:5]]].to_dict("records")
    return dg.MaterializeResult(
        metadata={
            "days": _days_table(per_day),
            "sensors": sum(d["sensors"] for d in per_day.values()),
            **row_counts({day: d["sensors"] for day, d in per_day.items()}),
            "online_store": str(feature_store.config.online_store.type),
            "preview": table(preview),
            "written_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="online_store_answers_for_every_sensor",
                passed=not failing,
                metadata={
                    "days_checked": len(per_day),
                    "days_failing": dg.MetadataValue.json(failing),
                },
            ),
            *[
                dg.AssetCheckResult(
                    check_name=f"{view}_is_complete",
                    passed=not sparse[view],
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "threshold": COMPLETENESS_WARN_BELOW,
                        "days_below": dg.MetadataValue.json(sparse[view]),
                    },
                )
                for view in fs.VIEWS
            ],
        ],
    )
