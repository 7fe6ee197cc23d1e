"""Worker of ``make bench BENCH=prod``: the production profile (``make dev-prod``) with its
configured sensor interval; 28 days of 16 sensors bootstrap a champion, then one more day's
readings file is timed from its upload to its prediction file. Prints one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.sizes import size
from ml_platform.devstack import flow
from ml_platform.devstack.stack import SENSOR_INTERVAL_S, prod_stack

DAYS, SENSORS = size((28, 16), (28, 8))


def main(out: str) -> int:
    files = flow.generate(Path(out), days=DAYS, sensors=SENSORS, interval_s=900)
    ports = dict.fromkeys(("s3", "postgres", "mlflow", "grpc", "ui", "api"), 0)
    with prod_stack(ports) as stack:
        timings = flow.first_champion_then_prediction(
            stack, files, champion_timeout=900, prediction_timeout=600
        )
        with stack.instance() as instance:
            print(flow.timeline(instance), file=sys.stderr)
    print(json.dumps(result(timings, SENSOR_INTERVAL_S, DAYS, SENSORS)))
    return 0


def result(timings: dict[str, float], interval_s: float, days: int, sensors: int) -> dict:
    """The JSON ``bench_prod`` reads (also written by the end-to-end test for the CI smoke)."""
    return {**timings, "sensor_interval_s": interval_s, "days": days, "sensors": sensors}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
