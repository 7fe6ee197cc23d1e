"""``failure_model[week]`` (MLflow-tracked training) and ``champion_model`` (measured promotion)."""

import json
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from ml_platform.defs.automation import ON_ANY_NEW_PARENT
from ml_platform.defs.metadata import object_uri, table
from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.partitions import weekly
from ml_platform.defs.resources import LakeResource, MLflowResource
from ml_platform.lib import paths
from ml_platform.lib.failure_model import (
    DEFAULT_SPACE,
    FittedFailureModel,
    HoldoutScores,
    fit_failure_model,
    run_metrics,
    run_params,
    score_on_holdout,
)
from ml_platform.lib.promotion import (
    Contender,
    PromotionRules,
    append_to_ledger,
    decide,
    holdout_value,
    ledger_rows,
)
from ml_platform.lib.store import read_frame
from ml_platform.lib.versions import files_version

if TYPE_CHECKING:
    import pandas as pd

    from ml_platform.lib.store import ObjectStore

MODEL_NAME = "failure_model"
EXPERIMENT = "failure_model"
CHAMPION, PREVIOUS = "champion", "previous_champion"
#: Changes with the training code (recorded on every MLflow run and model version).
TRAINING_CODE_VERSION = files_version(
    __file__,
    *(
        Path(paths.__file__).with_name(m)
        for m in ("modeling.py", "training.py", "failure_model.py")
    ),
)
#: Training runs share this pool; dagster.yaml limits every pool to one step at a time.
TRAINING_POOL = "model_training"
BEATS_BASELINE = "failure_model_beats_baseline"
VALID_PROBABILITIES = "failure_model_probabilities_are_valid"
F1_FLOOR = "failure_model_meets_f1_floor"


class FailureModelConfig(dg.Config):
    """Search space and budget of one training run (set in the launchpad or run config)."""

    search: str = "randomized"  # "grid" or "randomized"
    n_iter: int = 4  # candidates drawn by the randomized search
    cv_splits: int = 3  # expanding-window folds over whole days
    param_space: dict[str, list[float]] = DEFAULT_SPACE
    holdout_days: int = 28  # the most recent days of the window, frozen with the model
    threshold: float = 0.5  # probability from which a sensor-day is predicted to fail
    baseline_margin: float = 0.1  # holdout F1 must beat the baseline's by this much
    f1_floor: float = 0.3
    seed: int = 0


#: What the two weekly training assets share: the week's training set in, one training at a time.
_WEEKLY_TRAINING_ASSET = {
    "partitions_def": weekly,
    "deps": [training_set],
    "group_name": "ml",
    "kinds": {"scikitlearn", "mlflow"},
    "owners": ["team:ml"],
    "pool": TRAINING_POOL,
    "code_version": TRAINING_CODE_VERSION,
}


def _run_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """MLflow run tags that lead back to the Dagster run, partition and code."""
    return {
        "dagster.run_id": context.run.run_id,
        "dagster.partition": context.partition_key,
        "dagster.asset": context.asset_key.to_user_string(),
        "dagster.code_version": TRAINING_CODE_VERSION,
    }


def _pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference of them costs ~9 s per model."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "scipy")]


@dataclass
class _TrainedWeek:
    """One week's model, judged on its holdout, with the files its MLflow run logs."""

    fitted: FittedFailureModel
    judged: HoldoutScores
    train_seconds: float
    holdout_file: Path
    holdout_key: str  # where the frozen holdout is in the lake
    confusion: dict[str, int]  # holdout cells at the version's threshold (tn, fp, fn, tp)
    plots: list[Path]


def _week_training_set(store: "ObjectStore", week: str) -> tuple["pd.DataFrame", float]:
    """The week's accepted training set and the label horizon its manifest records."""
    frame = read_frame(store, [paths.training_set_object(week)])
    manifest = json.loads(store.read_bytes(paths.training_manifest_object(week)))
    return frame, manifest["horizon_days"]


def _freeze_holdout(
    store: "ObjectStore", holdout: "pd.DataFrame", tmp: Path, week: str, run_id: str
) -> tuple[Path, str]:
    """The holdout as a local file (for the MLflow run) and its key in the lake."""
    # The holdout is frozen beside the model: every later comparison uses exactly these rows.
    holdout_file = tmp / "holdout.parquet"
    holdout.to_parquet(holdout_file, index=False)
    # Keyed by run: a re-run of the week never changes what earlier versions were judged on.
    holdout_key = paths.model_holdout_object(MODEL_NAME, week, run_id)
    store.put_file(holdout_file, holdout_key)
    return holdout_file, holdout_key


