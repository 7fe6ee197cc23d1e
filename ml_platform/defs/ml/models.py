"""``failure_model[week]`` (MLflow-tracked training) and ``champion_model`` (measured promotion)."""

import json
import math
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from ml_platform.defs.automation import ON_ANY_NEW_PARENT
from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.partitions import weekly
from ml_platform.defs.resources import LakeResource, MLflowResource
from ml_platform.lib import paths
from ml_platform.lib.store import read_frame
from ml_platform.lib.tables import markdown_table
from ml_platform.lib.versions import files_version

if TYPE_CHECKING:
    import pandas as pd

    from ml_platform.lib.modeling import SearchResult

MODEL_NAME = "failure_model"
EXPERIMENT = "failure_model"
CHAMPION, PREVIOUS = "champion", "previous_champion"
#: Changes with the training code (recorded on every MLflow run and model version).
TRAINING_CODE_VERSION = files_version(
    __file__, *(Path(paths.__file__).with_name(m) for m in ("modeling.py", "training.py"))
)
#: Training runs share this pool; dagster.yaml limits every pool to one step at a time.
TRAINING_POOL = "model_training"
BEATS_BASELINE = "failure_model_beats_baseline"
VALID_PROBABILITIES = "failure_model_probabilities_are_valid"
F1_FLOOR = "failure_model_meets_f1_floor"


#: The default search space (pipeline step "model" is a HistGradientBoostingClassifier).
DEFAULT_SPACE: dict[str, list[float]] = {
    "model__learning_rate": [0.05, 0.1],
    "model__max_leaf_nodes": [15, 31],
    "model__l2_regularization": [0.0, 1.0],
    "model__max_iter": [150],
}


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


@dataclass
class FittedFailureModel:
    """One week's classifier before it is judged: what :func:`fit_failure_model` returns."""

    features: list[str]
    train: "pd.DataFrame"
    holdout: "pd.DataFrame"  # the last holdout_days days of the set, never trained on
    gap_days: int
    search: "SearchResult"  # the refitted best pipeline and its cross-validation scores
    baseline: Any  # what the model must beat


def fit_failure_model(
    frame: "pd.DataFrame", horizon_days: float, config: FailureModelConfig
) -> FittedFailureModel:
    """Split, search and baseline of one week's training set, as ``failure_model`` trains it
    (and ``ml-platform reproduce`` retrains it): deterministic for a given ``config.seed``."""
    from ml_platform.lib import modeling

    # A day's target looks `horizon` days ahead: that many days before the holdout (and before
    # each validation fold) are left out of training, so no failure labels both sides.
    gap_days = math.ceil(horizon_days)
    features = modeling.feature_columns(frame)
    train, holdout = modeling.split_holdout(frame, config.holdout_days, gap_days)
    result = modeling.search(
        train,
        features,
        space=config.param_space,
        method=config.search,
        n_iter=config.n_iter,
        cv_splits=config.cv_splits,
        gap_days=gap_days,
        seed=config.seed,
    )
    dummy = modeling.baseline(train, features, config.seed)
    return FittedFailureModel(features, train, holdout, gap_days, result, dummy)


def run_metrics(
    cv_metrics: dict[str, float], scores: dict[str, float], base: dict[str, float]
) -> dict[str, float]:
    """The metrics a failure_model run logs (besides its timing): cross-validation, then the
    model's and the baseline's scores on the frozen holdout."""
    return {
        **cv_metrics,
        **{f"holdout_{k}": v for k, v in scores.items()},
        **{f"baseline_{k}": v for k, v in base.items()},
    }


