"""``ml-platform reproduce --version N``: rebuild a failure_model version from its records.

Reads what the version recorded (its MLflow run, tags and the week's training-set manifest),
checks those inputs against the environment now (data versions of the input partitions, the Feast
registry hash, code versions), rebuilds the week's training set with the asset's own code, retrains
with the run's search configuration and seed, scores on the version's frozen holdout and compares.

It changes nothing live: no MLflow run or model version, no alias, no object in the lake. The
rebuilt set and the JSON report go to a folder of their own (``reproductions/`` by default).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ml_platform.settings import Settings, settings

#: Logged on every run, but a duration: never expected to reproduce.
_TIMINGS = {"train_seconds"}


class ReproduceError(Exception):
    """The version cannot be reproduced at all (unknown version, no manifest, ...)."""


@dataclass
class _Records:
    """What a registered version recorded: its MLflow run and tags, and the week's manifest in
    the lake they point into."""

    version: int
    client: Any
    run: Any
    tags: Mapping[str, str]
    week: str
    holdout_key: str
    store: Any
    manifest_key: str
    manifest: dict[str, Any]


@dataclass
class _Findings:
    """Why a reproduction fails (mismatches) and what only explains a difference (warnings)."""

    mismatches: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def default_out_dir() -> Path:
    from ml_platform.lib import paths

    return paths.project_root() / "reproductions"


def _mlflow_version(mlflow_resource, version: int):
    """The registered version, its run and the client; ReproduceError when it does not exist."""
    from mlflow.exceptions import MlflowException

    from ml_platform.defs.ml.models import MODEL_NAME

    uri = mlflow_resource.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # Opening it would create an empty store: there is nothing to reproduce.
        raise ReproduceError(f"no MLflow store at {uri}: no model has been trained here")
    client = mlflow_resource.client()
    try:
        found = client.get_model_version(MODEL_NAME, str(version))
    except MlflowException as exc:
        raise ReproduceError(f"{MODEL_NAME} has no version {version} in {uri}") from exc
    return client, found, client.get_run(found.run_id)


def _search_space(client, run_id: str, tmp: Path) -> dict:
    path = client.download_artifacts(run_id, "search_space.json", str(tmp))
    return json.loads(Path(path).read_text())


def _model_config(params: Mapping[str, str], space: Mapping[str, Any]):
    """The FailureModelConfig the run trained with, from what failure_model logs."""
    from ml_platform.defs.ml.models import FailureModelConfig

    return FailureModelConfig(
        search=params["search"],
        # Not logged as such: the candidates the search drew is the n_iter it ran with (sampling
        # a list-only space without replacement caps n_iter at the grid size, with the same draw).
        n_iter=int(params["candidates"]),
        cv_splits=int(params["cv_splits"]),
        param_space=space["space"],
        holdout_days=int(params["holdout_days"]),
        threshold=float(params["threshold"]),
        seed=int(params["seed"]),
    )


def _days(first: str, last: str) -> list[str]:
    import pandas as pd

    return pd.date_range(first, last, freq="D").strftime("%Y-%m-%d").tolist()


def _data_versions(instance, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's input data versions against the instance's latest materializations."""
    from ml_platform.defs.ingest.assets import raw_labels
    from ml_platform.defs.lakehouse.assets import daily_aggregates
    from ml_platform.defs.ml.assets import latest_versions
    from ml_platform.lib.reproduce import compare_versions

    if instance is None:
        return {"skipped": "no Dagster instance ($DAGSTER_HOME is not set or not a folder)"}
    window = manifest["window"]
    partitions = {
        daily_aggregates.key: _days(window["first_day"], window["last_day"]),
        raw_labels.key: None,  # every label file, as the asset records them
    }
    out: dict[str, Any] = {"assets": {}}
    for key, wanted in partitions.items():
        name = key.to_user_string()
        recorded = manifest.get("inputs", {}).get(name, {})
        diff = compare_versions(recorded, latest_versions(instance, key, wanted))
        out["assets"][name] = {"checked": len(recorded), **diff}
    return out


def _same(recorded: Any, now: Any) -> dict[str, Any]:
    return {"recorded": recorded, "now": now, "same": recorded == now}