def _train_week(
    context: dg.AssetExecutionContext,
    store: "ObjectStore",
    config: FailureModelConfig,
    tmp: Path,
    started: float,
) -> _TrainedWeek:
    """Train on the week's set, judge on its holdout, freeze the holdout and draw the plots."""
    from ml_platform.lib import modeling

    week = context.partition_key
    fitted = fit_failure_model(*_week_training_set(store, week), config)
    train_seconds = time.perf_counter() - started
    judged = score_on_holdout(fitted, config.threshold)
    holdout_file, holdout_key = _freeze_holdout(
        store, fitted.holdout, tmp, week, context.run.run_id
    )
    actual = fitted.holdout[modeling.TARGET]
    confusion = modeling.confusion_counts(actual, judged.proba, config.threshold)
    plots = modeling.plots(
        fitted.search.model,
        fitted.holdout,
        fitted.features,
        tmp / "plots",
        config.seed,
        confusion=confusion,
    )
    return _TrainedWeek(fitted, judged, train_seconds, holdout_file, holdout_key, confusion, plots)


def _gates(judged: HoldoutScores, config: FailureModelConfig) -> dict[str, bool]:
    """Whether each blocking check of failure_model passes."""
    return {
        BEATS_BASELINE: judged.scores["f1"] >= judged.baseline["f1"] + config.baseline_margin,
        VALID_PROBABILITIES: judged.valid,
        F1_FLOOR: judged.scores["f1"] >= config.f1_floor,
    }


def _log_failure_model_run(
    context: dg.AssetExecutionContext,
    ml: Any,
    experiment_id: str,
    config: FailureModelConfig,
    trained: _TrainedWeek,
    training_set_uri: str,
) -> tuple[Any, str]:
    """The week's MLflow run (params, metrics, plots, holdout and model), registering the model
    as a new version of failure_model: the run and that version."""
    from mlflow.models import infer_signature

    fitted, judged = trained.fitted, trained.judged
    result, sample = fitted.search, fitted.holdout[fitted.features]
    with ml.start_run(
        experiment_id=experiment_id,
        run_name=f"failure_model {context.partition_key}",
        tags=_run_tags(context),
    ) as run:
        ml.log_params(run_params(fitted, config))
        ml.log_input(_training_dataset(fitted, training_set_uri), context="training")
        ml.log_dict({"space": config.param_space, "best": result.best_params}, "search_space.json")
        for plot in trained.plots:
            ml.log_artifact(str(plot), "plots")
        ml.log_artifact(str(trained.holdout_file), "holdout")
        rows = sample.head(100)  # the signature describes the same rows on both sides
        info = ml.sklearn.log_model(
            sk_model=result.model,
            name="model",
            # The pyfunc flavour (`mlflow models serve`, pyfunc.load_model) answers with the class
            # probabilities [no failure, failure], as the signature says, not with 0/1 labels.
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(rows, result.model.predict_proba(rows)),
            input_example=sample.head(3),
            registered_model_name=MODEL_NAME,
            serialization_format="cloudpickle",  # skops would need every tree type trusted
            pip_requirements=_pip_requirements(),
        )
        # On the run and on the logged model: the model's page in MLflow shows its holdout scores.
        metrics = run_metrics(result.cv_metrics, judged.scores, judged.baseline, trained.confusion)
        ml.log_metrics({**metrics, "train_seconds": trained.train_seconds}, model_id=info.model_id)
    return run, str(info.registered_model_version)


def _training_dataset(fitted: FittedFailureModel, source: str) -> Any:
    """The rows the model was fitted on, as an MLflow dataset whose source is the training set
    in the lake."""
    import mlflow.data

    return mlflow.data.from_pandas(fitted.train, source=source, name="training_set")


def _version_tags(
    context: dg.AssetExecutionContext,
    store: "ObjectStore",
    config: FailureModelConfig,
    trained: _TrainedWeek,
    passed: dict[str, bool],
) -> dict[str, str]:
    """The tags of the new model version: what champion_model judges it on."""
    return {
        "week": context.partition_key,
        "holdout": store.uri(trained.holdout_key),
        "holdout_key": trained.holdout_key,
        "threshold": str(config.threshold),
        "holdout_f1": f"{trained.judged.scores['f1']:.6f}",
        # champion_model refuses a version whose blocking checks failed, whichever run
        # promotes it.
        "quality_gate": "passed" if all(passed.values()) else "failed",
        "dagster.run_id": context.run.run_id,
    }


