"""``daily_predictions[day]`` and ``scored_files[file]``: the champion's answers, as files."""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from ml_platform.defs.automation import eager_after_parents
from ml_platform.defs.features.assets import online_features
from ml_platform.defs.metadata import object_path, object_uri, row_counts, table
from ml_platform.defs.ml.models import (
    CHAMPION,
    CLUSTER_ALIAS,
    CLUSTER_MODEL,
    MODEL_NAME,
    champion_model,
    sensor_clusters,
)
from ml_platform.defs.monitoring.assets import drift_gate, feature_drift
from ml_platform.defs.partitions import daily, scoring_files
from ml_platform.defs.resources import (
    AliasUnresolved,
    FeastResource,
    LakeResource,
    MLflowResource,
)
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.quarantine import keep_rejected
from ml_platform.lib.store import read_prefixes, write_frame

COVERS_EVERY_SENSOR = "daily_predictions_cover_every_sensor"
VALID = "daily_predictions_probabilities_are_valid"


class PredictionConfig(dg.Config):
    """Pin the model version (re-running an old day with the model it used); default: the
    version holding the ``champion`` alias when the run starts."""

    model_version: int | None = None
    # Predict even when the day's drift gate is closed (the drift was understood and accepted).
    ignore_drift_gate: bool = False


@dataclass
class Scorer:
    """The models of one run, resolved once: every row it writes names the same versions."""

    model: Any
    version: str
    run_id: str
    threshold: float
    clusters: Any | None
    cluster_version: str | None

    @classmethod
    def resolve(cls, mlflow: MLflowResource, pinned: int | None) -> "Scorer":
        from mlflow.exceptions import MlflowException

        client, ml = mlflow.client(), mlflow.mlflow()
        if pinned is not None:
            try:
                version = client.get_model_version(MODEL_NAME, str(pinned))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise dg.Failure(
                    f"pinned {MODEL_NAME} version {pinned} does not exist (deleted?)",
                    allow_retries=False,
                ) from exc
        else:
            try:
                version = mlflow.require_alias(MODEL_NAME, CHAMPION)
            except AliasUnresolved as exc:
                # Never a fallback to another version: the answer would name a model nobody chose.
                raise dg.Failure(
                    f"cannot score: {exc}. Promote a version with champion_model (pin_version "
                    "for a rollback), or pin model_version in run config",
                    allow_retries=False,
                ) from exc
        model = ml.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
        clusters = mlflow.alias_version(CLUSTER_MODEL, CLUSTER_ALIAS)
        return cls(
            model=model,
            version=str(version.version),
            run_id=version.run_id or "",
            threshold=float(version.tags.get("threshold", 0.5)),
            clusters=ml.sklearn.load_model(f"models:/{CLUSTER_MODEL}/{clusters.version}")
            if clusters
            else None,
            cluster_version=str(clusters.version) if clusters else None,
        )

    def score(self, feature_store, requests, dagster_run_id: str):
        """``requests`` (sensor_id, date) -> one prediction row each, in request order. Features
        are Feast's, point in time at the end of each date, as in training."""
        import pandas as pd

        from ml_platform.lib.lakehouse import end_of_day

        frame = requests[["sensor_id", "date"]].reset_index(drop=True)
        cutoffs = pd.to_datetime([end_of_day(d) for d in frame["date"]], utc=True)
        frame = frame.join(
            fs.features_at(feature_store, frame[["sensor_id"]].assign(event_timestamp=cutoffs))
        )
        features = list(self.model.feature_names_in_)
        known = frame[features].notna().any(axis=1)
        proba = self.model.predict_proba(frame[features])[:, 1]
        out = pd.DataFrame(
            {
                "sensor_id": frame["sensor_id"],
                "date": frame["date"],
                "failure_probability": proba,
                "predicted_failure": (proba >= self.threshold).astype("int64"),
                "threshold": self.threshold,
                "features_found": known,
                "cluster": pd.array(
                    self.clusters.predict(frame[list(self.clusters.feature_names_in_)])
                    if self.clusters is not None
                    else [None] * len(frame),
                    dtype="Int64",
                ),
                "model_name": MODEL_NAME,
                "model_version": self.version,
                "model_run_id": self.run_id,
                "cluster_model_version": self.cluster_version,
                "dagster_run_id": dagster_run_id,
            }
        )
        return out


