"""``make demo``: the whole asset graph on generated data, on the embedded profile.

Generates readings and failure labels, lands them in the object store, then materializes every
layer in the order the sensors and automation would (raw files -> chunks -> aggregates -> feature
views -> online features -> training set -> model -> champion -> predictions) on the Dagster
instance in ``$DAGSTER_HOME``, so ``make dev`` shows every run and materialization afterwards.

Safe to run twice: generation is seeded (the same bytes land under the same keys, hence the same
partitions), and a step whose partitions are already materialized is skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ml_platform.settings import quiet_mlflow_logs, settings

#: Search and holdout sized for 30 days of data (the asset defaults expect a year).
MODEL_CONFIG = {"n_iter": 3, "cv_splits": 2, "holdout_days": 7}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class Demo:
    days: int = 30
    sensors: int = 20
    start: str = "2024-01-01"
    interval_s: int = 60
    seed: int = 7
    #: Failures are rare in real fleets; the demo plants enough for a 7-day holdout to hold some.
    failures_per_sensor_month: float = 3.0
    steps: list[tuple[str, float, str]] = field(default_factory=list)

    @property
    def day_keys(self) -> list[str]:
        first = date.fromisoformat(self.start)
        return [(first + timedelta(days=i)).isoformat() for i in range(self.days)]

    @property
    def training_week(self) -> str:
        """The newest Monday-to-Sunday week that ends inside the generated days."""
        last = date.fromisoformat(self.day_keys[-1])
        sunday = last - timedelta(days=(last.weekday() + 1) % 7)
        monday = sunday - timedelta(days=6)
        if monday < date.fromisoformat(self.start):
            raise SystemExit("the demo needs at least one whole Monday-to-Sunday week of data")
        return monday.isoformat()


def _say(text: str) -> None:
    print(text, flush=True)


class Runner:
    """Runs the demo's steps on one instance, printing progress as it goes."""

    def __init__(self, instance, demo: Demo):
        import dagster as dg

        from ml_platform.definitions import defs
        from ml_platform.defs.resources import build_resources

        self.dg, self.instance, self.demo = dg, instance, demo
        self.assets = list(defs.assets)
        self.resources = build_resources()
        self.total = 8
        self.done = 0

    def step(self, title: str, action: Callable[[], str]) -> None:
        self.done += 1
        _say(f"[{self.done}/{self.total}] {title} ...")
        started = time.perf_counter()
        detail = action()
        seconds = time.perf_counter() - started
        self.demo.steps.append((title, seconds, detail))
        _say(f"      {detail} ({seconds:.1f} s)")

    def materialize(self, selection: Sequence[str], *, partition_key=None, tags=None, config=None):
        result = self.dg.materialize(
            self.assets,
            selection=list(selection),
            instance=self.instance,
            resources=self.resources,
            partition_key=partition_key,
            tags={"ml_platform/demo": "true", **(tags or {})},
            # Progress is printed by the demo; the run logs stay in the instance (and the UI).
            run_config={**(config or {}), **QUIET},
            raise_on_error=False,
        )
        if not result.success:
            failures = [e.message for e in result.all_events if e.is_failure]
            raise SystemExit(f"demo step failed on {list(selection)}: {failures[-1:]}")
        return result

    def missing(self, asset: str, keys: Sequence[str]) -> list[str]:
        done = self.instance.get_materialized_partitions(self.dg.AssetKey(asset))
        return [k for k in keys if k not in done]

    def materialized(self, asset: str) -> bool:
        key = self.dg.AssetKey(asset)
        return self.instance.get_latest_materialization_event(key) is not None


def _metadata(instance, asset: str, partition: str | None = None) -> dict:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=[partition] if partition else None,
        ),
        limit=1,
    ).records
    if not records:
        return {}
    meta = records[0].asset_materialization.metadata
    return {k: v.value for k, v in meta.items()}


def run_demo(demo: Demo) -> dict:
    import dagster as dg

    from ml_platform.lib.store import open_store

    config = settings()
    store = open_store(config.store_url)
    week, last_day = demo.training_week, demo.day_keys[-1]
    started = time.perf_counter()
    _say(
        f"ML platform demo: {demo.days} days x {demo.sensors} sensors into {store.uri('')}\n"
        f"Dagster instance: {'(temporary)' if config.dagster_home is None else config.dagster_home}"
    )
    with dg.DagsterInstance.get() as instance, tempfile.TemporaryDirectory() as tmp:
        Steps(Runner(instance, demo), store, Path(tmp)).run_all()
        failure = _metadata(instance, "failure_model", week)
        predictions = _metadata(instance, "daily_predictions", last_day)
    summary = _summary(demo, store, time.perf_counter() - started, failure, predictions)
    _print_summary(summary)
    return summary


