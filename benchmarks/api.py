"""Prediction API benchmark, run in a fresh process: ``python -m benchmarks.api OUT``.

Builds a small platform (35 days x 50 sensors, a champion model, the last day online) in a
separate process, starts ``uvicorn --factory ml_platform.serving.app:create_app`` with one
worker on loopback, and drives it
with an open-loop load generator: requests are sent on a fixed schedule (100/s) by a pool of
keep-alive connections, and each latency is measured from the request's *scheduled* time, so a
slow server cannot hide queueing (no coordinated omission). Then a closed loop with 8 connections
measures the throughput. The naive reference server (``benchmarks.naive_api``) loads the model
from the registry and opens the feature store on every request; it gets the same 1-sensor load.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.sizes import size

ROOT = Path(__file__).resolve().parents[1]
SENSORS = size(50, 20)  # enough for both classes in every cross-validation fold
#: Seconds of each load phase.
SECONDS = size({"one": 20, "fifty": 15, "closed": 10, "naive": 3},
               {"one": 2, "fifty": 2, "closed": 2, "naive": 1})  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def build_platform(work: Path) -> dict[str, str]:
    import dagster as dg
    import pytest

    from ml_platform.lib.generator import GeneratorConfig
    from ml_platform_tests.feature_helpers import build_lake, embedded_platform, model_config, run

    env = embedded_platform(pytest.MonkeyPatch(), work)  # this worker process only
    small = {"n_iter": 1, "cv_splits": 2, "holdout_days": 7, "baseline_margin": -1, "f1_floor": 0}
    with dg.instance_for_test() as instance:
        lake = GeneratorConfig(days=35, sensors=SENSORS, interval_s=3600, seed=9)
        build_lake(instance, work, lake)
        for selection, partition, config in (
            (["feature_views"], None, None),
            (["online_features"], "2024-02-04", None),
            (["training_set"], "2024-01-29", None),
            (["failure_model"], "2024-01-29", model_config(**small)),
            (["champion_model"], None, None),
        ):
            run(instance, selection, partition_key=partition, config=config)
    return env


def start(app: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("uvicorn")), "--factory", app, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env={**os.environ, **env, "ML_PLATFORM_API_RELOAD_S": "3600"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)
            return server
        except OSError:
            assert server.poll() is None, f"{app} exited"
            time.sleep(0.2)
    raise TimeoutError(f"{app} not ready")


def open_loop(port: int, body: bytes, rate: float, seconds: float, connections: int = 8):
    """Latencies (ms, from the scheduled send time) of ``rate * seconds`` requests."""
    total = int(rate * seconds)
    local = threading.local()
    started = time.perf_counter() + 0.2
    latencies: list[float] = []
    errors = [0]

    def send(i: int) -> None:
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            local.conn.request("POST", "/predict", body, {"content-type": "application/json"})
            response = local.conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        latencies.append((time.perf_counter() - scheduled) * 1000)
        errors[0] += not ok

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(send, range(total)))
    return latencies, errors[0]


def closed_loop(port: int, body: bytes, seconds: float, connections: int = 8) -> float:
    """Requests per second with ``connections`` clients sending back to back."""
    done = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            conn.request("POST", "/predict", body, {"content-type": "application/json"})
            conn.getresponse().read()
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=client) for _ in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - started)


def main(out: Path) -> dict:
    from ml_platform_tests.servers import free_port, stop_process_group

    # The platform is built in its own process: this one only generates load, so its latencies
    # are not stretched by garbage collection of a heap full of Dagster, Feast and MLflow.
    built = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "benchmarks.api", "--build", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(f"building the platform failed:\n{built.stderr[-3000:]}")
    env = json.loads(built.stdout.strip().splitlines()[-1])
    sensors = [f"sensor-{i:03d}" for i in range(1, SENSORS + 1)]
    one = json.dumps({"sensor_ids": [sensors[min(7, SENSORS - 1)]]}).encode()
    fifty = json.dumps({"sensor_ids": sensors}).encode()
    result: dict = {}
    port = free_port()
    server = start("ml_platform.serving.app:create_app", port, env)
    try:
        open_loop(port, one, 50, 2)  # warm-up
        lat, errors = open_loop(port, one, 100, SECONDS["one"])
        result.update(
            api_p50_ms_1=statistics.median(lat),
            api_p95_ms_1=percentile(lat, 95),
            api_p99_ms_1=percentile(lat, 99),
            api_requests_1=len(lat),
            api_errors_1=errors,
        )
        lat, errors = open_loop(port, fifty, 20, SECONDS["fifty"])
        result.update(
            api_p50_ms_50=statistics.median(lat),
            api_p95_ms_50=percentile(lat, 95),
            api_p99_ms_50=percentile(lat, 99),
            api_errors_50=errors,
        )
        result["api_rps"] = closed_loop(port, one, SECONDS["closed"])
    finally:
        stop_process_group(server)
    naive_port = free_port()
    naive = start("benchmarks.naive_api:create_app", naive_port, env)
    try:
        lat, errors = open_loop(naive_port, one, 100, SECONDS["naive"])
        result.update(
            naive_api_p50_ms_1=statistics.median(lat),
            naive_api_p99_ms_1=percentile(lat, 99),
            naive_api_errors_1=errors,
        )
    finally:
        stop_process_group(naive)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "--build":
        print(json.dumps(build_platform(Path(sys.argv[2]))))
    else:
        print(json.dumps(main(Path(sys.argv[1]))))
