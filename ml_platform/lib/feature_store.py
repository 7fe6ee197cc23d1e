"""What the Feast repository and the feature assets share: feature names and their documentation,
the active Feast profile, and where the gold zone is for Feast's offline store.

No Dagster here and no Feast at import time: ``feature_repo/features.py`` and the assets both
import this module, and the code location must load without Feast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from ml_platform.lib import paths
from ml_platform.lib.contract import Column

#: Feast's own variable: which feature_store.yaml the CLI and the platform use.
YAML_ENV = "FEAST_FS_YAML_FILE_PATH"
DAILY_STATS_VIEW = "sensor_daily_stats"
WEEKLY_TRENDS_VIEW = "sensor_weekly_trends"
FEATURE_SERVICE = "failure_model_v1"
VIEWS = (DAILY_STATS_VIEW, WEEKLY_TRENDS_VIEW)
TTL_DAYS = {DAILY_STATS_VIEW: 2, WEEKLY_TRENDS_VIEW: 7}
#: The PostgreSQL offline store's table of gold rows (in the profile's ``db_schema``).
OFFLINE_TABLE = "daily_aggregates"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_STATISTICS = {
    "count": ("number of non-null {m} readings in the UTC day", "readings", True),
    "missing_ratio": ("share of the day's rows where {m} is missing", "ratio", False),
    "mean": ("mean of {m} over the day", "{u}", False),
    "std": ("sample standard deviation of {m} over the day", "{u}", False),
    "min": ("lowest {m} of the day", "{u}", False),
    "max": ("highest {m} of the day", "{u}", False),
    "p05": ("5th percentile of {m} over the day (exact)", "{u}", False),
    "p50": ("median of {m} over the day (exact)", "{u}", False),
    "p95": ("95th percentile of {m} over the day (exact)", "{u}", False),
    "last": ("last non-null {m} reading of the day", "{u}", False),
    "slope_per_h": ("least-squares trend of {m} over the day, per hour", "{u}/h", False),
}


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its gold column name, type and the documentation Feast stores with it."""

    name: str
    description: str
    integer: bool = False
    tags: dict[str, str] = field(default_factory=dict)


def daily_stat_features(columns: Sequence[Column]) -> list[FeatureSpec]:
    """``rows`` plus eleven statistics per measurement of the readings contract."""
    specs = [
        FeatureSpec(
            "rows",
            "readings the sensor sent in the UTC day (after de-duplication)",
            integer=True,
            tags={"unit": "readings", "statistic": "count"},
        )
    ]
    for column in columns:
        unit = column.unit or "unitless"
        label = column.description.lower() or column.name
        for stat, (text, stat_unit, integer) in _STATISTICS.items():
            specs.append(
                FeatureSpec(
                    f"{column.name}_{stat}",
                    text.format(m=label),
                    integer=integer,
                    tags={
                        "measurement": column.name,
                        "statistic": stat,
                        "unit": stat_unit.format(u=unit),
                    },
                )
            )
    return specs


def weekly_trend_features(columns: Sequence[Column]) -> list[FeatureSpec]:
    """Per measurement: the trailing 7-day mean and today's change against it."""
    specs = []
    for column in columns:
        unit = column.unit or "unitless"
        label = column.description.lower() or column.name
        specs += [
            FeatureSpec(
                f"{column.name}_mean_7d",
                f"mean of the daily {label} means over the seven days before this one",
                tags={"measurement": column.name, "window": "7d", "unit": unit},
            ),
            FeatureSpec(
                f"{column.name}_change_vs_7d",
                f"this day's mean {label} minus the trailing 7-day mean",
                tags={"measurement": column.name, "window": "7d", "unit": unit},
            ),
        ]
    specs.append(
        FeatureSpec(
            "days_with_data_7d",
            "how many of the seven days before this one had readings (0-7)",
            integer=True,
            tags={"window": "7d", "unit": "days"},
        )
    )
    return specs


def feature_names(columns: Sequence[Column]) -> dict[str, list[str]]:
    """Feature names of each view, in schema order."""
    return {
        DAILY_STATS_VIEW: [f.name for f in daily_stat_features(columns)],
        WEEKLY_TRENDS_VIEW: [f.name for f in weekly_trend_features(columns)],
    }


def default_repo_path() -> Path:
    """``feature_repo/`` of the project."""
    return paths.project_root() / "feature_repo"


