"""Feature store on real Feast stores: the embedded file/SQLite profile, PostgreSQL offline and
online stores with a SQL registry, and gold Parquet on the S3 API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest

from ml_platform.defs.features.assets import feature_views, online_features
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START
from ml_platform.defs.ml.assets import LEAKAGE_CHECK, SIZE_CHECK, training_set
from ml_platform.defs.resources import build_resources
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths, training
from ml_platform.lib.generator import GeneratorConfig
from ml_platform.lib.lakehouse import end_of_day
from ml_platform.lib.store import LocalStore, open_store
from ml_platform_tests.feature_helpers import (
    build_lake,
    copy_feature_repo,
    embedded_platform,
    materialize,
    metadata,
    s3_options,
)
from ml_platform_tests.helpers import memory_instance, rows_by, stored_key

pytestmark = pytest.mark.integration

#: Three weeks of 8 sensors from Monday 2024-01-01; week 2024-01-15 labels days up to 01-20.
GENERATED = GeneratorConfig(days=21, sensors=8, interval_s=1800, seed=3)
WEEK = "2024-01-15"
SMALL = {"ops": {"training_set": {"config": {"min_rows": 50}}}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One lakehouse with labels, built once; tests work on copies of it."""
    work = tmp_path_factory.mktemp("feature-lake")
    with pytest.MonkeyPatch.context() as mp, memory_instance() as instance:
        embedded_platform(mp, work)
        days = build_lake(instance, work, GENERATED)
        yield SimpleNamespace(lake=work / "lake", days=days, instance=instance)


@pytest.fixture
def env(built, tmp_path, monkeypatch):
    """A private copy of the lake and of feature_repo/, selected through the environment."""
    shutil.copytree(built.lake, tmp_path / "lake")
    embedded_platform(monkeypatch, tmp_path)
    repo = tmp_path / "feature_repo"
    return SimpleNamespace(
        store=LocalStore(tmp_path / "lake"), repo=repo, days=built.days, instance=built.instance
    )


def postgres_profile(monkeypatch, postgres, repo: Path, db: str) -> None:
    postgres.create_database(db)
    monkeypatch.setenv(fs.YAML_ENV, str(repo / "profiles" / "postgres.yaml"))
    monkeypatch.setenv("ML_PLATFORM_FEAST_REGISTRY_URL", postgres.url(db, "postgresql+psycopg"))
    for name, value in {
        "HOST": postgres.host,
        "PORT": str(postgres.port),
        "DB": db,
        "USER": postgres.user,
        "PASSWORD": postgres.password,
        "SSLMODE": "disable",
    }.items():
        monkeypatch.setenv(f"ML_PLATFORM_FEAST_PG_{name}", value)
    monkeypatch.setenv("ML_PLATFORM_FEAST_OFFLINE_SCHEMA", "feast_offline")
    monkeypatch.setenv("ML_PLATFORM_FEAST_ONLINE_SCHEMA", "feast_online")


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def gold(store, day: str) -> pd.DataFrame:
    files = [o.key for o in store.list(paths.aggregates_day_prefix(day))]
    return pd.concat([pd.read_parquet(store.root / k) for k in files]).set_index("sensor_id")


def feature_store():
    return build_resources()["feast"].store()


def feature_refs() -> dict[str, str]:
    """Feature name -> ``view:feature`` reference, for every feature of the service."""
    from ml_platform.lib.contract import load_contract

    names = fs.feature_names(load_contract(None).columns)
    return {n: f"{view}:{n}" for view in fs.VIEWS for n in names[view]}


def run_feature_pipeline(instance, days: list[str]) -> None:
    assert materialize(instance, [feature_views]).success
    result = materialize(
        instance, [online_features], tags={RANGE_START: days[0], RANGE_END: days[-1]}
    )
    assert result.success and checks(result)["online_store_answers_for_every_sensor"]


