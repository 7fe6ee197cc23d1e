"""Feast definitions of the platform: the ``sensor`` entity, two feature views over the gold zone
(``lake/gold/daily_aggregates/``) and the failure model's feature service.

``feast plan`` / ``feast apply`` in this folder read this file, and so does the ``feature_views``
asset, whose code version is a hash of this folder's definitions: edit a feature here and the asset
turns stale in the Dagster UI. Features are generated from the readings contract (one set of daily
statistics per measurement), so a contract with other measurements gets matching features.

Where the offline data lives follows the active profile (``feature_store.yaml`` or the file named
by ``FEAST_FS_YAML_FILE_PATH``): the gold Parquet files (a local folder or ``s3://``) for the
DuckDB and file (Dask) offline stores, the ``daily_aggregates`` table for the PostgreSQL one.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from ml_platform.lib import feature_store as fs
from ml_platform.lib.contract import load_contract
from ml_platform.settings import settings

_settings = settings()
_profile = fs.active_profile(Path(__file__).resolve().parent, _settings.feast_yaml or None)
_contract = load_contract(_settings.readings_contract or None, default="readings")
_OWNER = "team:data-platform"


def _schema(specs: list[fs.FeatureSpec]) -> list[Field]:
    """Feast fields of the features, with their documentation."""
    return [
        Field(
            name=f.name,
            dtype=Int64 if f.integer else Float64,
            description=f.description,
            tags=f.tags,
        )
        for f in specs
    ]


sensor = Entity(
    name="sensor",
    join_keys=["sensor_id"],
    value_type=ValueType.STRING,
    description="One physical sensor of a machine, as named in the readings files.",
    tags={"owner": _OWNER},
)

if _profile.offline_type == "postgres":
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
        PostgreSQLSource,
    )

    daily_aggregates_source = PostgreSQLSource(
        name="daily_aggregates",
        query=f"SELECT * FROM {_profile.offline_table}",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description="Gold rows published day by day by the online_features asset.",
        tags={"zone": "gold"},
    )
else:
    _location = fs.gold_location(_settings.store_url, _settings.s3_endpoint_url)
    daily_aggregates_source = FileSource(
        name="daily_aggregates",
        # DuckDB reads the day files through a glob; Dask (offline_store type `file`) reads the
        # folder with its date=D partitions.
        path=_location.glob if _profile.offline_type == "duckdb" else _location.path,
        file_format=ParquetFormat(),
        s3_endpoint_override=_location.s3_endpoint,
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description="lake/gold/daily_aggregates/date=D/*.parquet: one row per sensor and day.",
        tags={"zone": "gold"},
    )

sensor_daily_stats = FeatureView(
    name=fs.DAILY_STATS_VIEW,
    entities=[sensor],
    # A day's statistics are stamped at the end of that UTC day. Two days of TTL: yesterday's
    # statistics still describe a sensor today, anything older says the sensor went quiet.
    ttl=timedelta(days=fs.TTL_DAYS[fs.DAILY_STATS_VIEW]),
    source=daily_aggregates_source,
    online=True,
    schema=_schema(fs.daily_stat_features(_contract.columns)),
    description="Per-sensor statistics of one UTC day, one value per measurement and statistic.",
    tags={"owner": _OWNER, "cadence": "daily"},
    owner=_OWNER,
)

sensor_weekly_trends = FeatureView(
    name=fs.WEEKLY_TRENDS_VIEW,
    entities=[sensor],
    # Recomputed every day over the seven days before it; kept for a week of sensor silence.
    ttl=timedelta(days=fs.TTL_DAYS[fs.WEEKLY_TRENDS_VIEW]),
    source=daily_aggregates_source,
    online=True,
    schema=_schema(fs.weekly_trend_features(_contract.columns)),
    description="How a sensor's day compares with the seven days before it.",
    tags={"owner": _OWNER, "cadence": "daily", "window": "7d"},
    owner=_OWNER,
)

failure_model_features = FeatureService(
    name=fs.FEATURE_SERVICE,
    features=[sensor_daily_stats, sensor_weekly_trends],
    description="Everything the failure classifier reads: daily statistics and weekly trends.",
    tags={"owner": _OWNER, "model": "failure_model"},
    owner=_OWNER,
)
