"""``make bench``: every benchmark, with its reference measured in the same run.

Writes ``benchmarks/results.json`` (a list of ``{"name", "value", "unit", "reference",
"reference_value", "rows"}``) and ``benchmarks/RESULTS.md``. ``--only NAME`` runs one benchmark
and keeps the other records from the previous results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.sizes import SMOKE_ENV, size, smoke

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
DATA = HERE / "data"
RESULTS = HERE / "results.json"
#: When each metric of results.json was measured (a partial `make bench` keeps the others' rows).
MEASURED = HERE / "measured.json"
RESULTS_MD = HERE / "RESULTS.md"
#: Files the daemon fault scenarios and the production-profile test write their numbers to.
FAULT_RESULTS_ENV = "ML_PLATFORM_FAULT_RESULTS"
PROD_RESULTS_ENV = "ML_PLATFORM_PROD_RESULTS"


def record(name, value, unit, reference=None, reference_value=None, rows=None) -> dict:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "reference": reference,
        "reference_value": None if reference_value is None else round(reference_value, 3),
        "rows": rows,
    }


def readings_csv(days: int, sensors: int, interval_s: int) -> Path:
    """One CSV of generated readings (cached in benchmarks/data/, which git ignores)."""
    from ml_platform.lib.generator import GeneratorConfig, write_files

    target = DATA / f"readings_{days}d_{sensors}s_{interval_s}i.csv"
    if target.exists():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        files = write_files(
            GeneratorConfig(days=days, sensors=sensors, interval_s=interval_s), Path(tmp)
        )
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            for i, day_file in enumerate(files.readings):
                with day_file.open("rb") as src:
                    header = src.readline()
                    if i == 0:
                        out.write(header)
                    shutil.copyfileobj(src, out, 1 << 22)
        partial.replace(target)
    return target


def run_worker(module: str, *args: str) -> dict:
    """``python -m module *args OUT`` in a fresh process (OUT: a temporary folder under
    benchmarks/data/); returns the JSON of its last output line."""
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as out:
        cmd = [sys.executable, "-W", "ignore", "-m", module, *args, out]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def measure(mode: str, path: Path) -> dict:
    return run_worker("benchmarks.worker", mode, str(path))


def best_of(runs: int, fn: Callable[[], dict]) -> dict:
    """Fastest of ``runs`` (the machine is shared and noisy); keeps the largest peak RSS."""
    results = [fn() for _ in range(runs)]
    best = min(results, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


#: 30 days x 50 sensors, a reading every 13 s: ~10M rows, ~0.5 GB.
INGEST_FILE = {"days": 30, "sensors": 50, "interval_s": 13}
TINY_FILE = {"days": 2, "sensors": 2, "interval_s": 600}


def bench_ingest() -> list[dict]:
    path = readings_csv(**size(INGEST_FILE, TINY_FILE))
    reference = best_of(size(3, 1), lambda: measure("duckdb_copy", path))
    ours = best_of(size(3, 1), lambda: measure("asset", path))
    naive = measure("pandas_naive", path)
    rows = ours["rows"]
    ref_rate = reference["rows"] / reference["seconds"]
    return [
        record(
            "ingest_rows_per_s",
            rows / ours["seconds"],
            "rows/s",
            "duckdb_copy_rows_per_s",
            ref_rate,
            rows,
        ),
        record("duckdb_copy_rows_per_s", ref_rate, "rows/s", rows=reference["rows"]),
        record(
            "ingest_peak_rss_mb",
            ours["peak_rss_mb"],
            "MB",
            "duckdb_copy_peak_rss_mb",
            reference["peak_rss_mb"],
            rows,
        ),
        record(
            "naive_pandas_ingest_rows_per_s",
            naive["rows"] / naive["seconds"],
            "rows/s",
            "duckdb_copy_rows_per_s",
            ref_rate,
            naive["rows"],
        ),
        record(
            "naive_pandas_peak_rss_mb",
            naive["peak_rss_mb"],
            "MB",
            "ingest_peak_rss_mb",
            ours["peak_rss_mb"],
            naive["rows"],
        ),
    ]


def bench_ingest_5x() -> list[dict]:
    base_file = size(INGEST_FILE, TINY_FILE)
    base = readings_csv(**base_file)
    big = readings_csv(**{**base_file, "sensors": 5 * base_file["sensors"]})  # 5x the rows
    small = measure("asset", base)
    large = measure("asset", big)
    return [
        record(
            "ingest_5x_peak_rss_mb",
            large["peak_rss_mb"],
            "MB",
            "ingest_peak_rss_mb",
            small["peak_rss_mb"],
            large["rows"],
        ),
        record(
            "ingest_5x_rows_per_s",
            large["rows"] / large["seconds"],
            "rows/s",
            "ingest_rows_per_s",
            small["rows"] / small["seconds"],
            large["rows"],
        ),
    ]


def bench_lakehouse() -> list[dict]:
    path = readings_csv(**size(INGEST_FILE, TINY_FILE))
    reference = best_of(size(2, 1), lambda: measure("duckdb_pipeline", path))
    ours = best_of(size(2, 1), lambda: measure("lakehouse", path))
    naive = measure("pandas_pipeline", path)
    overhead = (ours["backfill_wall_s"] - ours["backfill_compute_s"]) / ours["backfill_wall_s"]
    return [
        record(
            "lakehouse_s",
            ours["seconds"],
            "s",
            "duckdb_reference_s",
            reference["seconds"],
            ours["rows"],
        ),
        record("duckdb_reference_s", reference["seconds"], "s", rows=reference["rows"]),
        record(
            "naive_pandas_s", naive["seconds"], "s", "lakehouse_s", ours["seconds"], naive["rows"]
        ),
        record(
            "lakehouse_peak_rss_mb",
            ours["peak_rss_mb"],
            "MB",
            "duckdb_reference_peak_rss_mb",
            reference["peak_rss_mb"],
            ours["rows"],
        ),
        record(
            "backfill_30d_overhead_ratio",
            overhead,
            "ratio",
            "backfill_30d_wall_s",
            ours["backfill_wall_s"],
            ours["days"],
        ),
    ]


def _import_seconds(module_code: str) -> float:
    times = []
    for _ in range(size(5, 1)):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-W", "ignore", "-c", module_code],
            cwd=ROOT,
            check=True,
            env={**os.environ, "DAGSTER_HOME": tempfile.gettempdir()},
        )
        times.append(time.perf_counter() - started)
    return min(times)


def bench_load() -> list[dict]:
    bare = _import_seconds("import dagster, dagster_aws")
    ours = _import_seconds("import ml_platform.definitions")
    return [
        record("code_location_load_s", ours, "s", "bare_dagster_import_s", bare),
        record("bare_dagster_import_s", bare, "s"),
    ]


def bench_e2e() -> list[dict]:
    """Upload -> landing sensor -> run success, through the real daemon on PostgreSQL + moto S3."""
    from benchmarks.e2e import upload_to_success

    timings, interval = upload_to_success(uploads=size(5, 1))
    return [
        record(
            "upload_to_raw_success_s",
            statistics.median(timings),
            "s",
            "sensor_interval_s",
            interval,
            rows=len(timings),
        )
    ]


def bench_features() -> list[dict]:
    """Feast online retrieval and the year-long point-in-time training set (benchmarks/features.py)."""
    r = run_worker("benchmarks.features")
    return [
        record(
            "online_p50_ms_1",
            r["online_p50_ms_1"],
            "ms",
            "sqlite_p50_ms_1",
            r["sqlite_p50_ms_1"],
            1,
        ),
        record(
            "online_p99_ms_1",
            r["online_p99_ms_1"],
            "ms",
            "sqlite_p99_ms_1",
            r["sqlite_p99_ms_1"],
            1,
        ),
        record(
            "online_p99_ms_50",
            r["online_p99_ms_50"],
            "ms",
            "sqlite_p99_ms_50",
            r["sqlite_p99_ms_50"],
            50,
        ),
        record(
            "training_set_365x50_s",
            r["training_set_365x50_s"],
            "s",
            "pandas_pit_join_s",
            r["pandas_pit_join_s"],
            r["training_set_rows"],
        ),
        record("training_set_asset_s", r["training_set_asset_s"], "s", rows=r["training_set_rows"]),
        record(
            "feast_point_in_time_join_s",
            r["point_in_time_join_s"],
            "s",
            rows=r["training_set_rows"],
        ),
    ]


def bench_models() -> list[dict]:
    """Training, registry load and scoring of the failure model (benchmarks/models.py)."""
    r = run_worker("benchmarks.models")
    rows = r["train_rows"]
    return [
        record("train_365x50_s", r["train_365x50_s"], "s", "single_fit_s", r["single_fit_s"], rows),
        record("model_load_s", r["model_load_s"], "s", "pickle_load_s", r["pickle_load_s"]),
        record(
            "score_50_sensors_s",
            r["score_50_sensors_s"],
            "s",
            "predict_50_in_memory_s",
            r["predict_50_in_memory_s"],
            50,
        ),
        record("holdout_f1", r["holdout_f1"], "f1", "baseline_f1", r["baseline_f1"]),
        record("baseline_f1", r["baseline_f1"], "f1"),
    ]


def bench_api() -> list[dict]:
    """The prediction API under an open-loop load on loopback (benchmarks/api.py)."""
    r = run_worker("benchmarks.api")
    n = r["api_requests_1"]
    return [
        record(
            "api_p50_ms_1",
            r["api_p50_ms_1"],
            "ms",
            "naive_api_p50_ms_1",
            r["naive_api_p50_ms_1"],
            n,
        ),
        record("api_p95_ms_1", r["api_p95_ms_1"], "ms", rows=n),
        record(
            "api_p99_ms_1",
            r["api_p99_ms_1"],
            "ms",
            "naive_api_p99_ms_1",
            r["naive_api_p99_ms_1"],
            n,
        ),
        record("api_p99_ms_50", r["api_p99_ms_50"], "ms", rows=50),
        record("api_rps", r["api_rps"], "requests/s"),
        record("api_errors", r["api_errors_1"] + r["api_errors_50"], "requests"),
        record("naive_api_p99_ms_1", r["naive_api_p99_ms_1"], "ms"),
    ]


def run_fault_scenarios() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faults.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "ml_platform_tests/faults/test_faults_daemon.py"],
            cwd=ROOT, env={**os.environ, FAULT_RESULTS_ENV: str(out)}, check=True,
        )  # fmt: skip
        return json.loads(out.read_text())


def results_of_make_test(env: str, module: str) -> dict:
    """The smoke's input for a benchmark whose scenario is a test of ``make test`` and takes
    minutes: what that test wrote to the file ``$env`` (CI sets it for both steps)."""
    path = Path(os.environ.get(env, "/nonexistent"))
    if not path.is_file():
        raise RuntimeError(f"{env}={path}: no results of {module} (run make test with it set)")
    return json.loads(path.read_text())


def bench_faults() -> list[dict]:
    """The daemon fault scenarios (ml_platform_tests/faults/test_faults_daemon.py): recovery
    after each fault against a file landed and ingested with no fault, on the same stack."""
    results = (
        results_of_make_test(FAULT_RESULTS_ENV, "test_faults_daemon.py")
        if smoke()
        else run_fault_scenarios()
    )
    clean = results.pop("no_fault")["upload_to_ingested_s"]
    records = [
        record(f"fault_{name}_recovery_s", numbers["recovery_s"], "s",
               "no_fault_upload_to_ingested_s", clean)
        for name, numbers in results.items()
    ]  # fmt: skip
    # One effective run per object: one root run (a killed worker's retry is a child of it).
    # Two daemons both submit each batch, two roots under one run key: that test asserts it.
    roots = [
        o["root_runs"]
        for name, numbers in results.items()
        if not name.startswith("twin_daemons")
        for o in numbers["outcome"].values()
    ]
    return records + [
        record("fault_s3_outage_s", results["s3_outage"]["outage_s"], "s"),
        record("fault_max_root_runs_per_object", max(roots), "runs", rows=len(roots)),
    ]


def bench_demo() -> list[dict]:
    """``make demo`` after install: a fresh embedded profile in a temporary folder, then a second
    run over what the first one built (the demo must be safe to run twice)."""
    from ml_platform.demo import Demo

    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        shutil.copy(ROOT / "dagster.yaml", work / "home" / "dagster.yaml")
        shutil.copytree(
            ROOT / "feature_repo", work / "feature_repo", ignore=shutil.ignore_patterns("data")
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": str(work / "home"),
            "ML_PLATFORM_STORE_URL": (work / "lake").as_uri(),
            "ML_PLATFORM_FEAST_REPO": str(work / "feature_repo"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "ML_PLATFORM_MLFLOW_ARTIFACTS": (work / "artifacts").as_uri(),
            "PYTHONWARNINGS": "ignore",
        }
        for name in ("FEAST_FS_YAML_FILE_PATH", "AWS_ENDPOINT_URL_S3"):
            env.pop(name, None)
        days, sensors = size((Demo.days, Demo.sensors), (21, 10))  # full: the demo's default
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ml_platform.demo", "--days", str(days), "--sensors",
                 str(sensors)], cwd=ROOT, env=env, check=True, capture_output=True,
            )  # fmt: skip
            seconds.append(time.perf_counter() - started)
    return [
        record("demo_s", seconds[0], "s", "budget (10 min on 2 cores)", 600, days * sensors),
        record("demo_rerun_s", seconds[1], "s", "demo_s", seconds[0]),
    ]


def bench_prod() -> list[dict]:
    """Production profile (benchmarks/prod.py): a readings file put to S3 until its day's
    prediction file exists, sensors at their configured interval."""
    r = (
        results_of_make_test(PROD_RESULTS_ENV, "test_prod_profile.py")
        if smoke()
        else run_worker("benchmarks.prod")
    )
    return [
        record(
            "upload_to_prediction_s",
            r["upload_to_prediction_s"],
            "s",
            "goal (Airflow setups: 60 s polling + 5 min schedule)",
            90,
            rows=r["sensors"],
        ),
        record(
            "upload_to_first_champion_s",
            r["upload_to_first_champion_s"],
            "s",
            "upload_to_prediction_s",
            r["upload_to_prediction_s"],
            rows=r["days"] * r["sensors"],
        ),
    ]


def _python(*args: str) -> tuple[dict, float]:
    """``python -W ignore *args`` in a fresh process: its last JSON line and its wall time."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-W", "ignore", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def _check_steps(run: dict, assets: tuple[str, ...]) -> tuple[str, ...]:
    steps = tuple(s for s in run["steps"] if s not in assets)
    assert steps, run  # the checks ran in steps of their own
    return steps