@dataclass(frozen=True)
class Profile:
    """The active feature_store.yaml, with variables expanded as Feast expands them."""

    yaml_path: Path
    config: dict

    @property
    def offline_type(self) -> str:
        return str(self.config.get("offline_store", {}).get("type", "dask"))

    @property
    def offline_schema(self) -> str:
        schema = str(self.config.get("offline_store", {}).get("db_schema") or "public")
        if not _IDENTIFIER.fullmatch(schema):  # it is spliced into SQL: letters, digits, _ only
            raise ValueError(f"{self.yaml_path}: db_schema {schema!r} is not a plain identifier")
        return schema

    @property
    def offline_table(self) -> str:
        """Schema-qualified, quoted name of the PostgreSQL offline table."""
        return f'"{self.offline_schema}"."{OFFLINE_TABLE}"'


def profile_yaml(repo_path: Path | None = None, yaml_path: str | Path | None = None) -> Path:
    """The active feature_store.yaml: ``yaml_path`` (the platform passes its
    ``FEAST_FS_YAML_FILE_PATH`` setting) or the repo's own."""
    repo = Path(repo_path) if repo_path else default_repo_path()
    return Path(yaml_path).resolve() if yaml_path else repo / "feature_store.yaml"


def active_profile(repo_path: Path | None = None, yaml_path: str | Path | None = None) -> Profile:
    path = profile_yaml(repo_path, yaml_path)
    config = yaml.safe_load(os.path.expandvars(path.read_text()))  # exactly what Feast does
    unset = sorted(_unexpanded(config))
    if unset:
        raise ValueError(
            f"{path} needs these environment variables, which are not set: {', '.join(unset)}"
        )
    return Profile(path, config)


def _unexpanded(value) -> set[str]:
    """Names of ``${VAR}`` left in the parsed config: Feast keeps unset variables as text."""
    if isinstance(value, dict):
        return set().union(*map(_unexpanded, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_unexpanded, value)) if value else set()
    if isinstance(value, str) and "${" in value:
        return {part.split("}")[0] for part in value.split("${")[1:]}
    return set()


@dataclass(frozen=True)
class GoldLocation:
    path: str  # local folder or s3:// URL of lake/gold/daily_aggregates/
    s3_endpoint: str | None = None

    @property
    def glob(self) -> str:
        """Every day file: ``<path>/*/*.parquet`` (one ``date=D`` folder per day)."""
        return self.path.rstrip("/") + "/*/*.parquet"


def gold_location(store_url: str, s3_endpoint: str | None = None) -> GoldLocation:
    """Where Feast's file offline store reads the gold zone: in the platform's store
    (``store_url``, reached through ``s3_endpoint`` when it is an ``s3://`` URL)."""
    parsed = urlparse(store_url)
    if parsed.scheme == "s3":
        prefix = parsed.path.strip("/")
        base = f"s3://{parsed.netloc}/{prefix + '/' if prefix else ''}"
        return GoldLocation(base + paths.GOLD_AGGREGATES, s3_endpoint or None)
    root = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(store_url)
    return GoldLocation(str(root.resolve() / paths.GOLD_AGGREGATES))


def definitions_version(
    repo_path: Path, contract: str | None = None, profile: Path | None = None
) -> str:
    """A hash of what the feature definitions are made of: the repo's Python files and profiles,
    the readings contract the features are generated from, and which profile is active (a new
    profile is a new registry to apply to). Cheap: a few small files."""
    from importlib import resources

    from ml_platform.lib.versions import files_version

    repo = Path(repo_path)
    files = sorted(
        p
        for p in [*repo.glob("*.py"), *repo.glob("*.yaml"), *repo.glob("profiles/*.yaml")]
        if p.is_file()
    )
    bundled = resources.files("ml_platform") / "contracts" / "readings.yaml"
    return files_version(*files, Path(contract) if contract else bundled, salt=str(profile or ""))


def import_feast_unchecked() -> None:
    """Make the process's first ``import feast`` skip typeguard's ``@typechecked``.

    Feast decorates its classes with it, and the decorator re-parses and recompiles each class from
    source at import (3 to 4 s per process here) and type-checks every call after that. typeguard
    documents it as a development aid that ``python -O`` turns off; this turns it off for Feast
    alone (no other installed package uses typeguard), leaving ``assert`` working.
    """
    import sys

    if "feast" in sys.modules:
        return
    try:
        import typeguard
    except ImportError:  # a Feast release without typeguard: nothing to turn off
        return
    typeguard.typechecked = _unchecked


