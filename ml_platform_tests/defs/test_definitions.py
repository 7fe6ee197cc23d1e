"""The code location loads, has the expected graph, and stays light."""

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from ml_platform.definitions import defs, linked_to_source
from ml_platform.defs.partitions import landing_days
from ml_platform.defs.resources import settings

#: Dagster's own named building blocks, shown by name: `handled` (requested or updated since),
#: `newly_missing`, `any_deps_updated`, `in_progress` (a run or backfill), `any_deps_in_progress`.
OPAQUE = {"in_progress", "handled", "newly_missing", "any_deps_updated", "any_deps_in_progress"}


def render(condition: dg.AutomationCondition) -> str:
    """A condition tree as text: AND/OR/NOT/SINCE as & | ~ SINCE, other operators as
    ``NAME[children]``, a labelled sub-condition as ``label=...`` (OPAQUE ones by label only)."""
    label = condition.get_label()
    if label in OPAQUE:
        return label
    kids = [render(child) for child in condition.children]
    name = condition.name
    if name == "AND":
        body = "(" + " & ".join(kids) + ")"
    elif name == "OR":
        body = "(" + " | ".join(kids) + ")"
    elif name == "NOT":
        body = "~" + kids[0]
    elif name == "SINCE":
        body = f"({kids[0]} SINCE {kids[1]})"
    else:
        body = f"{name}[{', '.join(kids)}]" if kids else name
    return f"{label}={body}" if label else body


def _eager(missing_parents: str = "ANY_DEPS_MATCH") -> str:
    """Dagster's eager() without its latest-time-window clause: every partition, not only the
    newest, once a parent updates (or the partition goes missing), no parent missing, nothing
    in progress."""
    return (
        "eager=(((newly_missing | any_deps_updated) SINCE handled) & ~any_deps_missing="
        f"{missing_parents}[(missing & ~will_be_requested)] & ~any_deps_in_progress "
        "& ~in_progress)"
    )


#: No parent requested this tick, running, or failed in its latest run.
_SETTLED = (
    "~ANY_DEPS_MATCH[will_be_requested] & ~any_deps_in_progress & ~ANY_DEPS_MATCH[execution_failed]"
)
#: A missing parent counts unless it is sensor_clusters.
_IGNORING_CLUSTERS = 'ANY_DEPS_MATCH(ignore_selection=key:"sensor_clusters")'
#: Today and the day just ended.
_TWO_DAYS = "in_latest_time_window(lookback_timedelta=2 days, 0:00:00)"
INTENDED_CONDITIONS = {
    # Applied when missing (not while running, not again after a failed apply) or when the
    # definitions (its code version) change.
    "feature_views": "((missing & ~in_progress & ~execution_failed) | code_version_changed)",
    # Every day whose aggregates change, after its parents settled.
    "online_features": f"({_eager()} & {_SETTLED})",
    # Every new version of a model, when nothing upstream or of its own is running.
    "champion_model": "((any_deps_updated SINCE handled) & ~any_deps_in_progress & ~in_progress)",
    # Today and the day just ended, after new online features or a new champion.
    "feature_drift": f"({_eager()} & {_TWO_DAYS} & {_SETTLED})",
    # The same, and a week without clusters yet does not hold the predictions back.
    "daily_predictions": f"({_eager(_IGNORING_CLUSTERS)} & {_TWO_DAYS} & {_SETTLED})",
    "label_queue": f"({_eager()} & {_TWO_DAYS} & {_SETTLED})",
}