def _pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference of them costs ~9 s per model."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "scipy")]


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
    from mlflow.models import infer_signature

    from ml_platform.lib import modeling

    started = time.perf_counter()
    week, store = context.partition_key, lake.store()
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        frame = read_frame(store, [paths.training_set_object(week)])
        manifest = json.loads(store.read_bytes(paths.training_manifest_object(week)))
        fitted = fit_failure_model(frame, manifest["horizon_days"], config)
        train, holdout, features = fitted.train, fitted.holdout, fitted.features
        result, gap_days = fitted.search, fitted.gap_days
        trained_s = time.perf_counter() - started
        scores = modeling.evaluate(result.model, holdout, features, config.threshold)
        base = modeling.evaluate(fitted.baseline, holdout, features, config.threshold)
        proba = result.model.predict_proba(holdout[features])[:, 1]
        valid = modeling.probabilities_are_valid(proba)
        passed = {
            BEATS_BASELINE: scores["f1"] >= base["f1"] + config.baseline_margin,
            VALID_PROBABILITIES: valid,
            F1_FLOOR: scores["f1"] >= config.f1_floor,
        }

        # The holdout is frozen beside the model: every later comparison uses exactly these rows.
        holdout_file = Path(tmp, "holdout.parquet")
        holdout.to_parquet(holdout_file, index=False)
        # Keyed by run: a re-run of the week never changes what earlier versions were judged on.
        holdout_key = paths.model_holdout_object(MODEL_NAME, week, context.run.run_id)
        store.put_file(holdout_file, holdout_key)
        plots = modeling.plots(result.model, holdout, features, Path(tmp, "plots"), config.seed)

        client, ml = mlflow.client(), mlflow.mlflow()
        experiment_id = mlflow.experiment(EXPERIMENT)
        with ml.start_run(
            experiment_id=experiment_id, run_name=f"failure_model {week}", tags=_run_tags(context)
        ) as run:
            ml.log_params(
                {
                    **{k.removeprefix("model__"): v for k, v in result.best_params.items()},
                    "search": config.search,
                    "candidates": result.candidates,
                    "cv_splits": config.cv_splits,
                    "holdout_days": config.holdout_days,
                    "gap_days": gap_days,
                    "threshold": config.threshold,
                    "train_rows": len(train),
                    "holdout_rows": len(holdout),
                    "features": len(features),
                    "seed": config.seed,
                }
            )
            ml.log_metrics(
                {**run_metrics(result.cv_metrics, scores, base), "train_seconds": trained_s}
            )
            ml.log_dict(
                {"space": config.param_space, "best": result.best_params}, "search_space.json"
            )
            for plot in plots:
                ml.log_artifact(str(plot), "plots")
            ml.log_artifact(str(holdout_file), "holdout")
            info = ml.sklearn.log_model(
                sk_model=result.model,
                name="model",
                signature=infer_signature(holdout[features].head(100), proba[:100]),
                input_example=holdout[features].head(3),
                registered_model_name=MODEL_NAME,
                serialization_format="cloudpickle",  # skops would need every tree type trusted
                pip_requirements=_pip_requirements(),
            )
        version = str(info.registered_model_version)
        for key, value in {
            "week": week,
            "holdout": store.uri(holdout_key),
            "holdout_key": holdout_key,
            "threshold": str(config.threshold),
            "holdout_f1": f"{scores['f1']:.6f}",
            # champion_model refuses a version whose blocking checks failed, whichever run
            # promotes it.
            "quality_gate": "passed" if all(passed.values()) else "failed",
            "dagster.run_id": context.run.run_id,
        }.items():
            client.set_model_version_tag(MODEL_NAME, version, key, value)

    run_url = mlflow.run_url(experiment_id, run.info.run_id)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run": dg.MetadataValue.url(run_url)
            if run_url.startswith("http")
            else dg.MetadataValue.text(run_url),
            "mlflow_run_id": run.info.run_id,
            "model_name": MODEL_NAME,
            "model_version": version,
            "holdout_f1": scores["f1"],
            "baseline_f1": base["f1"],
            "holdout_roc_auc": scores["roc_auc"],
            "holdout_pr_auc": scores["pr_auc"],
            "cv_f1": result.cv_metrics["cv_f1"],
            "best_params": dg.MetadataValue.json(
                {k: float(v) for k, v in result.best_params.items()}
            ),
            "holdout": store.uri(holdout_key),
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "train_seconds": round(trained_s, 3),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=BEATS_BASELINE,
                passed=passed[BEATS_BASELINE],
                metadata={
                    "holdout_f1": scores["f1"],
                    "baseline_f1": base["f1"],
                    "margin": config.baseline_margin,
                },
            ),
            dg.AssetCheckResult(
                check_name=VALID_PROBABILITIES,
                passed=valid,
                metadata={"rows": len(proba)},
            ),
            dg.AssetCheckResult(
                check_name=F1_FLOOR,
                passed=passed[F1_FLOOR],
                metadata={"holdout_f1": scores["f1"], "floor": config.f1_floor},
            ),
        ],
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
    from ml_platform.lib import modeling

    store, client, ml = lake.store(), mlflow.client(), mlflow.mlflow()
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    if not versions:
        raise dg.Failure(f"no version of {MODEL_NAME} is registered yet: train one first")
    if config.metric not in modeling.METRICS:
        raise dg.Failure(
            f"unknown metric {config.metric!r}; one of {modeling.METRICS}", allow_retries=False
        )
    champion = mlflow.alias_version(MODEL_NAME, CHAMPION)
    if config.pin_version is not None:
        challenger = client.get_model_version(MODEL_NAME, str(config.pin_version))
    else:
        # The newest training week wins, then the newest version; a version whose tags were
        # never written (its run died after registering) cannot be judged and is skipped.
        judged = [v for v in versions if "holdout_key" in v.tags and "week" in v.tags]
        if not judged:
            raise dg.Failure(f"no version of {MODEL_NAME} has a frozen holdout yet")
        challenger = max(judged, key=lambda v: (v.tags["week"], int(v.version)))

    def score(version) -> float:
        model = ml.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
        threshold = float(version.tags.get("threshold", 0.5))
        value = modeling.evaluate(model, holdout, features, threshold)[config.metric]
        return value if math.isfinite(value) else float("-inf")  # undefined never wins

    holdout = read_frame(store, [challenger.tags["holdout_key"]])
    features = modeling.feature_columns(holdout)
    challenger_value = score(challenger)
    champion_value = score(champion) if champion is not None else None
    gate = challenger.tags.get("quality_gate", "failed")

    if champion is not None and champion.version == challenger.version:
        promote, reason = False, "the challenger already is the champion"
    elif config.pin_version is not None:
        promote, reason = True, f"pinned to version {config.pin_version} by run config"
    elif gate != "passed" and not config.force:
        promote, reason = False, "the challenger failed its blocking quality checks"
    elif config.force:
        promote, reason = True, "forced by run config"
    elif champion is None:
        promote, reason = True, "no champion yet"
    elif challenger.tags.get("week", "") < champion.tags.get("week", ""):
        promote, reason = False, "the challenger was trained on an older week than the champion"
    elif challenger_value >= champion_value + config.margin:
        promote, reason = True, f"{config.metric} better by at least {config.margin}"
    else:
        promote, reason = False, f"{config.metric} not better by {config.margin}"

    if promote:
        if champion is not None:
            client.set_registered_model_alias(MODEL_NAME, PREVIOUS, champion.version)
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, challenger.version)
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": _who(context),
        "decision": "promoted" if promote else "kept",
        "challenger": int(challenger.version),
        "champion_before": int(champion.version) if champion is not None else None,
        "metric": config.metric,
        "challenger_value": round(challenger_value, 6),
        "champion_value": None if champion_value is None else round(champion_value, 6),
        "holdout": challenger.tags["holdout_key"],
        "reason": reason,
        "dagster_run_id": context.run.run_id,
    }
    ledger_key = paths.promotion_ledger_object(MODEL_NAME)
    ledger = json.loads(store.read_bytes(ledger_key)) if store.exists(ledger_key) else []
    ledger.append(entry)
    store.put_bytes(json.dumps(ledger, indent=2).encode(), ledger_key)
    current = challenger if promote else champion
    context.log.info(f"{entry['decision']} version {challenger.version}: {reason}")
    return dg.MaterializeResult(
        metadata={
            "champion_version": int(current.version) if current else -1,
            "champion_week": current.tags.get("week", "") if current else "",
            "decision": entry["decision"],
            "reason": reason,
            "challenger_version": int(challenger.version),
            f"challenger_{config.metric}": challenger_value,
            f"champion_{config.metric}": champion_value if champion_value is not None else -1.0,
            "ledger": dg.MetadataValue.md(
                markdown_table(
                    [
                        {
                            k: e[k]
                            for k in (
                                "at",
                                "who",
                                "decision",
                                "challenger",
                                "champion_before",
                                "challenger_value",
                                "champion_value",
                                "reason",
                            )
                        }  # fmt: skip
                        for e in reversed(ledger[-20:])
                    ]
                )
            ),
            "ledger_uri": store.uri(ledger_key),
        }
    )


