"""The user's side of the production flow, for the end-to-end test and ``make bench``: generated
files put to the stack's S3 API, then waiting for what the sensors and automation make of them."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ml_platform.devstack.stack import BUCKET, Stack


@dataclass(frozen=True)
class Files:
    history: Path  # every day but the last, one upload (what a deployment starts with)
    new_day: Path  # the last day's file, uploaded once a champion exists
    labels: Path
    day: str  # the last day (yesterday)


def generate(work: Path, *, days: int, sensors: int, interval_s: int, seed: int = 5) -> Files:
    """``days`` days of readings ending yesterday (UTC), and their failure labels."""
    from ml_platform.lib.generator import GeneratorConfig, write_files

    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    cfg = GeneratorConfig(
        days=days,
        sensors=sensors,
        start=(yesterday - timedelta(days=days - 1)).isoformat(),
        interval_s=interval_s,
        seed=seed,
        failures_per_sensor_month=4.0,  # enough positives for a first model's short holdout
    )
    files = write_files(cfg, work / "generated")
    history = work / "history.csv"
    with history.open("wb") as out:
        for i, day_file in enumerate(files.readings[:-1]):
            with day_file.open("rb") as src:
                header = src.readline()
                if i == 0:
                    out.write(header)
                shutil.copyfileobj(src, out)
    return Files(history, files.readings[-1], files.labels, yesterday.isoformat())


def first_champion_then_prediction(
    stack: Stack,
    files: Files,
    *,
    champion_timeout: float,
    prediction_timeout: float,
    on_champion: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """What a new deployment lives through, nobody launching anything: history and labels put at
    once until a champion model exists (then ``on_champion()``), then the next day's readings
    until that day's prediction file exists. Returns the seconds of each wait."""
    from ml_platform.lib.paths import predictions_object

    started = time.monotonic()
    put(stack, files.history, "readings")
    put(stack, files.labels, "labels")
    wait_until("a champion model", lambda: champion(stack), stack, champion_timeout)
    first = time.monotonic() - started
    on_champion()
    key = predictions_object(files.day)
    put(stack, files.new_day, "readings")
    took = wait_until(
        f"predictions for {files.day}", lambda: exists(stack, key), stack, prediction_timeout
    )
    return {"upload_to_first_champion_s": first, "upload_to_prediction_s": took}


def ingest_versions(run, dataset: str = "readings") -> list[str]:
    """The object versions a landing sensor's ingest run of ``dataset`` was given (its run
    config; none for a run launched without it)."""
    config = run.run_config.get("ops", {}).get(f"raw_{dataset}", {}).get("config", {})
    return list(config.get("versions", []))


def put(stack: Stack, path: Path, dataset: str) -> None:
    stack.s3.client().upload_file(str(path), BUCKET, f"landing/{dataset}/{path.name}")


def exists(stack: Stack, key: str) -> bool:
    listing = stack.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=key)
    return listing.get("KeyCount", 0) > 0


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def champion(stack: Stack) -> dict | None:
    """The registered model version the ``champion`` alias points at, from the MLflow server."""
    try:
        return get_json(
            f"{stack.url('mlflow')}/api/2.0/mlflow/registered-models/alias"
            "?name=failure_model&alias=champion"
        )["model_version"]
    except OSError:  # 404 until the model and alias exist
        return None


def timeline(instance) -> str:
    """Every run of the instance, oldest first: when, how long, what (for reports and failures)."""
    lines = []
    for record in reversed(instance.get_run_records()):
        run, start, end = record.dagster_run, record.start_time, record.end_time
        took = f"{end - start:6.1f} s" if start and end else "    -   "
        assets = ",".join(k.to_user_string() for k in run.asset_selection or [])
        lines.append(
            f"{record.create_timestamp:%H:%M:%S} {took} {run.status.value:8} {run.job_name} "
            f"{assets} {run.tags.get('dagster/partition', '')}{_step_seconds(instance, run)}"
        )
    return "\n".join(lines)


def _step_seconds(instance, run) -> str:
    """`` [step 1.2 s, ...]`` for a run of several steps: where a slow run spent its time."""
    from dagster._core.events import DagsterEventType

    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)
    steps = [
        f"{r.event_log_entry.step_key} {r.event_log_entry.dagster_event.event_specific_data.duration_ms / 1000:.1f} s"
        for r in records.records
    ]
    return f" [{', '.join(steps)}]" if len(steps) > 1 else ""


def wait_until(what: str, predicate, stack: Stack, timeout: float) -> float:
    """Seconds until ``predicate()`` holds; a timeout names what ran so far."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        stack.check_alive()
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    with stack.instance() as instance:
        raise TimeoutError(f"{what} not reached after {timeout} s; runs:\n{timeline(instance)}")