def _failure_model_metadata(
    store: "ObjectStore", trained: _TrainedWeek, run_id: str, run_url: str, version: str
) -> dict[str, Any]:
    result, scores = trained.fitted.search, trained.judged.scores
    return {
        "mlflow_run": dg.MetadataValue.url(run_url)
        if run_url.startswith("http")
        else dg.MetadataValue.text(run_url),
        "mlflow_run_id": run_id,
        "model_name": MODEL_NAME,
        "model_version": version,
        "holdout_f1": scores["f1"],
        "baseline_f1": trained.judged.baseline["f1"],
        "holdout_roc_auc": scores["roc_auc"],
        "holdout_pr_auc": scores["pr_auc"],
        "cv_f1": result.cv_metrics["cv_f1"],
        "best_params": dg.MetadataValue.json({k: float(v) for k, v in result.best_params.items()}),
        # The one object the asset writes to the lake (the model itself is in MLflow).
        **object_uri(store, trained.holdout_key),
        "train_rows": len(trained.fitted.train),
        "holdout_rows": len(trained.fitted.holdout),
        "train_seconds": round(trained.train_seconds, 3),
        **_plot_metadata(trained.plots),
    }


def _plot_metadata(plots: list[Path]) -> dict[str, dg.MetadataValue]:
    """Each evaluation plot as an image on the asset's page (the same PNG as in the MLflow run):
    markdown with the image inline, which Dagster's UI renders."""
    import base64

    return {
        f"plot_{plot.stem}": dg.MetadataValue.md(
            f"![{plot.stem}](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})"
        )
        for plot in plots
    }


def _failure_model_checks(
    judged: HoldoutScores, passed: dict[str, bool], config: FailureModelConfig
) -> list[dg.AssetCheckResult]:
    f1 = judged.scores["f1"]
    return [
        dg.AssetCheckResult(
            check_name=BEATS_BASELINE,
            passed=passed[BEATS_BASELINE],
            metadata={
                "holdout_f1": f1,
                "baseline_f1": judged.baseline["f1"],
                "margin": config.baseline_margin,
            },
        ),
        dg.AssetCheckResult(
            check_name=VALID_PROBABILITIES,
            passed=judged.valid,
            metadata={"rows": len(judged.proba)},
        ),
        dg.AssetCheckResult(
            check_name=F1_FLOOR,
            passed=passed[F1_FLOOR],
            metadata={"holdout_f1": f1, "floor": config.f1_floor},
        ),
    ]