def _per_day_ms(year: dict, day: dict, steps: tuple[str, ...]) -> float:
    """Marginal milliseconds per day of ``steps``: (365-day run - 1-day run) / 364."""
    from benchmarks.backfill import DAYS

    total = sum(year["steps"].get(s, 0) - day["steps"].get(s, 0) for s in steps)
    return 1000 * total / (DAYS - 1)


def bench_backfill() -> list[dict]:
    """A year of history through the lakehouse, checks included, as one `dagster asset
    materialize --partition-range` from a fresh process (benchmarks/backfill.py)."""
    from benchmarks.backfill import END, START, materialize

    assets = ("sensor_chunks", "daily_aggregates")
    records = []
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        out = Path(tmp) / "small"
        small, _ = _python("-m", "benchmarks.backfill", "setup", "2", "3600", str(out))
        year = materialize(small["store_url"], out / "home-year", START, END)
        day = materialize(small["store_url"], out / "home-day", START, START)
        assert year["blocking_passed"] and year["evaluations"], year
        records += [
            record("backfill_365d_2_sensors_s", year["wall_s"], "s", "backfill_1d_2_sensors_s",
                   day["wall_s"], small["rows"]),
            record("backfill_1d_2_sensors_s", day["wall_s"], "s"),
            # Every step that is not one of the two assets is a check step.
            record("checks_per_day_ms", _per_day_ms(year, day, _check_steps(year, assets)), "ms",
                   rows=small["rows"]),
            record("lakehouse_assets_per_day_ms", _per_day_ms(year, day, assets), "ms",
                   rows=small["rows"]),
        ]  # fmt: skip
        records += _event_floor(small["store_url"], Path(tmp) / "small", records[2]["value"],
                                records[0]["value"])  # fmt: skip
        records += _backfill_on_postgres(small["store_url"], Path(tmp) / "small", small["rows"],
                                         records[2]["value"])  # fmt: skip
        out = Path(tmp) / "large"
        sensors, interval_s = size(("50", "300"), ("3", "3600"))
        large, _ = _python("-m", "benchmarks.backfill", "setup", sensors, interval_s, str(out))
        year = materialize(large["store_url"], out / "home-year", START, END)
        assert year["blocking_passed"], year
        reference, reference_s = _python("-m", "benchmarks.backfill", "duckdb", str(out))
        assert reference["failing_days"] == 0 and reference["rows"] > 0, reference
        records += [
            record("backfill_365d_50_sensors_s", year["wall_s"], "s", "duckdb_365d_50_sensors_s",
                   reference_s, large["rows"]),
            record("duckdb_365d_50_sensors_s", reference_s, "s", rows=reference["rows"]),
        ]  # fmt: skip
    return records