class Steps:
    """The demo's steps, in the order the sensors and automation would run them; each skips
    what an earlier demo run already built."""

    def __init__(self, runner: Runner, store, scratch: Path):
        demo = runner.demo
        self.runner, self.instance = runner, runner.instance
        self.store, self.scratch = store, scratch
        self.days, self.week, self.last_day = demo.day_keys, demo.training_week, demo.day_keys[-1]
        #: The partition keys of the landed files, per dataset.
        self.landed: dict[str, list[str]] = {}

    def run_all(self) -> None:
        step = self.runner.step
        step("generate and land readings and labels", self.generate_and_land)
        step("ingest: validate raw files into bronze", self.ingest)
        step(
            "lakehouse: sensor chunks and daily aggregates",
            lambda: self.ranged(["sensor_chunks", "daily_aggregates"], "chunks and aggregates"),
        )
        step("feature views: apply the Feast registry", self.feature_views)
        step(
            "online features: publish each day", lambda: self.ranged(["online_features"], "online")
        )
        step(
            "training set: point-in-time join", lambda: self.weekly("training_set", "training set")
        )
        step("model: train, register, choose the champion", self.model)
        step("predictions: drift gate and prediction files", self.predict)

    def generate_and_land(self) -> str:
        from ml_platform.lib.generator import write_files

        files = write_files(_generator_config(self.runner.demo), self.scratch)
        self.landed = _land(self.store, files)
        return (
            f"{files.rows:,} readings rows in {len(files.readings)} files and "
            f"{files.failures} failure events landed under {self.store.uri('landing/')}"
        )

    def ingest(self) -> str:
        # One batch run per dataset, as a landing sensor tick does.
        done = {dataset: self.ingest_dataset(dataset) for dataset in ("readings", "labels")}
        new = done["readings"].get("ingested", 0)
        return (
            f"{new} readings files and {done['labels'].get('ingested', 0)} labels file "
            f"validated into bronze in one run each "
            f"({len(self.landed['readings']) - new} already there)"
        )

    def ingest_dataset(self, dataset: str) -> dict:
        """The outcomes of ingesting ``dataset``'s landed files; versions the ledger already has
        (a second demo run) are left alone."""
        from ml_platform.lib import paths

        asset, versions = f"raw_{dataset}", self.landed[dataset]
        ledger = [paths.ledger_object(dataset, paths.file_id(v)) for v in versions]
        if all(self.store.exists(key) for key in ledger):
            return {"already_ingested": len(ledger)}
        result = self.runner.materialize(
            [asset],
            partition_key=paths.landing_day(datetime.now(UTC)),
            config={"ops": {asset: {"config": {"versions": versions}}}},
        )
        [event] = result.asset_materializations_for_node(asset)
        return event.metadata["outcomes"].value

    def ranged(self, assets: list[str], what: str) -> str:
        """``assets`` over every generated day in one partition-range run, as the lakehouse sensor
        launches them."""
        from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START

        days = self.days
        if not self.runner.missing(assets[-1], days):
            return f"{what}: all {len(days)} days already built"
        self.runner.materialize(assets, tags={RANGE_START: days[0], RANGE_END: days[-1]})
        return f"{what}: {days[0]} .. {days[-1]} in one run"

    def feature_views(self) -> str:
        if self.runner.materialized("feature_views"):
            return "Feast registry already applied"
        self.runner.materialize(["feature_views"])
        return "Feast registry applied (entity sensor, 2 feature views, 1 feature service)"

    def weekly(self, asset: str, what: str, config: dict | None = None) -> str:
        """``asset``'s partition of the training week."""
        week = self.week
        if not self.runner.missing(asset, [week]):
            return f"{what} of week {week}: already built"
        self.runner.materialize([asset], partition_key=week, config=config)
        return f"{what} of week {week}"

    def model(self) -> str:
        runner, week = self.runner, self.week
        trained = bool(runner.missing("failure_model", [week]))
        self.weekly("failure_model", "model", {"ops": {"failure_model": {"config": MODEL_CONFIG}}})
        self.weekly("sensor_clusters", "clusters")
        if trained or not runner.materialized("champion_model"):
            runner.materialize(["champion_model"])
        meta = _metadata(self.instance, "failure_model", week)
        champion = _metadata(self.instance, "champion_model")
        return (
            f"failure_model v{meta.get('model_version')}: holdout F1 "
            f"{meta.get('holdout_f1', float('nan')):.3f} vs baseline "
            f"{meta.get('baseline_f1', float('nan')):.3f}; champion: "
            f"v{champion.get('champion_version')} ({champion.get('decision')})"
        )

    def predict(self) -> str:
        last_day = self.last_day
        if self.runner.missing("daily_predictions", [last_day]):
            self.runner.materialize(["feature_drift"], partition_key=last_day)
            self.runner.materialize(["daily_predictions"], partition_key=last_day)
        meta = _metadata(self.instance, "daily_predictions", last_day)
        return (
            f"{meta.get('dagster/row_count')} sensors scored for {last_day} by model "
            f"v{meta.get('model_version')}"
        )


