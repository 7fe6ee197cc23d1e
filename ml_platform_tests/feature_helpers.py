"""Building a small lakehouse with labels, and a private copy of the Feast repo, for feature tests."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import dagster as dg

from ml_platform.definitions import defs
from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.feature_store import YAML_ENV
from ml_platform.lib.generator import GeneratorConfig, write_files
from ml_platform.lib.store import LocalStore, open_store
from ml_platform_tests.helpers import ingest_versions, outcomes

ROOT = Path(__file__).resolve().parents[1]
#: Every asset of the code location: tests select from the real definitions.
ASSETS = list(defs.assets)
#: A quick search for tests: two candidates, two folds, two weeks of holdout.
FAST = {"n_iter": 2, "cv_splits": 2, "holdout_days": 14}


def copy_feature_repo(target: Path) -> Path:
    """The repository's feature_repo/ without its local state, so a test has its own registry."""
    shutil.copytree(
        ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    return target


def embedded_platform(mp, work: Path) -> dict[str, str]:
    """Point the platform's embedded profile at the folder ``work`` (``mp``: a MonkeyPatch):
    its lake, a private Feast repo (copied unless ``work`` has one) and an MLflow store; the
    variables of the deployed profiles are unset."""
    repo = work / "feature_repo"
    if not repo.exists():
        copy_feature_repo(repo)
    env = {
        "ML_PLATFORM_STORE_URL": (work / "lake").as_uri(),
        "ML_PLATFORM_FEAST_REPO": str(repo),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "ML_PLATFORM_MLFLOW_ARTIFACTS": (work / "artifacts").as_uri(),
    }
    if not (work / "mlflow.db").exists():
        shutil.copyfile(empty_mlflow_db(), work / "mlflow.db")
    for name, value in env.items():
        mp.setenv(name, value)
    for name in (YAML_ENV, "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "ML_PLATFORM_API_KEY"):
        mp.delenv(name, raising=False)
    return env


@functools.cache
def empty_mlflow_db() -> Path:
    """An MLflow SQLite store with its tables created and nothing in them, made once per process:
    MLflow's migrations take 2 to 3 s for every new store, and each test starts from a copy."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="mlflow-empty-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    return folder / "mlflow.db"


def one_file(files: list[Path], target: Path) -> Path:
    """Daily CSV files concatenated into one upload (one ingest run instead of one per day)."""
    with target.open("wb") as out:
        for i, day_file in enumerate(files):
            with day_file.open("rb") as src:
                header = src.readline()
                if i == 0:
                    out.write(header)
                shutil.copyfileobj(src, out)
    return target


def land_and_ingest(instance, dataset: str, file: Path) -> str:
    """Put ``file`` in the landing zone, register its partition and ingest it."""
    store = open_store(os.environ["ML_PLATFORM_STORE_URL"], **s3_options())
    name = file.name
    key = paths.landing_object(dataset, name)
    store.put_file(file, key)
    partition = paths.partition_key(name, store.etag(key))
    result = ingest_versions(instance, dataset, [partition])
    assert result.success
    asset = "raw_readings" if dataset == "readings" else "raw_labels"
    assert outcomes(result, asset)[partition] == "ingested"
    return partition


def build_lake(instance, work: Path, cfg: GeneratorConfig) -> list[str]:
    """Readings and labels of ``cfg`` ingested, chunks and aggregates built for every day."""
    files = write_files(cfg, work / "generated")
    land_and_ingest(instance, "readings", one_file(files.readings, work / "all.csv"))
    land_and_ingest(instance, "labels", files.labels)
    days = [f.stem.split("_")[1] for f in files.readings]
    result = dg.materialize(
        [sensor_chunks, daily_aggregates],
        instance=instance,
        resources=build_resources(),
        tags={RANGE_START: days[0], RANGE_END: days[-1]},
    )
    assert result.success
    return days


def materialize(instance, selection, *, partition_key=None, tags=None, config=None):
    """``dg.materialize`` of ``selection`` among all assets, with the environment's resources."""
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=build_resources(),
        partition_key=partition_key,
        tags=tags,
        run_config=config,
        raise_on_error=False,
    )


def run(instance, selection, *, partition_key=None, config=None, ok=True):
    """:func:`materialize` that must succeed (unless ``ok`` is False)."""
    result = materialize(instance, selection, partition_key=partition_key, config=config)
    if ok:
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def model_config(**overrides) -> dict:
    return {"ops": {"failure_model": {"config": {**FAST, **overrides}}}}


def metadata(result, key: str) -> dict:
    """The metadata values of the last materialization of asset ``key`` in ``result``."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [key]]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def mlflow_client():
    return build_resources()["mlflow"].client()


def s3_options() -> dict[str, str | None]:
    return {
        "endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3"),
        "region": os.environ.get("AWS_REGION"),
        "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
    }


def local_store(url: str) -> LocalStore:
    store = open_store(url)
    assert isinstance(store, LocalStore)
    return store


#: The small served platform of the serving tests: 35 days x 10 sensors, labels up to 02-03, the
#: online store holding 02-04, and a quickly trained champion (gates relaxed: it is not judged).
SERVED_DATA = GeneratorConfig(
    days=35, sensors=10, interval_s=3600, seed=5, failures_per_sensor_month=3
)
SERVED_WEEK, SERVED_DAY = "2024-01-29", "2024-02-04"
SERVED_MODEL = {
    "n_iter": 1,
    "cv_splits": 2,
    "holdout_days": 7,
    "baseline_margin": -1.0,
    "f1_floor": 0.0,
}


def build_served_platform(instance, work: Path, **model) -> dg.ExecuteInProcessResult:
    """Lake, Feast registry, the online store for SERVED_DAY and failure_model v1 as champion
    (``model``: overrides of SERVED_MODEL). Returns the failure_model run's result."""
    from ml_platform.defs.features.assets import feature_views, online_features
    from ml_platform.defs.ml.assets import training_set
    from ml_platform.defs.ml.models import champion_model, failure_model

    build_lake(instance, work, SERVED_DATA)
    run(instance, [feature_views])
    run(instance, [online_features], partition_key=SERVED_DAY)
    run(instance, [training_set], partition_key=SERVED_WEEK)
    config = model_config(**{**SERVED_MODEL, **model})
    result = run(instance, [failure_model], partition_key=SERVED_WEEK, config=config)
    run(instance, [champion_model])
    return result