def _last_promoted(context) -> int | None:
    """The version the latest champion_model materialization left as champion, if any."""
    event = context.instance.get_latest_materialization_event(champion_model.key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("champion_version")
    version = getattr(value, "value", value)
    return int(version) if isinstance(version, int) and version >= 0 else None


def _resolve_scorer(
    context: dg.AssetExecutionContext, mlflow: MLflowResource, pinned: int | None
) -> Scorer:
    """The run's Scorer; when no champion resolves, the Failure names the version the last
    champion_model run promoted (the alias was moved or deleted since)."""
    try:
        return Scorer.resolve(mlflow, pinned)
    except dg.Failure as failure:
        promoted = _last_promoted(context)
        if promoted is None or pinned is not None:
            raise
        raise dg.Failure(
            f"{failure.description} (the last champion_model run made version {promoted} "
            f"'{CHAMPION}')",
            allow_retries=False,
        ) from failure


def _require_open_drift_gate(store, day: str, ignore: bool) -> None:
    """A Failure when the day's drift gate is closed, unless the run ignores it."""
    report = drift_gate(store, day)
    if report and report["gate"] == "closed" and not ignore:
        raise dg.Failure(
            f"drift gate closed for {day}: {'; '.join(report['reasons'])}. Retraining "
            "is requested; set ignore_drift_gate to predict anyway",
            metadata={"report": store.uri(paths.drift_report_object(day))},
            allow_retries=False,
        )


def _predict_day(store, feature_store, scorer: Scorer, day: str, run_id: str):
    """The day's predictions for every sensor with aggregates, written as parquet and CSV; None
    when the day has no aggregates."""
    import pandas as pd

    gold = read_prefixes(store, [paths.aggregates_day_prefix(day)])
    if gold.empty:
        return None
    sensors = sorted(gold["sensor_id"].astype(str).unique())
    out = scorer.score(feature_store, pd.DataFrame({"sensor_id": sensors, "date": day}), run_id)
    write_frame(store, out, paths.predictions_object(day))
    write_frame(store, out, paths.predictions_object(day, "csv"), float_format="%.6f")
    return out


@dataclass
class _DaysScored:
    """What the days of one run produced, for the asset's metadata and checks."""

    per_day: dict[str, dict] = field(default_factory=dict)
    uncovered: list[str] = field(default_factory=list)  # days with a sensor lacking features
    invalid: list[str] = field(default_factory=list)  # days with an invalid probability
    preview: list[dict] = field(default_factory=list)  # the first rows of the first day scored

    def add(self, day: str, out) -> None:
        """Record ``day``'s predictions (None: the day had no aggregates)."""
        from ml_platform.lib.modeling import probabilities_are_valid

        if out is None:
            self.per_day[day] = {"sensors": 0}
            self.uncovered.append(day)
            return
        if not out["features_found"].all():
            self.uncovered.append(day)
        if not probabilities_are_valid(out["failure_probability"]):
            self.invalid.append(day)
        self.per_day[day] = {
            "sensors": len(out),
            "predicted_failures": int(out["predicted_failure"].sum()),
            "max_probability": round(float(out["failure_probability"].max()), 4),
        }
        self.preview = self.preview or out.head(5).to_dict("records")

    def days_table(self) -> dg.TableMetadataValue:
        """A row per day of the run: its sensors, predicted failures and highest probability."""
        columns = ("sensors", "predicted_failures", "max_probability")
        return table(
            [{"day": day, **{c: d.get(c) for c in columns}} for day, d in self.per_day.items()],
            columns=("day", *columns),
        )

    def written(self, store) -> dict[str, dg.MetadataValue]:
        """``dagster/uri``: the day's parquet file when the run scored one day (its CSV beside
        it), else the predictions zone."""
        days = list(self.per_day)
        if len(days) == 1 and self.per_day[days[0]]["sensors"]:
            return {
                **object_uri(store, paths.predictions_object(days[0])),
                "csv": object_path(store, paths.predictions_object(days[0], "csv")),
            }
        return object_uri(store, f"{paths.RESULTS}predictions/")

    def check_results(self) -> list[dg.AssetCheckResult]:
        return [
            dg.AssetCheckResult(
                check_name=COVERS_EVERY_SENSOR,
                passed=not self.uncovered,
                metadata={"days_failing": dg.MetadataValue.json(self.uncovered)},
            ),
            dg.AssetCheckResult(
                check_name=VALID,
                passed=not self.invalid,
                metadata={"days_failing": dg.MetadataValue.json(self.invalid)},
            ),
        ]


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[
        online_features,
        feature_drift,  # its blocking check is the drift gate
        champion_model,
        dg.AssetDep(sensor_clusters, partition_mapping=dg.LastPartitionMapping()),
    ],
    group_name="predictions",
    kinds={"mlflow", "parquet", "csv"},
    owners=["team:ml"],
    # Today and the day just ended follow new online features and every change of champion.
    # The newest week's clusters may not exist yet (Monday before the schedule): optional.
    automation_condition=eager_after_parents(days=2, optional=("sensor_clusters",)),
    # Predictions for the day just ended are expected by 08:00 UTC.
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="0 8 * * *", lower_bound_delta=timedelta(hours=24)
    ),
    check_specs=[
        dg.AssetCheckSpec(
            COVERS_EVERY_SENSOR,
            asset="daily_predictions",
            description="Every sensor with aggregates that day has a prediction.",
        ),
        dg.AssetCheckSpec(
            VALID, asset="daily_predictions", description="Probabilities are numbers in [0, 1]."
        ),
    ],
)
def daily_predictions(
    context: dg.AssetExecutionContext,
    config: PredictionConfig,
    lake: LakeResource,
    feast: FeastResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """One row per sensor of the day: failure probability, predicted label, behaviour cluster,
    and the model name, version and run that produced it, in
    ``results/predictions/date=D/predictions.parquet`` and ``.csv``."""
    started = time.perf_counter()
    store, feature_store = lake.store(), feast.store()
    scorer = _resolve_scorer(context, mlflow, config.model_version)
    context.log.info(f"scoring with {MODEL_NAME} version {scorer.version}")
    scored = _DaysScored()
    for day in context.partition_keys:
        _require_open_drift_gate(store, day, config.ignore_drift_gate)
        scored.add(day, _predict_day(store, feature_store, scorer, day, context.run.run_id))
    return dg.MaterializeResult(
        metadata={
            "model_name": MODEL_NAME,
            "model_version": scorer.version,
            "model_run_id": scorer.run_id,
            "cluster_model_version": scorer.cluster_version or "none",
            "days": scored.days_table(),
            **row_counts({day: d["sensors"] for day, d in scored.per_day.items()}),
            **scored.written(store),
            "preview": table(scored.preview, columns=7),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=scored.check_results(),
    )


@dg.asset(
    partitions_def=scoring_files,
    deps=[champion_model],
    group_name="predictions",
    kinds={"mlflow", "csv"},
    owners=["team:ml"],
)
def scored_files(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    feast: FeastResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """One uploaded scoring request (CSV of sensor_id, date) answered by the champion as
    ``results/scored/<name>.csv``; a malformed request is quarantined with its reason."""
    from ml_platform.lib.scoring import MalformedRequestError, read_request

    store = lake.store()
    relative_key, etag = paths.split_partition_key(context.partition_key)
    key = paths.landing_object("scoring", relative_key)
    if not store.exists(key):
        raise dg.Failure(f"{store.uri(key)} no longer exists", allow_retries=False)
    with store.local_copy(key, if_match=etag) as local:
        try:
            requests = read_request(local)
        except MalformedRequestError as bad:
            record = {
                "object": store.uri(key),
                "partition_key": context.partition_key,
                "etag": etag,
                "reason": bad.reason,
                "message": bad.message,
                "run_id": context.run.run_id,
                "rejected_at": datetime.now(UTC).isoformat(),
            }
            copy = keep_rejected(store, "scoring", context.partition_key, local, record)
            raise dg.Failure(
                f"{store.uri(key)} rejected ({bad.reason}): {bad.message}. Quarantined at {copy}",
                metadata={"reason": bad.reason, "quarantined": copy},
                allow_retries=False,
            ) from bad
    scorer = Scorer.resolve(mlflow, None)
    out = scorer.score(feast.store(), requests, context.run.run_id)
    target = paths.scored_object(relative_key)
    write_frame(store, out, target, float_format="%.6f")
    return dg.MaterializeResult(
        metadata={
            **object_uri(store, target),  # the answer file
            "request": object_path(store, key),
            "rows": len(out),
            "rows_without_features": int((~out["features_found"]).sum()),
            "model_version": scorer.version,
            "preview": table(out.head(5).to_dict("records"), 6),
        }
    )


scoring_job = dg.define_asset_job("scoring_job", selection=[scored_files])
