"""Building a small lakehouse with labels, and a private copy of the Feast repo, for feature tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from ml_platform.defs.features.assets import feature_views, online_features
from ml_platform.defs.ingest.assets import raw_labels, raw_readings
from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START
from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.generator import GeneratorConfig, write_files
from ml_platform.lib.store import LocalStore, open_store

ROOT = Path(__file__).resolve().parents[1]
FEATURE_ASSETS = [feature_views, online_features, training_set]


def copy_feature_repo(target: Path) -> Path:
    """The repository's feature_repo/ without its local state, so a test has its own registry."""
    shutil.copytree(
        ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    return target


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
    resources = build_resources()
    store = open_store(os.environ["ML_PLATFORM_STORE_URL"], **s3_options())
    name = file.name
    key = paths.landing_object(dataset, name)
    store.put_file(file, key)
    partition = paths.partition_key(name, store.etag(key))
    asset = raw_readings if dataset == "readings" else raw_labels
    definition = "reading_files" if dataset == "readings" else "label_files"
    instance.add_dynamic_partitions(definition, [partition])
    result = dg.materialize(
        [asset], instance=instance, partition_key=partition, resources=resources
    )
    assert result.success
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


def materialize_features(instance, *, selection, partition_key=None, tags=None, config=None):
    return dg.materialize(
        FEATURE_ASSETS,
        selection=selection,
        instance=instance,
        resources=build_resources(),
        partition_key=partition_key,
        tags=tags,
        run_config=config,
        raise_on_error=False,
    )


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