def plant_future_row(days: list[str], write) -> tuple[str, float]:
    """A row for one sensor stamped one hour after day D's cut-off, with an impossible value.

    ``write(row_frame, day)`` stores it where the active offline store reads.
    """
    day, next_day = days[10], days[11]
    row = pd.read_parquet(
        os.environ["ML_PLATFORM_STORE_URL"].removeprefix("file://")
        + "/"
        + paths.aggregates_object(day)
    ).head(1)
    planted = 9999.0
    row["temperature_mean"] = planted
    row["event_timestamp"] = pd.Timestamp(end_of_day(day)) + pd.Timedelta(hours=1)
    row["day"] = pd.Timestamp(next_day).date()
    write(row, next_day)
    return str(row["sensor_id"].iloc[0]), planted


def assert_guarded(instance, monkeypatch, planted: float) -> None:
    """The planted value never reaches the training set, even when the join itself is wrong; with
    the guard bypassed too, the blocking leakage check fails the run."""
    result = materialize(instance, [training_set], partition_key=WEEK, config=SMALL)
    assert result.success, checks(result)
    assert checks(result) == {LEAKAGE_CHECK: True, SIZE_CHECK: True}
    frame = pd.read_parquet(metadata(result, "training_set")["dagster/uri"])
    assert planted not in frame["temperature_mean"].tolist()
    assert frame["temperature_mean"].notna().mean() > 0.95

    # Joined at the label's later event time instead of its cut-off: the guard blanks what came
    # from the future, the set stays clean and is accepted, and the check warns about the join.
    late = pd.Timedelta(hours=2)
    monkeypatch.setattr(training, "join_times", lambda entities: entities["cutoff"] + late)
    result = materialize(instance, [training_set], partition_key=WEEK, config=SMALL)
    assert result.success
    evaluation = next(
        c for c in result.get_asset_check_evaluations() if c.check_name == LEAKAGE_CHECK
    )
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["values_blanked_by_guard"].value["sensor_daily_stats"] >= 1
    accepted = metadata(result, "training_set")["dagster/uri"]
    assert planted not in pd.read_parquet(accepted)["temperature_mean"].tolist()

    # Guard bypassed as well: the leak is there, the blocking check fails the run, and the set
    # is kept aside for inspection; the week's accepted set is untouched.
    monkeypatch.setattr(training, "guard", lambda frame, *a, **k: (frame, {}))
    result = materialize(instance, [training_set], partition_key=WEEK, config=SMALL)
    assert not result.success
    evaluation = next(
        c for c in result.get_asset_check_evaluations() if c.check_name == LEAKAGE_CHECK
    )
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    rejected = metadata(result, "training_set")["dagster/uri"]
    assert "/rejected/" in rejected and rejected != accepted
    assert planted in pd.read_parquet(rejected)["temperature_mean"].tolist()
    assert planted not in pd.read_parquet(accepted)["temperature_mean"].tolist()


