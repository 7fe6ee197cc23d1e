"""Model benchmark, run in a fresh process: ``python -m benchmarks.models OUT``.

On the cached 365 days x 50 sensors lakehouse of ``benchmarks.features`` (built if missing):
trains ``failure_model`` with the default search space through Dagster and MLflow (SQLite store,
local artifacts), promotes it, then times loading the champion from the registry and scoring 50
sensors of one day (Feast point-in-time features + predict). References in the same run: one
plain fit of the same pipeline with the chosen parameters (no search, no tracking), a
``pickle.loads`` of the same model, and ``predict_proba`` on features already in memory.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

from benchmarks.features import DATA, DAYS, LAST_DAY, SENSORS, WEEK, build_lake
from benchmarks.sizes import size

DAY = LAST_DAY
#: The smoke's few days cannot hold the default search and its 28-day holdout.
HOLDOUT_DAYS = size(28, 7)


def main(out: Path) -> dict:
    import dagster as dg
    import pandas as pd

    lake = DATA / f"features_lake_{DAYS}x{SENSORS}"
    if not lake.exists():
        build_lake(lake)
    os.environ["ML_PLATFORM_STORE_URL"] = (lake / "lake").as_uri()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["ML_PLATFORM_MLFLOW_ARTIFACTS"] = (out / "artifacts").as_uri()
    os.environ.pop("FEAST_FS_YAML_FILE_PATH", None)
    from ml_platform_tests.feature_helpers import copy_feature_repo, metadata, model_config, run

    os.environ["ML_PLATFORM_FEAST_REPO"] = str(copy_feature_repo(out / "feature_repo"))

    from ml_platform.defs.features.assets import feature_views
    from ml_platform.defs.ml.assets import training_set
    from ml_platform.defs.ml.models import MODEL_NAME, champion_model, failure_model
    from ml_platform.defs.predictions.assets import Scorer
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib import modeling, paths

    result: dict = {}
    with dg.instance_for_test() as instance:
        run(instance, [feature_views])
        run(instance, [training_set], partition_key=WEEK)
        started = time.perf_counter()
        smoke = model_config(n_iter=1, cv_splits=2, holdout_days=HOLDOUT_DAYS, baseline_margin=-1,
                             f1_floor=0)  # fmt: skip
        trained = run(instance, [failure_model], partition_key=WEEK, config=size(None, smoke))
        result["train_365x50_s"] = time.perf_counter() - started
        meta = metadata(trained, "failure_model")
        result.update(
            holdout_f1=meta["holdout_f1"],
            baseline_f1=meta["baseline_f1"],
            train_rows=meta["train_rows"],
            search_s=meta["train_seconds"],
        )
        run(instance, [champion_model])

    # Reference for training: one fit of the chosen pipeline, no search, no tracking.
    frame = pd.read_parquet(lake / "lake" / paths.training_set_object(WEEK))
    features = modeling.feature_columns(frame)
    train, holdout = modeling.split_holdout(frame, HOLDOUT_DAYS)
    best = modeling.typed_params({k: [v] for k, v in meta["best_params"].items()})
    plain = modeling.classifier_pipeline().set_params(**{k: v[0] for k, v in best.items()})
    started = time.perf_counter()
    plain.fit(train[features], train[modeling.TARGET])
    result["single_fit_s"] = time.perf_counter() - started

    # Model load from the registry (alias lookup + download + unpickle), after `import mlflow`.
    mlflow = build_resources()["mlflow"]
    ml = mlflow.mlflow()
    loads = []
    for _ in range(3):
        started = time.perf_counter()
        model = ml.sklearn.load_model(f"models:/{MODEL_NAME}@champion")
        loads.append(time.perf_counter() - started)
    # The first load is what a process pays (later ones hit warm caches).
    result["model_load_s"] = loads[0]
    blob = pickle.dumps(model)
    started = time.perf_counter()
    pickle.loads(blob)
    result["pickle_load_s"] = time.perf_counter() - started

    # Scoring 50 sensors of one day after load: Feast features at the day's end + predict.
    scorer = Scorer.resolve(mlflow, None)
    store = build_resources()["feast"].store()
    gold = pd.read_parquet(lake / "lake" / paths.aggregates_object(DAY))
    requests = pd.DataFrame({"sensor_id": sorted(gold["sensor_id"])[:50], "date": DAY})
    scorer.score(store, requests, "bench")  # warm-up: registry cache, DuckDB connection
    times = []
    for _ in range(5):
        started = time.perf_counter()
        scored = scorer.score(store, requests, "bench")
        times.append(time.perf_counter() - started)
    assert len(scored) == min(50, SENSORS)
    result["score_50_sensors_s"] = statistics.median(times)
    x = holdout[features].head(50)
    started = time.perf_counter()
    model.predict_proba(x)
    result["predict_50_in_memory_s"] = time.perf_counter() - started
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