def _features(recorded: Mapping[str, list[str]], now: Mapping[str, list[str]]) -> dict[str, Any]:
    """The feature service's features, recorded against now (names, not values)."""
    was = [n for names in recorded.values() for n in names]
    is_ = [n for names in now.values() for n in names]
    return {
        "same": dict(recorded) == dict(now),
        "recorded_count": len(was),
        "now_count": len(is_),
        "only_recorded": [n for n in was if n not in is_],
        "only_now": [n for n in is_ if n not in was],
    }


def _check_inputs(manifest, run, feast, feature_store, names, instance) -> dict[str, Any]:
    """The inputs the manifest and the run recorded, against the environment now."""
    from ml_platform.defs.features.assets import feature_views
    from ml_platform.defs.ml.assets import training_set
    from ml_platform.defs.ml.models import TRAINING_CODE_VERSION
    from ml_platform.lib import feature_store as fs

    code = manifest.get("code_versions", {})
    return {
        "code_versions": {
            "training_set": _same(
                code.get("training_set"), training_set.code_versions_by_key[training_set.key]
            ),
            "feature_views": _same(
                code.get("feature_views"), feature_views.code_versions_by_key[feature_views.key]
            ),
            "failure_model": _same(
                run.data.tags.get("dagster.code_version"), TRAINING_CODE_VERSION
            ),
        },
        "registry_hash": _same(manifest.get("registry_hash"), fs.registry_hash(feature_store)),
        "offline_store": _same(manifest.get("offline_store"), feast.profile().offline_type),
        "features": _features(
            manifest.get("features", {}), {view: names[view] for view in fs.VIEWS}
        ),
        "data_versions": _data_versions(instance, manifest),
    }


def _input_changes(checks: Mapping[str, Any]) -> list[str]:
    """One line per recorded input that is different now."""
    changes = [
        f"code version of {name}: {check['recorded']} -> {check['now']}"
        for name, check in checks["code_versions"].items()
        if not check["same"]
    ]
    for name in ("registry_hash", "offline_store"):
        if not checks[name]["same"]:
            changes.append(
                f"{name.replace('_', ' ')}: {checks[name]['recorded']} -> {checks[name]['now']}"
            )
    features = checks["features"]
    if not features["same"]:
        changes.append(
            "the feature service's features changed since the set was built: "
            f"removed {features['only_recorded'][:5]}, added {features['only_now'][:5]}"
        )
    for asset, diff in checks["data_versions"].get("assets", {}).items():
        changes += [
            f"data version of {asset}[{c['partition']}]: {c['recorded']} -> {c['now']}"
            for c in diff["changed"]
        ]
        for kind in ("missing", "added"):
            if diff[kind]:
                shown = ", ".join(diff[kind][:5]) + (" ..." if len(diff[kind]) > 5 else "")
                changes.append(f"{asset} partitions {kind} since: {shown}")
    return changes


def _compare_predictions(mlflow, version: int, x, model, tolerance: float) -> dict[str, Any]:
    """Largest difference between the registered model's probabilities and ``model``'s."""
    import numpy as np

    from ml_platform.defs.ml.models import MODEL_NAME

    try:
        registered = mlflow.mlflow().sklearn.load_model(f"models:/{MODEL_NAME}/{version}")
    except Exception as exc:  # a missing artifact must not hide the rest of the report
        return {"error": f"{type(exc).__name__}: {exc}"}
    gap = float(np.max(np.abs(registered.predict_proba(x)[:, 1] - model.predict_proba(x)[:, 1])))
    return {"max_abs_diff": gap, "identical": gap <= tolerance}


def _roundtrip(frame, path: Path):
    """``frame`` as the asset stores it and the model reads it: through Parquet."""
    import pandas as pd

    frame.to_parquet(path, index=False)
    return pd.read_parquet(path)