def _event_floor(store_url: str, out: Path, checks_ms: float, year_s: float) -> list[dict]:
    """Dagster's own cost of one check evaluation per day (benchmarks/event_floor.py), on the
    same SQLite instance storage: the lakehouse's three evaluations a day cost at least 3x it."""
    from benchmarks.backfill import DAYS, END, START, materialize

    runs = {
        name: materialize(store_url, out / f"home-floor-{name}", START, last,
                          module="benchmarks.event_floor", select="floor")
        for name, last in (("year", END), ("day", START))
    }  # fmt: skip
    assert runs["year"]["evaluations"] == {"floor_check": DAYS}, runs["year"]
    floor_ms = _per_day_ms(runs["year"], runs["day"], ("floor_floor_check",))
    return [
        # One asset and one check that do nothing, over the year: Dagster's part of a backfill.
        record("backfill_365d_noop_asset_and_check_s", runs["year"]["wall_s"], "s",
               "backfill_365d_2_sensors_s", year_s),
        record("dagster_check_evaluation_per_day_ms", floor_ms, "ms"),
        record("checks_per_day_own_ms", checks_ms - 3 * floor_ms, "ms",
               "checks_per_day_ms", checks_ms),
    ]  # fmt: skip


def _backfill_on_postgres(store_url: str, out: Path, rows: int, sqlite_ms: float) -> list[dict]:
    """The same year and day on the deployed profile's instance storage (PostgreSQL, a
    throwaway cluster, connections pooled), and on dagster-postgres' own storage classes, which
    connect for every statement, as the reference."""
    from benchmarks.backfill import END, START, materialize, postgres_storage
    from ml_platform.devstack.servers import postgres_cluster

    assets = ("sensor_chunks", "daily_aggregates")
    runs = {}
    with postgres_cluster() as pg:
        for pooled in (True, False):
            storage = postgres_storage(pooled=pooled)
            for name, last in (("year", END), ("day", START)):
                db = f"dagster_{name}_{'pooled' if pooled else 'plain'}"
                pg.create_database(db)
                runs[pooled, name] = materialize(store_url, out / f"home-{db}", START, last,
                                                 storage=storage, env=pg.dagster_env(db))  # fmt: skip
    for pooled in (True, False):
        assert runs[pooled, "year"]["blocking_passed"] and runs[pooled, "year"]["evaluations"], runs
    checks_ms = {
        pooled: _per_day_ms(runs[pooled, "year"], runs[pooled, "day"],
                            _check_steps(runs[pooled, "year"], assets))
        for pooled in (True, False)
    }  # fmt: skip
    year, day, plain = runs[True, "year"], runs[True, "day"], runs[False, "year"]
    return [
        record("backfill_365d_2_sensors_postgres_s", year["wall_s"], "s",
               "backfill_365d_2_sensors_postgres_unpooled_s", plain["wall_s"], rows),
        record("backfill_365d_2_sensors_postgres_unpooled_s", plain["wall_s"], "s",
               "backfill_1d_2_sensors_postgres_s", day["wall_s"], rows),
        record("backfill_1d_2_sensors_postgres_s", day["wall_s"], "s"),
        record("checks_per_day_postgres_ms", checks_ms[True], "ms",
               "checks_per_day_postgres_unpooled_ms", checks_ms[False], rows),
        record("checks_per_day_postgres_unpooled_ms", checks_ms[False], "ms",
               "checks_per_day_ms", sqlite_ms, rows),
    ]  # fmt: skip