@dg.asset(
    **_WEEKLY_TRAINING_ASSET,
    check_specs=[
        dg.AssetCheckSpec(
            BEATS_BASELINE,
            asset="failure_model",
            blocking=True,
            description="Holdout F1 beats the DummyClassifier baseline's by baseline_margin.",
        ),
        dg.AssetCheckSpec(
            VALID_PROBABILITIES,
            asset="failure_model",
            blocking=True,
            description="Every holdout probability is a number in [0, 1].",
        ),
        dg.AssetCheckSpec(
            F1_FLOOR,
            asset="failure_model",
            blocking=True,
            description="Holdout F1 is at least f1_floor.",
        ),
    ],
)
def failure_model(
    context: dg.AssetExecutionContext,
    config: FailureModelConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """The week's failure classifier: searched over date folds, checked on the frozen holdout,
    logged to MLflow with its baseline and plots, registered as a new version of failure_model."""
    started = time.perf_counter()
    store = lake.store()
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        trained = _train_week(context, store, config, Path(tmp), started)
        passed = _gates(trained.judged, config)
        client, ml = mlflow.client(), mlflow.mlflow()
        experiment_id = mlflow.experiment(EXPERIMENT)
        training_set_uri = store.uri(paths.training_set_object(context.partition_key))
        run, version = _log_failure_model_run(
            context, ml, experiment_id, config, trained, training_set_uri
        )
        for key, value in _version_tags(context, store, config, trained, passed).items():
            client.set_model_version_tag(MODEL_NAME, version, key, value)
        run_url = mlflow.run_url(experiment_id, run.info.run_id)
        # Inside the temporary folder: the metadata carries the plots it holds.
        metadata = _failure_model_metadata(store, trained, run.info.run_id, run_url, version)
    return dg.MaterializeResult(
        metadata={**metadata, "seconds": round(time.perf_counter() - started, 3)},
        check_results=_failure_model_checks(trained.judged, passed, config),
    )


class ChampionConfig(dg.Config):
    """How the champion is chosen. ``force`` promotes the newest version whatever the comparison
    and its quality gate say; ``pin_version`` makes a given version champion (a rollback)."""

    metric: str = "f1"  # measured on the challenger's frozen holdout
    margin: float = 0.01  # the challenger must beat the champion by this much
    force: bool = False  # promote the challenger whatever the comparison says
    pin_version: int | None = None  # make this version champion (a rollback, say)


def _who(context: dg.AssetExecutionContext) -> str:
    tags = context.run.tags
    for tag, kind in (
        ("dagster/schedule_name", "schedule"),
        ("dagster/sensor_name", "sensor"),
        ("dagster/backfill", "backfill"),
    ):
        if tag in tags:
            return f"{kind} {tags[tag]} (run {context.run.run_id[:8]})"
    if "dagster/from_automation_condition" in tags:
        return f"automation (run {context.run.run_id[:8]})"
    return f"manual run {context.run.run_id[:8]}"


def _registered_versions(client: Any, metric: str) -> list:
    """Every registered version of failure_model; a Failure when there is none or ``metric`` is
    not one the holdout is scored on."""
    from ml_platform.lib import modeling

    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    if not versions:
        raise dg.Failure(f"no version of {MODEL_NAME} is registered yet: train one first")
    if metric not in modeling.METRICS:
        raise dg.Failure(
            f"unknown metric {metric!r}; one of {modeling.METRICS}", allow_retries=False
        )
    return versions


def _challenger(client: Any, versions: list, pin_version: int | None):
    """The pinned version, else the newest version trained on the newest week."""
    if pin_version is not None:
        return client.get_model_version(MODEL_NAME, str(pin_version))
    # A version whose tags were never written (its run died after registering) cannot be judged
    # and is skipped.
    judged = [v for v in versions if "holdout_key" in v.tags and "week" in v.tags]
    if not judged:
        raise dg.Failure(f"no version of {MODEL_NAME} has a frozen holdout yet")
    return max(judged, key=lambda v: (v.tags["week"], int(v.version)))


def _contender(ml: Any, version: Any, holdout: "pd.DataFrame", metric: str) -> Contender:
    """``version`` loaded from the registry and scored on ``holdout`` at its own threshold."""
    model = ml.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
    threshold = float(version.tags.get("threshold", 0.5))
    value = holdout_value(model, holdout, threshold, metric)
    return Contender(version.version, version.tags.get("week", ""), value)


def _ledger_entry(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    decision: tuple[bool, str],
    challenger: Contender,
    champion: Contender | None,
    holdout_key: str,
) -> dict[str, Any]:
    promote, reason = decision
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": _who(context),
        "decision": "promoted" if promote else "kept",
        "challenger": int(challenger.version),
        "champion_before": int(champion.version) if champion is not None else None,
        "metric": config.metric,
        "challenger_value": round(challenger.value, 6),
        "champion_value": None if champion is None else round(champion.value, 6),
        "holdout": holdout_key,
        "reason": reason,
        "dagster_run_id": context.run.run_id,
    }


def _champion_metadata(
    current: Any,
    entry: dict[str, Any],
    challenger: Contender,
    champion: Contender | None,
    ledger: list[dict],
) -> dict[str, Any]:
    """What champion_model reports: the champion after the decision, the decision, the ledger."""
    metric = entry["metric"]
    return {
        "champion_version": int(current.version) if current else -1,
        "champion_week": current.tags.get("week", "") if current else "",
        "decision": entry["decision"],
        "reason": entry["reason"],
        "challenger_version": int(challenger.version),
        f"challenger_{metric}": challenger.value,
        f"champion_{metric}": champion.value if champion is not None else -1.0,
        "ledger": table(ledger_rows(ledger)),
    }


def _promote(client: Any, challenger: Contender, champion: Contender | None) -> None:
    """Move the champion alias to the challenger, keeping the old champion as the previous one."""
    if champion is not None:
        client.set_registered_model_alias(MODEL_NAME, PREVIOUS, champion.version)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, challenger.version)