def _unchecked(target=None, **_options):
    """``typeguard.typechecked`` that returns what it decorates unchanged, as under ``-O``."""
    return target if target is not None else _unchecked


def load_repo_contents(repo_path: Path, project: str):
    """The Feast objects of the repo, collected by Feast's own parser (``feast apply``'s): every
    kind Feast knows, on-demand and stream views, permissions and projects included.

    ``parse_repo`` imports each file as a module named after its path relative to the working
    directory, as the CLI does from inside the repo; here that happens in a private import context,
    so a long-lived process always sees the current files and keeps its own working directory.
    """
    import_feast_unchecked()
    from feast.project import Project
    from feast.repo_operations import parse_repo

    repo = Path(repo_path).resolve()
    with _importable(repo):
        contents = parse_repo(repo)
    named = {p.name for p in contents.projects}
    if len(named) > 1 or (named and named != {project}):
        raise ValueError(
            f"{repo}: the repo defines project(s) {sorted(named)}, but the profile's project is "
            f"{project!r}; `feast apply` refuses this too"
        )
    if not named:  # as `feast apply`: the profile names the project
        contents.projects.append(Project(name=project))
    return contents


@contextmanager
def _importable(repo: Path):
    """Run with ``repo`` as working directory and on ``sys.path``, with none of its modules cached
    before or after."""
    import sys

    from feast.repo_operations import get_repo_files, py_path_to_module

    cwd, entry = os.getcwd(), str(repo)
    os.chdir(repo)
    sys.path.insert(0, entry)
    # The names parse_repo imports the files under (relative to the working directory).
    names = [py_path_to_module(f) for f in get_repo_files(repo)]
    for name in names:
        sys.modules.pop(name, None)
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.path.remove(entry)
        os.chdir(cwd)


def registry_hash(store, service: str = FEATURE_SERVICE) -> str:
    """A hash of what the registry says the feature service serves: the service, its views and
    entities (specs only; registry timestamps left out, so re-applying the same definitions keeps
    the hash)."""
    import hashlib

    project = store.config.project
    feature_service = store.registry.get_feature_service(service, project)
    specs = [feature_service.to_proto().spec.SerializeToString(deterministic=True)]
    for projection in feature_service.feature_view_projections:
        view = store.registry.get_feature_view(projection.name, project)
        specs.append(view.to_proto().spec.SerializeToString(deterministic=True))
        for entity in view.entities:
            specs.append(
                store.registry.get_entity(entity, project)
                .to_proto()
                .spec.SerializeToString(deterministic=True)
            )
    return hashlib.sha256(b"".join(sorted(specs))).hexdigest()[:16]


def postgres_url(offline_store: dict) -> str:
    """SQLAlchemy URL (psycopg 3, as Feast uses) of the profile's PostgreSQL offline store."""
    from urllib.parse import quote

    cfg = offline_store
    user, password = (
        quote(str(cfg["user"]), safe=""),
        quote(str(cfg.get("password") or ""), safe=""),
    )
    sslmode = cfg.get("sslmode") or "require"
    return (
        f"postgresql+psycopg://{user}:{password}@{cfg['host']}:{cfg.get('port', 5432)}"
        f"/{cfg['database']}?sslmode={sslmode}"
    )


