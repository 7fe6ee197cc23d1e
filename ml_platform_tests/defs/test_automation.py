"""Declarative Automation of the real definitions, evaluated against an instance (no daemon):
which assets a tick requests after given materializations."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from ml_platform.definitions import defs


def tick(instance, asset: str, cursor=None):
    return dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(asset), cursor=cursor
    )


def materialize(instance, asset: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


def test_a_new_version_of_an_older_week_is_judged_while_newer_weeks_are_untrained(instance):
    first = tick(instance, "champion_model")
    assert first.total_requested == 0
    # A first model or a retraining of an old week; every later week has no model (yet).
    materialize(instance, "failure_model", "2024-01-08")
    assert tick(instance, "champion_model", first.cursor).total_requested == 1


def test_predictions_follow_their_parents_without_the_clusters_of_an_untrained_week(instance):
    today = datetime.now(UTC).date().isoformat()
    first = tick(instance, "daily_predictions")
    materialize(instance, "champion_model")
    materialize(instance, "feature_drift", today)
    # online_features of the day is missing: a required parent holds predictions back.
    held = tick(instance, "daily_predictions", first.cursor)
    assert held.total_requested == 0
    materialize(instance, "online_features", today)
    # sensor_clusters has no partition at all: optional, so predictions go ahead.
    go = tick(instance, "daily_predictions", held.cursor)
    assert go.get_requested_partitions(dg.AssetKey("daily_predictions")) == {today}