def bench_landing() -> list[dict]:
    """2,500 files at once and a steady stream on the production profile (benchmarks/landing.py)."""
    from benchmarks import landing

    return landing.bench_landing()


def bench_partitions() -> list[dict]:
    """Partitions the raw assets hold after 100,000 landed files: by design one per landing day,
    whatever the number of files; measured on the definitions for a year of landing."""
    from datetime import datetime, timedelta

    from ml_platform.defs.partitions import landing_days

    start = datetime.fromisoformat(landing_days.start.isoformat())
    # 100,000 files at one gateway's 288 uploads a day land over 348 days; at 2,500 a day, 40.
    days_for_100k = -(-100_000 // 288)
    keys = landing_days.get_partition_keys(current_time=start + timedelta(days=days_for_100k))
    return [
        record("raw_partitions_per_100k_files", len(keys), "partitions",
               "one_partition_per_file", 100_000, 100_000),
    ]  # fmt: skip


BENCHMARKS: dict[str, Callable[[], list[dict]]] = {
    "ingest": bench_ingest,
    "ingest_5x": bench_ingest_5x,
    "lakehouse": bench_lakehouse,
    "load": bench_load,
    "e2e": bench_e2e,
    "features": bench_features,
    "models": bench_models,
    "api": bench_api,
    "faults": bench_faults,
    "demo": bench_demo,
    "prod": bench_prod,
    "backfill": bench_backfill,
    "partitions": bench_partitions,
    "landing": bench_landing,
}


#: References that are fixed figures, not measured: a goal or budget, a configured interval, a
#: bound or an input size (RESULTS.md marks them).
CONSTANT_REFERENCES = ("goal", "budget", "sensor_interval_s", "one_partition_per_file",
                       "landing_2500_wait_bound_s", "rows put", "offered rate")  # fmt: skip


def write_markdown(records: list[dict], measured: dict[str, str], now: str) -> None:
    """RESULTS.md: every record with its reference, marked *constant* when it is a fixed figure,
    and the run it comes from when that is not this one."""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {now} UTC, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. A reference is measured in the same run as its metric, "
        "unless marked *constant* (a goal or a fixed figure); *measured* gives the run a row comes "
        "from when it is an earlier one (`make bench BENCH=name` reruns one benchmark).",
        "",
        "| metric | value | unit | reference | reference value | ratio | rows | measured |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    for r in records:
        comparable = r["reference_value"] and r["unit"] != "ratio"  # a ratio is its own comparison
        ratio = f"{r['value'] / r['reference_value']:.2f}x" if comparable else ""
        rows = f"{r['rows']:,}" if r["rows"] else ""
        ref_value = "" if r["reference_value"] is None else f"{r['reference_value']:,}"
        reference = r["reference"] or ""
        if reference.startswith(CONSTANT_REFERENCES):
            reference += " *(constant)*"
        when = measured.get(r["name"], "an earlier run")
        lines.append(
            f"| {r['name']} | {r['value']:,} | {r['unit']} | {reference} | "
            f"{ref_value} | {ratio} | {rows} | {'' if when == now else when} |"
        )
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def merge_records(previous: list[dict], fresh: list[dict]) -> list[dict]:
    """The previous records with the fresh ones in their places (a partial run keeps the file's
    order, so its diff shows only what changed), then the fresh names not recorded before."""
    by_name = {r["name"]: r for r in fresh}
    known = {r["name"] for r in previous}
    return [by_name.get(r["name"], r) for r in previous] + [
        r for r in fresh if r["name"] not in known
    ]


def run_benchmarks(names: list[str]) -> list[dict]:
    fresh: list[dict] = []
    for name in names:
        started = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        results = BENCHMARKS[name]()
        for r in results:
            print(
                f"[bench]   {r['name']} = {r['value']} {r['unit']}"
                + (
                    f" (reference {r['reference']} = {r['reference_value']})"
                    if r["reference"]
                    else ""
                )
            )
        print(f"[bench] {name} took {time.perf_counter() - started:.0f} s", flush=True)
        fresh += results
    return fresh


#: Metrics whose names carry the offered rate; which rates run depends on the machine.
RATE_DEPENDENT = re.compile(r"landing_stream_\d+_")


def smoke_problems(records: list[dict], recorded: list[dict], whole: bool) -> list[str]:
    """What is wrong with the smoke's records: a malformed record, a name twice and, when every
    benchmark ran, a metric of results.json that no benchmark reports any more (or the reverse)."""
    problems = []
    for r in records:
        ok = (
            set(r) == {"name", "value", "unit", "reference", "reference_value", "rows"}
            and isinstance(r["value"], int | float)
            and math.isfinite(r["value"])
            and isinstance(r["unit"], str)
            and (r["reference_value"] is None or math.isfinite(r["reference_value"]))
        )
        if not ok:
            problems.append(f"malformed record {r}")
    names = [r["name"] for r in records]
    problems += [f"{n} reported twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if whole:
        expected = {r["name"] for r in recorded if not RATE_DEPENDENT.match(r["name"])}
        got = {n for n in names if not RATE_DEPENDENT.match(n)}
        problems += [f"{n} (in results.json) is no longer reported" for n in sorted(expected - got)]
        problems += [f"{n} is not in results.json (run make bench)" for n in sorted(got - expected)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run these benchmarks only: {', '.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument("--smoke", action="store_true",
                        help="every benchmark on a tiny input (CI); results are not recorded")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    recorded = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
        fresh = run_benchmarks(names)
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "smoke-results.json").write_text(json.dumps(fresh, indent=2) + "\n")
        problems = smoke_problems(fresh, recorded, whole=not args.only)
        for problem in problems:
            print(f"[bench] smoke: {problem}", file=sys.stderr)
        return 1 if problems else 0
    fresh = run_benchmarks(names)
    previous = recorded if args.only else []
    names_fresh = {r["name"] for r in fresh}
    records = merge_records(previous, fresh)
    RESULTS.write_text(json.dumps(records, indent=2) + "\n")
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    earlier = json.loads(MEASURED.read_text()) if MEASURED.exists() and args.only else {}
    kept = {r["name"] for r in records} - names_fresh
    measured = {
        **{k: v for k, v in earlier.items() if k in kept},
        **dict.fromkeys(names_fresh, now),
    }
    MEASURED.write_text(json.dumps(measured, indent=2) + "\n")
    write_markdown(records, measured, now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