@dg.asset(
    # Every week's version is a challenger, not only the newest week's: a first model, a drift
    # retraining or a backfill of an older week is judged too, while newer weeks stay untrained.
    deps=[dg.AssetDep(failure_model, partition_mapping=dg.AllPartitionMapping())],
    group_name="ml",
    kinds={"mlflow"},
    owners=["team:ml"],
    pool=TRAINING_POOL,
    automation_condition=ON_ANY_NEW_PARENT,
)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """Which failure_model version holds the ``champion`` alias, chosen by measurement: the newest
    version (the challenger) and the current champion are scored on the challenger's frozen
    holdout, and the alias moves only when the challenger wins by ``margin``. Every decision is
    appended to the promotion ledger (``lake/ml/failure_model/promotions.json``)."""
    store, client, ml = lake.store(), mlflow.client(), mlflow.mlflow()
    versions = _registered_versions(client, config.metric)
    champion_version = mlflow.alias_version(MODEL_NAME, CHAMPION)
    challenger_version = _challenger(client, versions, config.pin_version)
    holdout_key = challenger_version.tags["holdout_key"]
    holdout = read_frame(store, [holdout_key])
    challenger = _contender(ml, challenger_version, holdout, config.metric)
    champion = (
        _contender(ml, champion_version, holdout, config.metric)
        if champion_version is not None
        else None
    )
    gate = challenger_version.tags.get("quality_gate", "failed")
    rules = PromotionRules(config.metric, config.margin, config.force, config.pin_version)
    promote, reason = decide(challenger, champion, gate, rules)
    if promote:
        _promote(client, challenger, champion)
    entry = _ledger_entry(context, config, (promote, reason), challenger, champion, holdout_key)
    ledger_key = paths.promotion_ledger_object(MODEL_NAME)
    ledger = append_to_ledger(store, ledger_key, entry)
    current = challenger_version if promote else champion_version
    context.log.info(f"{entry['decision']} version {challenger.version}: {reason}")
    metadata = {
        **_champion_metadata(current, entry, challenger, champion, ledger),
        **object_uri(store, ledger_key),  # the promotion ledger, the object it writes
    }
    return dg.MaterializeResult(metadata=metadata)


CLUSTER_MODEL = "sensor_clusters"
CLUSTER_ALIAS = "current"
NO_EMPTY_CLUSTER = "sensor_clusters_have_no_empty_cluster"
SILHOUETTE_FLOOR = "sensor_clusters_silhouette_above_floor"


class ClusterConfig(dg.Config):
    n_clusters: int = 4  # used when there is no previous version to start from
    warm_start: bool = True  # start from the previous version's centres (continuous training)
    silhouette_floor: float = 0.05
    seed: int = 0


def _warm_start(
    context: dg.AssetExecutionContext, ml: Any, previous: Any, features: list[str]
) -> Any:
    """The previous version's model when its features are still ``features``, else None."""
    candidate = ml.sklearn.load_model(f"models:/{CLUSTER_MODEL}/{previous.version}")
    if list(getattr(candidate, "feature_names_in_", [])) == features:
        return candidate
    context.log.warning("features changed since the previous version: cold start")
    return None


@dataclass
class _WeekClusters:
    """One week's fitted clusters and what their MLflow run and checks report."""

    model: Any  # the scaler + K-means pipeline
    init: Any  # the centres K-means started from (None: its own initialisation)
    report: dict[str, Any]  # sizes, silhouette and inertia
    warm: Any  # the previous version's model it warm-started from, or None
    warm_from: str  # that version's number, "" for a cold start


def _fit_week_clusters(
    context: dg.AssetExecutionContext,
    config: ClusterConfig,
    mlflow: MLflowResource,
    frame: "pd.DataFrame",
    features: list[str],
) -> _WeekClusters:
    """Clusters of the week's sensor-days, from the ``current`` version's centres when allowed."""
    from ml_platform.lib import modeling

    previous = mlflow.alias_version(CLUSTER_MODEL, CLUSTER_ALIAS)
    warm = None
    if config.warm_start and previous is not None:
        warm = _warm_start(context, mlflow.mlflow(), previous, features)
    model, init = modeling.fit_clusters(
        frame, features, config.n_clusters, warm_start=warm, seed=config.seed
    )
    report = modeling.cluster_report(model, frame, features, config.seed)
    warm_from = str(previous.version) if warm is not None else ""
    return _WeekClusters(model, init, report, warm, warm_from)