CLUSTER_MODEL = "sensor_clusters"
CLUSTER_ALIAS = "current"
NO_EMPTY_CLUSTER = "sensor_clusters_have_no_empty_cluster"
SILHOUETTE_FLOOR = "sensor_clusters_silhouette_above_floor"


class ClusterConfig(dg.Config):
    n_clusters: int = 4  # used when there is no previous version to start from
    warm_start: bool = True  # start from the previous version's centres (continuous training)
    silhouette_floor: float = 0.05
    seed: int = 0


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
    week, store = context.partition_key, lake.store()
    client, ml = mlflow.client(), mlflow.mlflow()
    frame = read_frame(store, [paths.training_set_object(week)])
    features = modeling.feature_columns(frame)
    previous = mlflow.alias_version(CLUSTER_MODEL, CLUSTER_ALIAS)
    warm = None
    if config.warm_start and previous is not None:
        candidate = ml.sklearn.load_model(f"models:/{CLUSTER_MODEL}/{previous.version}")
        if list(getattr(candidate, "feature_names_in_", [])) == features:
            warm = candidate
        else:
            context.log.warning("features changed since the previous version: cold start")
    model, init = modeling.fit_clusters(
        frame, features, config.n_clusters, warm_start=warm, seed=config.seed
    )
    report = modeling.cluster_report(model, frame, features, config.seed)
    passed = {
        NO_EMPTY_CLUSTER: min(report["sizes"]) > 0,
        SILHOUETTE_FLOOR: report["silhouette"] >= config.silhouette_floor,
    }
    warm_from = str(previous.version) if warm is not None else ""
    with ml.start_run(
        experiment_id=mlflow.experiment(CLUSTER_MODEL),
        run_name=f"sensor_clusters {week}",
        tags={**_run_tags(context), "warm_start_from": warm_from},
    ) as run:
        ml.log_params({"n_clusters": model[-1].n_clusters, "rows": len(frame), "warm": bool(warm)})
        ml.log_metrics(
            {
                "silhouette": report["silhouette"],
                "inertia": report["inertia"],
                **{f"size_{i}": n for i, n in enumerate(report["sizes"])},
            }
        )
        ml.log_dict(
            {
                "initial_centres": None if init is None else init.tolist(),
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
    version = str(info.registered_model_version)
    client.set_model_version_tag(CLUSTER_MODEL, version, "week", week)
    client.set_model_version_tag(CLUSTER_MODEL, version, "warm_start_from", warm_from)
    if all(passed.values()):
        client.set_registered_model_alias(CLUSTER_MODEL, CLUSTER_ALIAS, version)
    return dg.MaterializeResult(
        metadata={
            "model_version": version,
            "warm_start_from": warm_from or "cold start",
            "cluster_sizes": dg.MetadataValue.json(report["sizes"]),
            "silhouette": report["silhouette"],
            "inertia": report["inertia"],
            "mlflow_run_id": run.info.run_id,
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
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
        ],
    )