def publish_offline_days(profile: Profile, days: list[str], rows) -> int:
    """Replace the gold rows of ``days`` in the PostgreSQL offline table, in one transaction."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url(profile.config["offline_store"]))
    schema = profile.offline_schema
    try:
        with engine.begin() as con:
            con.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            if sa.inspect(con).has_table(OFFLINE_TABLE, schema=schema):
                con.execute(
                    sa.text(f"DELETE FROM {profile.offline_table} WHERE day = ANY(:days)"),
                    {"days": list(days)},
                )
            if len(rows):
                rows.to_sql(OFFLINE_TABLE, con, schema=schema, if_exists="append", index=False)
    finally:
        engine.dispose()
    return len(rows)


def service_features(service) -> list[str]:
    """Feature names a Feast feature service serves, in its order."""
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def features_at(feature_store, entities, service: str = FEATURE_SERVICE):
    """Point-in-time feature values of the feature service for each entity row (``sensor_id``,
    ``event_timestamp``), aligned with ``entities``' rows; missing values where the store has
    none. Feast's file store drops and reorders entity rows, so rows are
    matched back by position, never by order."""
    import pandas as pd

    served = feature_store.get_feature_service(service)
    asked = pd.DataFrame(
        {
            "sensor_id": entities["sensor_id"].astype(str).to_numpy(),
            "event_timestamp": pd.to_datetime(entities["event_timestamp"], utc=True).array,
            "_row": range(len(entities)),
        }
    )
    got = feature_store.get_historical_features(entity_df=asked, features=served).to_df()
    names = service_features(served)
    aligned = asked[["_row"]].merge(got[["_row", *names]], on="_row", how="left")
    return aligned.sort_values("_row").drop(columns="_row").set_axis(entities.index)


def _online_seconds(feature_store, view: str, feature: str, sensors: list[str]) -> list:
    """Event time (epoch seconds) of each sensor's row in the online store, None if it has none.

    Judged by the timestamp, not the value: a stored row may hold a missing value (a trailing
    feature after a week of silence) and is still newer data.
    """
    got = feature_store.get_online_features(
        features=[f"{view}:{feature}"], entity_rows=[{"sensor_id": s} for s in sensors]
    ).to_dict(include_event_timestamps=True)
    return [ts if ts else None for ts in got[f"{feature}__ts"]]


def publish_online_days(feature_store, rows, names: dict[str, list[str]]) -> dict[str, dict]:
    """Write the gold ``rows`` of a range of days (column ``day``) to the online store and report
    on each day.

    Only each sensor's newest row of the range is written, view by view, through Feast's online
    write path (an older day's row would be overwritten by the newer one anyway), and only where
    the online row is not already newer (a backfill never regresses what is served); then the
    written values are read back once for the whole range.
    """
    rows = rows.assign(sensor_id=rows["sensor_id"].astype(str))
    newest = rows.sort_values(["event_timestamp", "day"]).groupby("sensor_id").tail(1)
    written = _write_newest(feature_store, newest, names)
    stats = names[DAILY_STATS_VIEW]
    answer = _online_values(feature_store, stats, sorted(set(rows["sensor_id"])))
    just_written = newest.set_index("sensor_id").loc[sorted(written[DAILY_STATS_VIEW])]
    got = answer.loc[just_written.index, stats].astype("float64")
    want = just_written[stats].astype("float64")
    differ = set(got.index[~((got == want) | (got.isna() & want.isna())).all(axis=1)])
    unanswered = set(answer.index[answer[stats].isna().all(axis=1)])
    newest_day = dict(zip(newest["sensor_id"], newest["day"], strict=True))
    reports = {}
    for day, group in rows.groupby("day"):
        sensors = set(group["sensor_id"])
        mine = {s for s in sensors if newest_day[s] == day}  # this day's rows are the newest
        reports[str(day)] = {
            "written": {view: len(mine & w) for view, w in written.items()},
            "kept_newer_online": {view: len(sensors - (mine & w)) for view, w in written.items()},
            "sensors_without_answer": len(sensors & unanswered),
            "values_not_as_written": len(mine & differ),
        }
    return reports


def _write_newest(feature_store, newest, names: dict[str, list[str]]) -> dict[str, set[str]]:
    """Each view's rows of ``newest`` (one per sensor) that are not older than the online row,
    written; returns the sensors written per view."""
    import pandas as pd

    sensors = newest["sensor_id"].tolist()
    row_seconds = newest["event_timestamp"].map(lambda t: int(t.timestamp()))
    written = {}
    for view in VIEWS:
        online = pd.Series(
            _online_seconds(feature_store, view, names[view][0], sensors), index=newest.index
        )
        fresh = (online.isna() | (online <= row_seconds)).to_numpy()
        batch = newest.loc[
            fresh, ["sensor_id", "event_timestamp", "created_timestamp", *names[view]]
        ]
        if len(batch):
            feature_store.write_to_online_store(view, batch)
        written[view] = set(batch["sensor_id"])
    return written


def _online_values(feature_store, features: list[str], sensors: list[str]):
    """The online values of the daily-stats ``features`` for ``sensors``, indexed by sensor."""
    return (
        feature_store.get_online_features(
            features=[f"{DAILY_STATS_VIEW}:{n}" for n in features],
            entity_rows=[{"sensor_id": s} for s in sensors],
        )
        .to_df()
        .set_index("sensor_id")
    )