def _generator_config(demo: Demo):
    """The generator's settings for ``demo``'s days, sensors and seed."""
    from ml_platform.lib.generator import GeneratorConfig

    return GeneratorConfig(
        days=demo.days,
        sensors=demo.sensors,
        start=demo.start,
        interval_s=demo.interval_s,
        seed=demo.seed,
        failures_per_sensor_month=demo.failures_per_sensor_month,
    )


def _land(store, files) -> dict[str, list[str]]:
    """``files`` put under the landing prefix; the partition key of each, per dataset."""
    from ml_platform.lib import paths

    landed = {}
    for dataset, paths_ in (("readings", files.readings), ("labels", [files.labels])):
        keys = []
        for path in paths_:
            key = paths.landing_object(dataset, path.name)
            store.put_file(path, key)
            keys.append(paths.partition_key(path.name, store.etag(key)))
        landed[dataset] = keys
    return landed


def _summary(demo: Demo, store, seconds: float, failure: dict, predictions: dict) -> dict:
    """What the demo built and where to look at it."""
    from ml_platform.lib import paths

    last_day = demo.day_keys[-1]
    return {
        "seconds": round(seconds, 1),
        "store": store.uri(""),
        "training_week": demo.training_week,
        "prediction_day": last_day,
        "model_version": failure.get("model_version"),
        "holdout_f1": failure.get("holdout_f1"),
        "baseline_f1": failure.get("baseline_f1"),
        "predictions": store.uri(paths.predictions_object(last_day)),
        "scored_sensors": predictions.get("dagster/row_count"),
        "mlflow_uri": settings().mlflow_tracking_uri,
    }


def _print_summary(s: dict) -> None:
    _say(
        "\nDone in {seconds} s.\n"
        "  built:        raw files -> bronze -> chunks -> aggregates -> Feast (offline + online)\n"
        "                -> training set (week {training_week}) -> failure_model -> champion\n"
        "                -> predictions for {prediction_day}\n"
        "  model:        failure_model v{model_version}, holdout F1 {f1} vs baseline {base}\n"
        "  predictions:  {predictions}\n"
        "  Dagster UI:   make dev     then open http://127.0.0.1:3000 (runs, assets, checks)\n"
        "  MLflow UI:    make mlflow  then open http://127.0.0.1:5000 (runs, registered model)\n"
        "  Prediction API: make serve then open http://127.0.0.1:8000/docs".format(
            f1=f"{s['holdout_f1']:.3f}" if s["holdout_f1"] is not None else "?",
            base=f"{s['baseline_f1']:.3f}" if s["baseline_f1"] is not None else "?",
            **s,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_platform.demo", description=__doc__)
    parser.add_argument("--days", type=int, default=Demo.days)
    parser.add_argument("--sensors", type=int, default=Demo.sensors)
    parser.add_argument("--start", default=Demo.start)
    args = parser.parse_args(argv)
    # Library notices (beta parameters, deprecations inside dependencies) are for developers.
    warnings.filterwarnings("ignore", category=Warning)
    quiet_mlflow_logs()
    run_demo(Demo(days=args.days, sensors=args.sensors, start=args.start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