def feast_cli(repo: Path, *args: str) -> str:
    """``feast -c <repo> <args>`` as the README runs it (from the project root); its output."""
    cli = Path(sys.executable).with_name("feast")
    done = subprocess.run(
        [str(cli), "-c", str(repo), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_feast_cli_by_hand_and_the_asset_agree_and_apply_only_on_change(env):
    assert "Created feature view sensor_daily_stats" in feast_cli(env.repo, "plan")
    feast_cli(env.repo, "apply")
    registry = env.repo / "data" / "registry.db"
    before = registry.stat().st_mtime_ns

    first = materialize(env.instance, [feature_views])
    assert first.success and metadata(first, "feature_views")["applied"] is False
    assert registry.stat().st_mtime_ns == before

    version = fs.definitions_version(env.repo)
    source = env.repo / "features.py"
    source.write_text(
        source.read_text().replace(
            'description="Per-sensor statistics of one UTC day',
            'description="Per-sensor statistics of one (edited) UTC day',
        )
    )
    assert fs.definitions_version(env.repo) != version  # the asset's code version moves
    changed = materialize(env.instance, [feature_views])
    meta = metadata(changed, "feature_views")
    assert meta["applied"] is True
    assert any("sensor_daily_stats" in c for c in meta["changes"])
    assert metadata(materialize(env.instance, [feature_views]), "feature_views")["applied"] is False
    view = feature_store().get_feature_view(fs.DAILY_STATS_VIEW)
    assert "(edited)" in view.description
    assert all(f.description for f in view.features)


ON_DEMAND_VIEW = """
import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64

from features import sensor_daily_stats


@on_demand_feature_view(
    sources=[sensor_daily_stats],
    schema=[Field(name="temperature_range", dtype=Float64)],
    mode="pandas",
)
def temperature_range(inputs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"temperature_range": inputs["temperature_max"] - inputs["temperature_min"]})
"""


def feast_plan(repo: Path) -> set[str]:
    """What ``feast plan`` would change, as ``"<created|updated|deleted> <kind> <name>"``."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", feast_cli(repo, "plan"))
    found = re.findall(r"^(Created|Updated|Deleted) (.+) (\S+)$", text, flags=re.MULTILINE)
    return {f"{verb[:-1].lower()} {kind} {name}" for verb, kind, name in found}


def test_an_on_demand_view_added_to_the_repo_is_applied_as_feast_plan_says(env):
    """Objects beyond feature views, entities and services (here an on-demand view) are applied
    too, and the asset changes exactly what ``feast plan`` announced."""
    assert materialize(env.instance, [feature_views]).success
    (env.repo / "on_demand.py").write_text(ON_DEMAND_VIEW)
    announced = feast_plan(env.repo)
    assert announced == {"create on demand feature view temperature_range"}

    result = materialize(env.instance, [feature_views])
    applied = set(metadata(result, "feature_views")["changes"])
    assert {c for c in applied if " data source " not in c} == announced
    assert feast_plan(env.repo) == set()
    view = feature_store().get_on_demand_feature_view("temperature_range")
    assert [f.name for f in view.features] == ["temperature_range"]
    assert metadata(materialize(env.instance, [feature_views]), "feature_views")["applied"] is False


def test_the_readme_feast_commands_fill_the_online_store_from_the_gold_zone(env):
    """``feast materialize START END`` over the history, then ``materialize-incremental``: the
    online values are the last day's aggregates."""
    feast_cli(env.repo, "apply")
    first, last = env.days[0], env.days[-1]
    after = (pd.Timestamp(last) + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    feast_cli(env.repo, "materialize", f"{first}T00:00:00", after)
    feast_cli(env.repo, "materialize-incremental", after)
    want = gold(env.store, last)
    sensors = sorted(want.index)
    got = (
        feature_store()
        .get_online_features(
            features=[f"{fs.DAILY_STATS_VIEW}:rows", f"{fs.DAILY_STATS_VIEW}:temperature_mean"],
            entity_rows=[{"sensor_id": s} for s in sensors],
        )
        .to_df()
        .set_index("sensor_id")
    )
    assert got.loc[sensors, "rows"].tolist() == want.loc[sensors, "rows"].tolist()
    assert got.loc[sensors, "temperature_mean"].tolist() == pytest.approx(
        want.loc[sensors, "temperature_mean"].tolist()
    )


def test_the_code_version_follows_the_repository_definitions():
    repo = fs.default_repo_path()
    assert feature_views.code_versions_by_key[feature_views.key] == fs.definitions_version(
        repo, None, repo / "feature_store.yaml"
    )
    # Another profile is another registry: the asset must be applied there too.
    assert fs.definitions_version(repo, None, repo / "profiles" / "postgres.yaml") != (
        fs.definitions_version(repo, None, repo / "feature_store.yaml")
    )


def test_online_values_after_a_day_equal_that_days_aggregates(env):
    days = env.days
    last, older = days[-1], days[-4]
    assert materialize(env.instance, [feature_views]).success
    refs = feature_refs()
    features = list(refs)

    def online(sensors):
        return (
            feature_store()
            .get_online_features(
                features=list(refs.values()), entity_rows=[{"sensor_id": s} for s in sensors]
            )
            .to_df()
            .set_index("sensor_id")[features]
        )

    result = materialize(env.instance, [online_features], partition_key=last)
    assert result.success and checks(result)["online_store_answers_for_every_sensor"]
    want = gold(env.store, last)[features]
    got = online(want.index.tolist())
    pd.testing.assert_frame_equal(got.astype(float), want.astype(float), check_names=False)

    # Backfilling an older day keeps the newer values online; re-running the day is idempotent.
    result = materialize(env.instance, [online_features], partition_key=older)
    assert result.success
    shown = rows_by(metadata(result, "online_features")["days"], "day")
    assert shown[older][f"kept_newer_online_{fs.DAILY_STATS_VIEW}"] == len(gold(env.store, older))
    pd.testing.assert_frame_equal(online(want.index.tolist()).astype(float), want.astype(float))
    again = materialize(env.instance, [online_features], partition_key=last)
    assert again.success
    pd.testing.assert_frame_equal(online(want.index.tolist()).astype(float), want.astype(float))


@pytest.mark.parametrize("offline_store", ["duckdb", "file"])
def test_parquet_stores_a_planted_future_value_never_reaches_the_training_set(
    env, monkeypatch, offline_store
):
    """The embedded profile's DuckDB store and Feast's Dask `file` store, over the gold Parquet."""
    config = env.repo / "feature_store.yaml"
    config.write_text(config.read_text().replace("type: duckdb", f"type: {offline_store}"))
    run_feature_pipeline(env.instance, env.days)
    assert feature_store().config.offline_store.type == offline_store

    def write(row, day):
        row.to_parquet(env.store.root / paths.aggregates_day_prefix(day) / "planted.parquet")

    _, planted = plant_future_row(env.days, write)
    assert_guarded(env.instance, monkeypatch, planted)


def test_postgres_store_a_planted_future_value_never_reaches_the_training_set(
    env, monkeypatch, postgres
):
    import sqlalchemy as sa

    postgres_profile(monkeypatch, postgres, env.repo, f"feast_{uuid.uuid4().hex[:8]}")
    run_feature_pipeline(env.instance, env.days)
    profile = build_resources()["feast"].profile()
    assert profile.offline_type == "postgres"
    engine = sa.create_engine(fs.postgres_url(profile.config["offline_store"]))
    with engine.connect() as con:
        published = con.execute(sa.text(f"SELECT count(*) FROM {profile.offline_table}")).scalar()
    assert published == sum(len(gold(env.store, d)) for d in env.days)

    def write(row, day):
        with engine.begin() as con:
            row.to_sql(fs.OFFLINE_TABLE, con, schema=profile.offline_schema, if_exists="append",
                       index=False)  # fmt: skip

    _, planted = plant_future_row(env.days, write)
    assert_guarded(env.instance, monkeypatch, planted)
    engine.dispose()


def test_training_set_labels_manifest_and_size_check(env):
    run_feature_pipeline(env.instance, env.days)
    result = materialize(env.instance, [training_set], partition_key=WEEK, config=SMALL)
    assert result.success
    meta = metadata(result, "training_set")
    # The set is the asset's dagster/uri, its manifest a path beside it.
    assert stored_key(env.store, meta) == paths.training_set_object(WEEK)
    assert meta["manifest"] == env.store.uri(paths.training_manifest_object(WEEK))
    frame = pd.read_parquet(meta["dagster/uri"])
    # Days 2024-01-01..01-20: the last day whose one-day horizon ends inside the week.
    assert (frame["day"].min(), frame["day"].max()) == (
        pd.Timestamp("2024-01-01").date(),
        pd.Timestamp("2024-01-20").date(),
    )
    assert len(frame) == 8 * 20 and frame["label_id"].is_unique
    # Targets recomputed from the labels file: a failure within a day after the cut-off.
    failures = pd.concat(
        pd.read_parquet(env.store.root / o.key) for o in env.store.list(f"{paths.BRONZE}labels/")
    )
    failures = failures[failures["failure"] == 1]
    for row in frame.itertuples():
        times = failures.loc[failures["sensor_id"] == row.sensor_id, "timestamp"]
        expected = ((times > row.cutoff) & (times <= row.cutoff + pd.Timedelta(days=1))).any()
        assert row.failure_within_horizon == int(expected)
    assert frame[training.TARGET].sum() >= 1

    manifest = json.loads(env.store.read_bytes(paths.training_manifest_object(WEEK)))
    fv = materialize(env.instance, [feature_views])
    assert manifest["registry_hash"] == metadata(fv, "feature_views")["registry_hash"]
    assert manifest["rows"] == len(frame)
    assert set(manifest["inputs"]["daily_aggregates"]) == set(env.days[:20])
    assert all(manifest["inputs"]["daily_aggregates"].values())
    assert len(manifest["inputs"]["raw_labels"]) == 1
    assert (
        manifest["code_versions"]["training_set"]
        == training_set.code_versions_by_key[training_set.key]
    )
    assert (
        manifest["code_versions"]["feature_views"]
        == (feature_views.code_versions_by_key[feature_views.key])
    )
    assert manifest["features"][fs.DAILY_STATS_VIEW][0] == "rows"

    too_small = {"ops": {"training_set": {"config": {"min_rows": 10_000}}}}
    failed = materialize(env.instance, [training_set], partition_key=WEEK, config=too_small)
    assert not failed.success and checks(failed)[SIZE_CHECK] is False
    # The week's accepted set and manifest stay the ones that passed.
    rejected = metadata(failed, "training_set")
    assert "/rejected/" in stored_key(env.store, rejected) and "/rejected/" in rejected["manifest"]
    assert json.loads(env.store.read_bytes(paths.training_manifest_object(WEEK))) == manifest


def test_s3_profile_reads_gold_parquet_through_the_endpoint_override(
    s3_env, postgres, tmp_path, monkeypatch
):
    """Gold on the S3 API server, online store and registry in PostgreSQL (profiles/s3.yaml)."""
    repo = copy_feature_repo(tmp_path / "feature_repo")
    monkeypatch.setenv("ML_PLATFORM_FEAST_REPO", str(repo))
    postgres_profile(monkeypatch, postgres, repo, f"feast_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv(fs.YAML_ENV, str(repo / "profiles" / "s3.yaml"))
    with memory_instance() as instance:
        days = build_lake(
            instance, tmp_path, GeneratorConfig(days=14, sensors=5, interval_s=3600, seed=5)
        )
        run_feature_pipeline(instance, days)
        store = feature_store()
        assert store.config.online_store.type == "postgres"
        source = store.get_feature_view(fs.DAILY_STATS_VIEW).batch_source
        assert source.path.startswith("s3://") and source.s3_endpoint_override
        result = materialize(
            instance,
            [training_set],
            partition_key="2024-01-08",
            config={"ops": {"training_set": {"config": {"min_rows": 20, "min_positives": 0}}}},
        )
        assert result.success, checks(result)
        s3 = open_store(os.environ["ML_PLATFORM_STORE_URL"], **s3_options())
        local = tmp_path / "set.parquet"
        local.write_bytes(s3.read_bytes(paths.training_set_object("2024-01-08")))
        frame = pd.read_parquet(local)
        # Week 2024-01-08 labels the days up to 01-13 (its last day plus a one-day horizon).
        assert len(frame) == 5 * 13 and frame["temperature_mean"].notna().all()


def test_a_range_serves_each_sensors_newest_day_and_writes_it_once(env):
    """A run over three days serves the newest day's values and writes an older day's row only for
    a sensor absent from every later day of the range."""
    days = env.days[-3:]
    assert materialize(env.instance, [feature_views]).success
    tags = {RANGE_START: days[0], RANGE_END: days[-1]}
    result = materialize(env.instance, [online_features], tags=tags)
    assert result.success and checks(result)["online_store_answers_for_every_sensor"]
    table = metadata(result, "online_features")["days"]
    assert {c.name: c.type for c in table.schema.columns}["sensors_without_answer"] == "int"
    shown = rows_by(table, "day")
    assert list(shown) == days
    frames = {day: gold(env.store, day) for day in days}
    for i, day in enumerate(days):
        later = set().union(*(frames[d].index for d in days[i + 1 :]))
        expected = len(set(frames[day].index) - later)
        assert shown[day][f"written_{fs.DAILY_STATS_VIEW}"] == expected, (day, shown[day])
        assert shown[day]["sensors_without_answer"] == 0
    refs = feature_refs()
    want = frames[days[-1]][list(refs)]
    got = (
        feature_store()
        .get_online_features(
            features=list(refs.values()), entity_rows=[{"sensor_id": s} for s in want.index]
        )
        .to_df()
        .set_index("sensor_id")[list(refs)]
    )
    pd.testing.assert_frame_equal(got.astype(float), want.astype(float), check_names=False)
