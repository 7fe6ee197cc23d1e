"""One week's training set from the lake and Feast: labels known before the week's end,
sensor-days of the look-back window, Feast's point-in-time join at each cut-off, then the leakage
guard. Shared by the ``training_set`` asset and ``ml-platform reproduce``.

No Dagster here, and nothing heavy at import time: the code location imports this module, so
Feast and pandas load only when a set is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.store import read_frame

if TYPE_CHECKING:
    import pandas as pd

    from ml_platform.lib.store import ObjectStore


class TrainingSetSettings(Protocol):
    """How sensor-days are labelled (the asset's ``TrainingSetConfig`` is one)."""

    horizon_days: float
    lookback_days: int
    require_created_before_cutoff: bool


@dataclass
class BuiltTrainingSet:
    """What :func:`build_training_frame` returns: the set and what the asset reports about it."""

    frame: pd.DataFrame
    first_day: date
    last_day: date
    label_keys: list[str]
    views: dict[str, list[str]]  # feature names of each view
    blanked: dict[str, int]  # values the leakage guard blanked, per view
    leaks: dict[str, int]  # rows still using future values after the guard, per view
    created_late: dict[str, int]  # rows using values created after their cut-off, per view
    join_seconds: float


def _label_keys(store: ObjectStore, until: datetime) -> list[str]:
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


def labelable_window(week_end: datetime, config: TrainingSetSettings) -> tuple[date, date]:
    """The first and last sensor-day of the set: the last is the last day whose target is known
    by ``week_end`` (its cut-off plus the horizon), the first ``lookback_days`` before it."""
    horizon = timedelta(days=config.horizon_days)
    last_day: date = (week_end - horizon - timedelta(days=1) + timedelta(microseconds=1)).date()
    return last_day - timedelta(days=config.lookback_days - 1), last_day


def _join_features(feature_store, entities: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """``entities`` with Feast's point-in-time features at each cut-off, and the join's seconds."""
    from ml_platform.lib import training

    joined_at = time.perf_counter()
    frame = entities.join(
        fs.features_at(
            feature_store,
            entities[["sensor_id"]].assign(event_timestamp=training.join_times(entities)),
        )
    )
    return frame, time.perf_counter() - joined_at


def _leak_counts(
    frame: pd.DataFrame, candidates: pd.DataFrame, views: dict[str, list[str]], strict: bool
) -> tuple[dict[str, int], dict[str, int]]:
    """Per view: rows still using future values (created too, when ``strict``), and rows using
    values created after their cut-off that ``strict`` did not already count."""
    from ml_platform.lib import training

    leaks = {
        view: int(training.find_leaks(frame, candidates, cols, created_too=strict).sum())
        for view, cols in views.items()
    }
    created_late = {
        view: int(training.find_leaks(frame, candidates, cols, created_too=True).sum())
        - leaks[view]
        for view, cols in views.items()
    }
    return leaks, created_late


def build_training_frame(
    store: ObjectStore,
    feature_store,
    names: dict[str, list[str]],
    week_end: datetime,
    config: TrainingSetSettings,
) -> BuiltTrainingSet:
    """The training set of the week ending at ``week_end``, as ``training_set`` builds it (and
    ``ml-platform reproduce`` rebuilds it): labels known before ``week_end``, sensor-days of the
    look-back window, Feast's point-in-time join at each cut-off, then the leakage guard."""
    from ml_platform.lib import training

    horizon = timedelta(days=config.horizon_days)
    first_day, last_day = labelable_window(week_end, config)
    label_keys = _label_keys(store, week_end)
    failures = training.failure_events(read_frame(store, label_keys), until=week_end)
    oldest = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC) - timedelta(
        days=max(fs.TTL_DAYS.values())
    )
    candidates = _offline_rows(feature_store, names, oldest, week_end)
    entities = training.add_target(
        training.sensor_days(candidates, first_day, last_day), failures, horizon
    )
    frame, join_seconds = _join_features(feature_store, entities)
    views = {view: names[view] for view in fs.VIEWS}
    strict = config.require_created_before_cutoff
    frame, blanked = training.guard(frame, candidates, views, created_too=strict)
    leaks, created_late = _leak_counts(frame, candidates, views, strict)
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