def _log_cluster_run(
    context: dg.AssetExecutionContext,
    mlflow: MLflowResource,
    clusters: _WeekClusters,
    frame: "pd.DataFrame",
    features: list[str],
) -> tuple[Any, str]:
    """The week's MLflow run of the clusters, registering them as a new version of
    sensor_clusters: the run and that version."""
    ml, model, report = mlflow.mlflow(), clusters.model, clusters.report
    with ml.start_run(
        experiment_id=mlflow.experiment(CLUSTER_MODEL),
        run_name=f"sensor_clusters {context.partition_key}",
        tags={**_run_tags(context), "warm_start_from": clusters.warm_from},
    ) as run:
        ml.log_params(
            {"n_clusters": model[-1].n_clusters, "rows": len(frame), "warm": bool(clusters.warm)}
        )
        ml.log_metrics(
            {
                "silhouette": report["silhouette"],
                "inertia": report["inertia"],
                **{f"size_{i}": n for i, n in enumerate(report["sizes"])},
            }
        )
        ml.log_dict(
            {
                "initial_centres": None if clusters.init is None else clusters.init.tolist(),
                "centres": model[-1].cluster_centers_.tolist(),
            },
            "centres.json",
        )
        info = ml.sklearn.log_model(
            sk_model=model,
            name="model",
            input_example=frame[features].head(3),
            registered_model_name=CLUSTER_MODEL,
            serialization_format="cloudpickle",
            pip_requirements=_pip_requirements(),
        )
    return run, str(info.registered_model_version)


def _cluster_gates(report: dict[str, Any], config: ClusterConfig) -> dict[str, bool]:
    """Whether each blocking check of sensor_clusters passes."""
    return {
        NO_EMPTY_CLUSTER: min(report["sizes"]) > 0,
        SILHOUETTE_FLOOR: report["silhouette"] >= config.silhouette_floor,
    }


def _tag_cluster_version(
    client: Any, version: str, week: str, warm_from: str, passed: dict[str, bool]
) -> None:
    """Record the version's week and origin; ``current`` moves only to a version that passed."""
    client.set_model_version_tag(CLUSTER_MODEL, version, "week", week)
    client.set_model_version_tag(CLUSTER_MODEL, version, "warm_start_from", warm_from)
    if all(passed.values()):
        client.set_registered_model_alias(CLUSTER_MODEL, CLUSTER_ALIAS, version)


def _cluster_checks(
    report: dict[str, Any], passed: dict[str, bool], config: ClusterConfig
) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=NO_EMPTY_CLUSTER,
            passed=passed[NO_EMPTY_CLUSTER],
            metadata={"sizes": dg.MetadataValue.json(report["sizes"])},
        ),
        dg.AssetCheckResult(
            check_name=SILHOUETTE_FLOOR,
            passed=passed[SILHOUETTE_FLOOR],
            metadata={"silhouette": report["silhouette"], "floor": config.silhouette_floor},
        ),
    ]


@dg.asset(
    **_WEEKLY_TRAINING_ASSET,
    check_specs=[
        dg.AssetCheckSpec(
            NO_EMPTY_CLUSTER,
            asset="sensor_clusters",
            blocking=True,
            description="Every cluster holds at least one sensor-day.",
        ),
        dg.AssetCheckSpec(
            SILHOUETTE_FLOOR,
            asset="sensor_clusters",
            blocking=True,
            description="The silhouette score is at least silhouette_floor.",
        ),
    ],
)
def sensor_clusters(
    context: dg.AssetExecutionContext,
    config: ClusterConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """Behaviour clusters of sensor-days over the week's training features (K-means). Each
    version warm-starts from the previous one's centres, so cluster ids stay comparable; the
    ``current`` alias follows the newest version that passes its checks."""
    from ml_platform.lib import modeling

    started = time.perf_counter()
    store, client = lake.store(), mlflow.client()
    frame = read_frame(store, [paths.training_set_object(context.partition_key)])
    features = modeling.feature_columns(frame)
    clusters = _fit_week_clusters(context, config, mlflow, frame, features)
    report, passed = clusters.report, _cluster_gates(clusters.report, config)
    run, version = _log_cluster_run(context, mlflow, clusters, frame, features)
    _tag_cluster_version(client, version, context.partition_key, clusters.warm_from, passed)
    return dg.MaterializeResult(
        metadata={
            "model_version": version,
            "warm_start_from": clusters.warm_from or "cold start",
            "cluster_sizes": dg.MetadataValue.json(report["sizes"]),
            "silhouette": report["silhouette"],
            "inertia": report["inertia"],
            "mlflow_run_id": run.info.run_id,
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=_cluster_checks(report, passed, config),
    )