def test_definitions_load_with_the_ingest_graph():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_readings", "raw_labels"} <= keys
    start = settings().start_date
    for key in ("raw_readings", "raw_labels"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "ingest"
        # One partition per landing day (today's included), not one per file.
        assert node.partitions_def == landing_days
        assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
        assert node.partitions_def.get_first_partition_window().start.date().isoformat() == start
        assert node.partitions_def.end_offset == 1
        # A quarantined file warns, it blocks nothing downstream.
        check = graph.get_check_spec(dg.AssetCheckKey(node.key, "landed_files_pass_their_contract"))
        assert not check.blocking
    sensors = {s.name: s for s in defs.sensors}
    for dataset in ("readings", "labels"):
        sensor = sensors[f"{dataset}_landing_sensor"]
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.job_name == f"ingest_{dataset}_job"
        job = defs.resolve_job_def(f"ingest_{dataset}_job")
        assert job.tags == {"ml_platform/kind": "ingest", "ml_platform/ingest": dataset}
        assert [k.to_user_string() for k in job.asset_layer.selected_asset_keys] == [
            f"raw_{dataset}"
        ]
    assert sensors["lakehouse_on_new_readings_sensor"].job_name == "lakehouse_job"


def test_raw_partitions_do_not_grow_with_the_files_landed(tmp_path, store):
    """Issue: fewer than 5,000 partitions after 100,000 files. Partitions are landing days, so
    their number is the number of days since the start date, whatever the number of files."""
    from ml_platform.lib import paths
    from ml_platform_tests.helpers import READINGS_HEADER, ingest_versions, outcomes

    start = date.fromisoformat(settings().start_date)
    today = datetime.now(UTC).date()
    days = (today - start).days + 1  # from the start date to today, both included
    assert days < 5_000
    with dg.instance_for_test() as instance:

        def partition_count() -> int:
            return len(landing_days.get_partition_keys(dynamic_partitions_store=instance))

        before = partition_count()
        assert before == days
        versions = []
        for i in range(20):
            key = paths.landing_object("readings", f"f{i:02d}.csv")
            store.put_bytes(
                (READINGS_HEADER + f"2024-03-01T{i:02d}:00:00Z,s{i},50,2,5,20\n").encode(), key
            )
            versions.append(paths.partition_key(f"f{i:02d}.csv", store.etag(key)))
        result = ingest_versions(instance, "readings", versions)
        assert result.success
        assert set(outcomes(result).values()) == {"ingested"} and len(outcomes(result)) == 20
        assert partition_count() == before
        # Nothing was registered per file, and the 20 files are one run of one partition.
        for name in ("reading_files", "label_files", "scoring_files"):
            assert instance.get_dynamic_partitions(name) == []
        assert len(instance.get_runs()) == 1
        assert instance.get_materialized_partitions(dg.AssetKey("raw_readings")) == {
            today.isoformat()
        }


def test_the_lakehouse_is_daily_single_run_and_checked():
    graph = defs.resolve_asset_graph()
    for key in ("sensor_chunks", "daily_aggregates"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "lakehouse"
        assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert dg.AssetKey("sensor_chunks") in graph.get(dg.AssetKey("daily_aggregates")).parent_keys
    check_names = {k.name for k in graph.asset_check_keys}
    assert {
        "sensor_chunks_pass_quality_suite",
        "sensor_chunks_values_within_contract_ranges",
        "daily_aggregates_pass_quality_suite",
        "sensor_chunks_conserve_rows",
    } <= check_names
    blocking = {
        k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking
    }  # fmt: skip
    assert {"sensor_chunks_pass_quality_suite", "daily_aggregates_pass_quality_suite"} <= blocking


def test_loading_the_code_location_imports_no_heavy_library():
    code = (
        "import sys, json, ml_platform.definitions; "
        "print(json.dumps(sorted(m for m in ('feast', 'great_expectations', 'mlflow', 'sklearn', "
        "'pandas') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_local_profile_needs_no_environment(monkeypatch):
    from ml_platform.defs.resources import build_resources

    for name in ("ML_PLATFORM_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    resources = build_resources({})
    assert resources["lake"].url.startswith("file://") and resources["lake"].url.endswith("/.lake")
    assert resources["lake"].access_key_id is None


def test_the_feature_store_and_training_set_are_wired():
    graph = defs.resolve_asset_graph()
    views = graph.get(dg.AssetKey("feature_views"))
    online = graph.get(dg.AssetKey("online_features"))
    training = graph.get(dg.AssetKey("training_set"))
    assert (views.group_name, online.group_name, training.group_name) == ("features",) * 2 + ("ml",)
    assert views.code_version and views.partitions_def is None
    assert isinstance(online.partitions_def, dg.DailyPartitionsDefinition)
    assert online.backfill_policy == dg.BackfillPolicy.single_run()
    assert isinstance(training.partitions_def, dg.WeeklyPartitionsDefinition)
    assert {dg.AssetKey("daily_aggregates"), dg.AssetKey("feature_views")} <= online.parent_keys
    assert {
        dg.AssetKey("raw_labels"),
        dg.AssetKey("daily_aggregates"),
        dg.AssetKey("feature_views"),
    } <= training.parent_keys
    blocking = {k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert {
        "training_set_is_point_in_time_correct",
        "training_set_has_both_classes_and_enough_rows",
    } <= blocking
    checks = {k.name for k in graph.asset_check_keys}
    assert {
        "online_store_answers_for_every_sensor",
        "sensor_daily_stats_is_complete",
        "sensor_weekly_trends_is_complete",
    } <= checks


def test_declarative_automation_runs_without_a_toggle():
    sensors = {s.name: s for s in defs.sensors}
    automation = sensors["automation_condition_sensor"]
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    # Exactly these assets are automated, each with the condition described in
    # docs/architecture.md#automation (written out by hand below, so that swapping one fails).
    conditions = {
        k.to_user_string(): render(graph.get(k).automation_condition)
        for k in graph.get_all_asset_keys()
        if graph.get(k).automation_condition is not None
    }
    assert conditions == INTENDED_CONDITIONS


def test_freshness_policies_are_the_promised_deadlines():
    """Each day's results by a deadline the next morning (UTC), an hour apart down the graph:
    aggregates by 06:00, online features by 07:00, predictions by 08:00, each from a
    materialization in the 24 hours before the deadline. No other asset has a policy."""
    graph = defs.resolve_asset_graph()
    policies = {
        k.to_user_string(): graph.get(k).freshness_policy
        for k in graph.get_all_asset_keys()
        if graph.get(k).freshness_policy is not None
    }
    shown = {
        key: (type(p).__name__, p.deadline_cron, p.lower_bound_delta, p.timezone)
        for key, p in policies.items()
    }
    day = timedelta(hours=24)
    assert shown == {
        "daily_aggregates": ("CronFreshnessPolicy", "0 6 * * *", day, "UTC"),
        "online_features": ("CronFreshnessPolicy", "0 7 * * *", day, "UTC"),
        "daily_predictions": ("CronFreshnessPolicy", "0 8 * * *", day, "UTC"),
    }
    # The same deadlines, judged on the due day's partition, each checked at its deadline by a
    # schedule that starts running.
    checks = {
        k.asset_key.to_user_string(): graph.get_check_spec(k).metadata["deadline_cron"]
        for k in graph.asset_check_keys
        if k.name == "due_day_materialized"
    }
    assert checks == {
        "daily_aggregates": "0 6 * * *",
        "online_features": "0 7 * * *",
        "daily_predictions": "0 8 * * *",
    }
    schedules = {
        s.name: (s.cron_schedule, s.execution_timezone, s.default_status) for s in defs.schedules
    }
    running = dg.DefaultScheduleStatus.RUNNING
    assert {n: v for n, v in schedules.items() if n.endswith("_freshness_schedule")} == {
        "daily_aggregates_freshness_schedule": ("0 6 * * *", "UTC", running),
        "online_features_freshness_schedule": ("0 7 * * *", "UTC", running),
        "daily_predictions_freshness_schedule": ("0 8 * * *", "UTC", running),
    }


def test_models_and_predictions_are_wired_scheduled_and_pooled():
    graph = defs.resolve_asset_graph()
    for key, group in (
        ("failure_model", "ml"),
        ("champion_model", "ml"),
        ("sensor_clusters", "ml"),
        ("daily_predictions", "predictions"),
        ("scored_files", "predictions"),
    ):
        assert graph.get(dg.AssetKey(key)).group_name == group
    assert graph.get(dg.AssetKey("failure_model")).pools == {"model_training"}
    assert graph.get(dg.AssetKey("sensor_clusters")).pools == {"model_training"}
    assert dg.AssetKey("failure_model") in graph.get(dg.AssetKey("champion_model")).parent_keys
    predictions = graph.get(dg.AssetKey("daily_predictions"))
    assert {
        dg.AssetKey("online_features"),
        dg.AssetKey("champion_model"),
    } <= predictions.parent_keys
    assert render(predictions.automation_condition) == INTENDED_CONDITIONS["daily_predictions"]
    assert (
        render(graph.get(dg.AssetKey("champion_model")).automation_condition)
        == INTENDED_CONDITIONS["champion_model"]
    )
    blocking = {k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert {
        "failure_model_beats_baseline",
        "failure_model_probabilities_are_valid",
        "sensor_clusters_have_no_empty_cluster",
    } <= blocking
    [schedule] = [s for s in defs.schedules if s.name == "weekly_training_job_schedule"]
    assert schedule.job_name == "weekly_training_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["scoring_landing_sensor"].job_name == "scoring_job"


def test_both_instance_profiles_limit_training_to_one_step_at_a_time(tmp_path):
    import shutil

    import yaml

    from ml_platform_tests.servers import ROOT

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.run_queue_config.max_concurrent_runs == 2
    deployed = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())
    assert deployed["concurrency"]["pools"]["default_limit"] == 1


def test_monitoring_is_wired_gated_and_alerting():
    graph = defs.resolve_asset_graph()
    for key in ("feature_drift", "live_performance", "label_queue"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "monitoring"
        assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
    assert dg.AssetKey("feature_drift") in graph.get(dg.AssetKey("daily_predictions")).parent_keys
    blocking = {k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert "feature_drift_below_failure" in blocking
    assert "feature_drift_below_warning" not in blocking
    # What each policy is: test_freshness_policies_are_the_promised_deadlines.
    deadlines = {
        key: graph.get(dg.AssetKey(key)).freshness_policy.deadline_cron
        for key in ("daily_aggregates", "online_features", "daily_predictions")
    }
    assert deadlines == {
        "daily_aggregates": "0 6 * * *",
        "online_features": "0 7 * * *",
        "daily_predictions": "0 8 * * *",
    }
    sensors = {s.name: s for s in defs.sensors}
    for name in (
        "drift_retraining_sensor",
        "alert_on_failure_sensor",
        "alert_on_failed_check_sensor",
    ):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["drift_retraining_sensor"].job_name == "weekly_training_job"


def test_dg_loads_the_project_from_its_root(tmp_path):
    """`dg list defs` from the project root, with no DAGSTER_HOME (as a newcomer runs it): the
    defs/ folder registers the whole graph, the factory-built sensors included."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    venv = Path(sys.executable).parent
    env = {"PATH": f"{venv}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv.parent), "HOME": str(tmp_path)}
    listed = subprocess.run(
        [str(venv / "dg"), "list", "defs", "--json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    assert sorted(a["asset_key"] for a in found["assets"]) == sorted([
        "raw_readings", "raw_labels", "sensor_chunks", "daily_aggregates", "feature_views",
        "online_features", "training_set", "failure_model", "champion_model", "sensor_clusters",
        "daily_predictions", "scored_files", "feature_drift", "label_queue", "live_performance",
    ])  # fmt: skip
    assert sorted(s["name"] for s in found["sensors"]) == sorted([
        "readings_landing_sensor", "labels_landing_sensor", "scoring_landing_sensor",
        "lakehouse_on_new_readings_sensor", "automation_condition_sensor", "first_model_sensor",
        "drift_retraining_sensor", "alert_on_failure_sensor", "alert_on_failed_check_sensor",
    ])  # fmt: skip
    assert sorted(s["cron_schedule"] for s in found["schedules"]) == [
        "0 4 * * 1", "0 6 * * *", "0 7 * * *", "0 8 * * *",
    ]  # fmt: skip
    # What the UI shows of each automated asset's condition (Dagster's expanded label).
    settled = [
        "AND", "(NOT (ANY_DEPS_MATCH (will_be_requested)))", "AND", "(NOT (any_deps_in_progress))",
        "AND", "(NOT (ANY_DEPS_MATCH (execution_failed)))",
    ]  # fmt: skip
    two_days = ["AND", "(in_latest_time_window(lookback_timedelta=2 days, 0:00:00))"]
    assert {
        a["asset_key"]: a["automation_condition"]["expanded_label"]
        for a in found["assets"]
        if a.get("automation_condition")
    } == {
        "feature_views": [
            "((missing) AND (NOT (in_progress)) AND (NOT (execution_failed)))", "OR",
            "(code_version_changed)",
        ],
        "online_features": ["(eager)", *settled],
        "champion_model": [
            "((any_deps_updated) SINCE (handled))", "AND", "(NOT (any_deps_in_progress))", "AND",
            "(NOT (in_progress))",
        ],
        "feature_drift": ["(eager)", *two_days, *settled],
        "daily_predictions": ["(eager)", *two_days, *settled],
        "label_queue": ["(eager)", *two_days, *settled],
    }  # fmt: skip
    assert {r["name"] for r in found["resources"]} >= {"lake", "mlflow", "feast"}


def _defining_lines(file: Path, line: int) -> tuple[str, str]:
    """The line a code link points at and the name of the first function defined from it."""
    lines = file.read_text().splitlines()[line - 1 :]
    name = next(row.split("def ", 1)[1].split("(")[0] for row in lines if row.startswith("def "))
    return lines[0], name


def test_every_asset_links_to_the_decorator_of_its_function(monkeypatch):
    """Without a repository address, a local file; with one, that file's page at the line of the
    asset's decorator, on the configured branch."""
    root = Path(__file__).resolve().parents[2]
    loaded = list(dg.load_from_defs_folder(path_within_project=root / "ml_platform").assets)
    assert str(
        defs.resolve_asset_graph()
        .get(dg.AssetKey("failure_model"))
        .metadata["dagster/code_references"]
        .code_references[0]
        .file_path
    ).endswith("ml_platform/defs/ml/models.py")
    local = {
        key: meta["dagster/code_references"].code_references
        for asset in linked_to_source(loaded)
        for key, meta in asset.metadata_by_key.items()
    }
    monkeypatch.setenv("ML_PLATFORM_GIT_URL", "https://github.com/example/ml-platform")
    monkeypatch.setenv("ML_PLATFORM_GIT_BRANCH", "release")
    linked = linked_to_source(loaded)
    assert len(local) == len(defs.resolve_asset_graph().get_all_asset_keys()) == 15
    for asset in linked:
        for key, meta in asset.metadata_by_key.items():
            [ref] = meta["dagster/code_references"].code_references
            url = re.fullmatch(
                r"https://github\.com/example/ml-platform/tree/release/(.+\.py)#L(\d+)", ref.url
            )
            decorator, name = _defining_lines(root / url[1], int(url[2]))
            assert decorator.startswith("@dg.asset("), (key, decorator)
            assert name == asset.node_def.name
            [file_ref] = local[key]
            assert Path(file_ref.file_path) == root / url[1]
            assert file_ref.line_number == int(url[2])


def test_the_monday_0400_tick_trains_the_week_that_just_ended():
    """Monday 2026-12-07 04:00 UTC: one training run of the week Monday 2026-11-30 to Sunday
    2026-12-06, tagged as a training run (the run queue's limit)."""
    [schedule] = [s for s in defs.schedules if s.name == "weekly_training_job_schedule"]
    assert (schedule.cron_schedule, schedule.execution_timezone or "UTC") == ("0 4 * * 1", "UTC")
    monday = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=monday)
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-30"
    assert schedule.job.tags["ml_platform/kind"] == "training"