def reproduce(
    version: int,
    *,
    instance=None,
    out_dir: Path | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Rebuild and retrain ``version`` of failure_model; the report (also written as JSON to
    ``report["report"]``). ``instance``: the Dagster instance whose materializations the data
    versions are checked against (None: not checked). Raises ReproduceError when the version
    cannot be reproduced at all."""
    from ml_platform.lib import feature_store as fs
    from ml_platform.lib.reproduce import TOLERANCE

    tolerance = TOLERANCE if tolerance is None else tolerance
    config = settings(env)
    lake, feast, ingest, mlflow = _initialized_resources(config)
    records = _load_records(mlflow, lake, version)
    folder = _report_folder(out_dir, version)

    feature_store = feast.store()
    names = fs.feature_names(ingest.contract("readings").columns)
    checks = _check_inputs(records.manifest, records.run, feast, feature_store, names, instance)
    found = _Findings(warnings=_input_changes(checks) + _stale_manifest_warnings(records))
    if strict:
        # A changed input is then a failure of its own, not an explanation.
        found = _Findings(mismatches=found.warnings)

    rebuilt, rebuilt_path = _rebuild_training_set(records, feature_store, names, folder, found)
    frames = _compare_with_stored_set(records, rebuilt, rebuilt_path, found)
    fitted, model_config = _retrain(records, rebuilt, found)
    frozen, holdout = _frozen_holdout(records, fitted, folder, found)
    threshold = float(records.tags.get("threshold", model_config.threshold))
    metrics = _score_on_holdout(records, fitted, frozen, threshold, tolerance, found)
    params = _compare_best_params(records, fitted, found)
    predictions = _check_registered_model(mlflow, version, frozen, fitted, tolerance, found)

    sections = {
        "checks": checks,
        "training_set": frames,
        "holdout": holdout,
        "params": params,
        "metrics": metrics,
        "predictions": predictions,
    }
    dagster_home = config.dagster_home if instance is not None else None
    environment = _environment(records, mlflow, feast, dagster_home)
    report = _assemble_report(records, found, sections, strict, tolerance, environment, folder)
    Path(report["report"]).write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    return report


def _initialized_resources(config: Settings) -> tuple:
    """The lake, feast, ingest and mlflow resources, ready to use outside a run."""
    from ml_platform.defs.resources import resources_for

    resources = resources_for(config)
    # Outside a run: EnvVar settings are resolved here, as Dagster would at run start.
    return tuple(
        resources[k].process_config_and_initialize() for k in ("lake", "feast", "ingest", "mlflow")
    )


def _load_records(mlflow_resource, lake, version: int) -> _Records:
    """What ``version`` recorded; ReproduceError when a record it needs is missing."""
    from ml_platform.defs.ml.models import MODEL_NAME
    from ml_platform.lib import paths

    client, model_version, run = _mlflow_version(mlflow_resource, version)
    tags = model_version.tags
    week = tags.get("week") or run.data.tags.get("dagster.partition")
    holdout_key = tags.get("holdout_key")
    if not week or not holdout_key:
        raise ReproduceError(
            f"{MODEL_NAME} version {version} has no week or frozen holdout in its tags "
            "(its training run died before writing them)"
        )
    store = lake.store()
    manifest_key = paths.training_manifest_object(week)
    if not store.exists(manifest_key):
        raise ReproduceError(
            f"no training-set manifest for week {week} at {store.uri(manifest_key)}"
        )
    if not store.exists(holdout_key):
        raise ReproduceError(
            f"the frozen holdout of version {version} is gone: {store.uri(holdout_key)}"
        )
    return _Records(
        version=version,
        client=client,
        run=run,
        tags=tags,
        week=week,
        holdout_key=holdout_key,
        store=store,
        manifest_key=manifest_key,
        manifest=json.loads(store.read_bytes(manifest_key)),
    )


def _report_folder(out_dir: Path | None, version: int) -> Path:
    """A new folder of this reproduction's own, for the rebuilt set and the report."""
    from ml_platform.defs.ml.models import MODEL_NAME

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = (out_dir or default_out_dir()) / f"{MODEL_NAME}-v{version}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stale_manifest_warnings(records: _Records) -> list[str]:
    """A warning when the week's training set was rebuilt after the version trained on it."""
    built_at = datetime.fromisoformat(records.manifest["built_at"])
    run_started = datetime.fromtimestamp(records.run.info.start_time / 1000, tz=UTC)
    if built_at <= run_started:
        return []
    return [
        f"the week's training set was rebuilt at {built_at:%Y-%m-%d %H:%M:%S} UTC, after this "
        f"version was trained ({run_started:%Y-%m-%d %H:%M:%S} UTC): its manifest and stored "
        "set may not be the ones the version saw"
    ]


def _rebuild_training_set(
    records: _Records, feature_store, names, folder: Path, found: _Findings
) -> tuple[Any, Path]:
    """The week's training set, rebuilt with the asset's code into ``folder``, and its path."""
    from ml_platform.defs.ml.assets import TrainingSetConfig
    from ml_platform.lib.training_set import build_training_frame

    manifest = records.manifest
    window = manifest["window"]
    first_day, last_day = (date.fromisoformat(window[k]) for k in ("first_day", "last_day"))
    config = TrainingSetConfig(
        horizon_days=manifest["horizon_days"],
        lookback_days=(last_day - first_day).days + 1,
        require_created_before_cutoff=manifest["leakage_guard"]["require_created_before_cutoff"],
    )
    week_end = datetime.fromisoformat(manifest["labels_known_before"])
    built = build_training_frame(records.store, feature_store, names, week_end, config)
    if (built.first_day, built.last_day) != (first_day, last_day):
        found.mismatches.append(
            f"the rebuilt window is {built.first_day}..{built.last_day}, the manifest's "
            f"{first_day}..{last_day}"
        )
    rebuilt_path = folder / "training_set.parquet"
    return _roundtrip(built.frame, rebuilt_path), rebuilt_path


def _compare_with_stored_set(
    records: _Records, rebuilt, rebuilt_path: Path, found: _Findings
) -> dict[str, Any]:
    """The rebuilt training set against the one the week's asset stored."""
    from ml_platform.lib import paths
    from ml_platform.lib.reproduce import compare_frames
    from ml_platform.lib.store import read_frame

    store = records.store
    set_key = paths.training_set_object(records.week)
    if store.exists(set_key):
        stored = read_frame(store, [set_key])
    else:
        stored = rebuilt.iloc[0:0]
        found.mismatches.append(f"the stored training set is gone: {store.uri(set_key)}")
    frames = compare_frames(stored, rebuilt)
    frames.update(stored_uri=store.uri(set_key), rebuilt_path=str(rebuilt_path))
    if not frames["identical"]:
        found.mismatches.append(_describe_frames(frames))
    return frames


def _retrain(records: _Records, rebuilt, found: _Findings) -> tuple[Any, Any]:
    """failure_model's fit on ``rebuilt`` with the run's search configuration and seed; the fit
    and the FailureModelConfig it ran with."""
    from ml_platform.lib.failure_model import fit_failure_model

    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        space = _search_space(records.client, records.run.info.run_id, Path(tmp))
    params = records.run.data.params
    model_config = _model_config(params, space)
    fitted = fit_failure_model(rebuilt, records.manifest["horizon_days"], model_config)
    if str(fitted.gap_days) != params.get("gap_days"):
        found.mismatches.append(
            f"gap days {fitted.gap_days}, the run used {params.get('gap_days')}"
        )
    return fitted, model_config


def _frozen_holdout(records: _Records, fitted, folder: Path, found: _Findings) -> tuple[Any, dict]:
    """The version's frozen holdout, and whether the rebuilt set's split gives the same rows;
    ReproduceError when the holdout lacks features the retrained model needs."""
    from ml_platform.lib.reproduce import frame_digest
    from ml_platform.lib.store import read_frame

    frozen = read_frame(records.store, [records.holdout_key])
    split = _roundtrip(fitted.holdout, folder / "holdout.parquet")
    holdout = {
        "key": records.holdout_key,
        "rows": len(frozen),
        "identical": frame_digest(split) == frame_digest(frozen),
    }
    if not holdout["identical"]:
        found.mismatches.append(
            f"the rebuilt set's holdout ({len(split)} rows) differs from the frozen one "
            f"({len(frozen)} rows)"
        )
    missing = [f for f in fitted.features if f not in frozen.columns]
    if missing:
        raise ReproduceError(f"the frozen holdout lacks features {missing[:5]}: cannot score")
    return frozen, holdout


def _score_on_holdout(
    records: _Records, fitted, frozen, threshold: float, tolerance: float, found: _Findings
) -> list[dict[str, Any]]:
    """The retrained model and baseline scored on the frozen holdout, against the run's metrics."""
    from ml_platform.lib import modeling
    from ml_platform.lib.failure_model import run_metrics
    from ml_platform.lib.reproduce import compare_metrics

    scores = modeling.evaluate(fitted.search.model, frozen, fitted.features, threshold)
    base = modeling.evaluate(fitted.baseline, frozen, fitted.features, threshold)
    proba = fitted.search.model.predict_proba(frozen[fitted.features])[:, 1]
    confusion = modeling.confusion_counts(frozen[modeling.TARGET], proba, threshold)
    recorded = {k: v for k, v in records.run.data.metrics.items() if k not in _TIMINGS}
    metrics = compare_metrics(
        recorded, run_metrics(fitted.search.cv_metrics, scores, base, confusion), tolerance
    )
    off = [row for row in metrics if row["status"] != "identical"]
    if off:
        found.mismatches.append(_describe_metrics(off, len(metrics), tolerance))
    return metrics


def _describe_metrics(off: list[dict[str, Any]], total: int, tolerance: float) -> str:
    """One line naming the metrics that did not reproduce within ``tolerance``."""
    return f"{len(off)} of {total} metrics not within {tolerance:g}: " + ", ".join(
        f"{r['metric']} {r['recorded']:.6g} -> {r['reproduced']:.6g}"
        if r["status"] == "differs"
        else f"{r['metric']} {r['status']}"
        for r in off
    )


def _compare_best_params(records: _Records, fitted, found: _Findings) -> dict[str, Any]:
    """The search's best parameters now against those the run logged."""
    best = {k.removeprefix("model__"): str(v) for k, v in fitted.search.best_params.items()}
    recorded_best = {k: records.run.data.params.get(k) for k in best}
    if recorded_best != best:
        found.mismatches.append(f"best parameters {best}, the run chose {recorded_best}")
    return {"recorded": recorded_best, "reproduced": best, "same": recorded_best == best}


def _check_registered_model(
    mlflow, version: int, frozen, fitted, tolerance: float, found: _Findings
) -> dict[str, Any]:
    """The registered model's holdout probabilities against the retrained model's: on the same
    rows, the strongest check that nothing moved."""
    predictions = _compare_predictions(
        mlflow, version, frozen[fitted.features], fitted.search.model, tolerance
    )
    if "error" in predictions:
        found.warnings.append(f"the registered model could not be loaded: {predictions['error']}")
    elif not predictions["identical"]:
        found.mismatches.append(
            "the registered model's holdout probabilities differ from the retrained model's by "
            f"up to {predictions['max_abs_diff']:.3g}"
        )
    return predictions


def _environment(records: _Records, mlflow, feast, dagster_home: str | None) -> dict[str, Any]:
    """Where the reproduction read from: lake, MLflow store, Feast repo and Dagster home."""
    return {
        "store": records.store.url,
        "mlflow": mlflow.tracking_uri,
        "feast_repo": feast.repo_path,
        "dagster_home": dagster_home,
    }


def _assemble_report(
    records: _Records,
    found: _Findings,
    sections: Mapping[str, Any],
    strict: bool,
    tolerance: float,
    environment: Mapping[str, Any],
    folder: Path,
) -> dict[str, Any]:
    """The report: which version, the verdict and its reasons, then every comparison."""
    from ml_platform.defs.ml.models import MODEL_NAME

    run, tags = records.run, records.tags
    return {
        "model": MODEL_NAME,
        "version": str(records.version),
        "run_id": run.info.run_id,
        "week": records.week,
        "dagster_run_id": tags.get("dagster.run_id") or run.data.tags.get("dagster.run_id"),
        "reproduced": not found.mismatches,
        "strict": strict,
        "tolerance": tolerance,
        "mismatches": found.mismatches,
        "warnings": found.warnings,
        **sections,
        "manifest": records.store.uri(records.manifest_key),
        "environment": environment,
        "reproduced_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "report": str(folder / "report.json"),
    }


def _describe_frames(frames: Mapping[str, Any]) -> str:
    """One line naming where the rebuilt training set differs from the stored one."""
    rows = frames["rows"]
    parts = [f"training set differs: {rows['stored']} rows stored, {rows['rebuilt']} rebuilt"]
    if frames["days_differ"]:
        days = frames["days_differ"]
        shown = ", ".join(f"{d} ({n} rows)" for d, n in list(days.items())[:5])
        parts.append(
            f"values changed on {len(days)} day(s): {shown}" + (" ..." if len(days) > 5 else "")
        )
    if frames["cells_differ"]:
        parts.append("in columns " + ", ".join(list(frames["cells_differ"])[:5]))
    for side in ("stored", "rebuilt"):
        count = frames.get(f"rows_only_{side}_count", 0)
        if count:
            parts.append(f"{count} sensor-days only in the {side} set")
    for side in ("stored", "rebuilt"):
        if frames[f"columns_only_{side}"]:
            parts.append(f"columns only in the {side} set: {frames[f'columns_only_{side}']}")
    return "; ".join(parts)


def _jsonable(value: Any) -> Any:
    """NaN as null (JSON has no NaN); everything else as is."""
    import math

    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
