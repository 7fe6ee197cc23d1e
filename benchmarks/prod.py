"""Worker of ``make bench BENCH=prod``: the production profile (``make dev-prod``) with its
configured sensor interval; 28 days of 16 sensors bootstrap a champion, then one more day's
readings file is timed from its upload to its prediction file. Prints one JSON line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ml_platform.devstack import flow
from ml_platform.devstack.stack import SENSOR_INTERVAL_S, prod_stack
from ml_platform.lib import paths

DAYS, SENSORS = 28, 16


def main(out: str) -> int:
    files = flow.generate(Path(out), days=DAYS, sensors=SENSORS, interval_s=900)
    ports = dict.fromkeys(("s3", "postgres", "mlflow", "grpc", "ui", "api"), 0)
    with prod_stack(ports) as stack:
        started = time.monotonic()
        flow.put(stack, files.history, "readings")
        flow.put(stack, files.labels, "labels")
        flow.wait_until("a champion", lambda: flow.champion(stack), stack, 900)
        first = time.monotonic() - started
        key = paths.predictions_object(files.day)
        flow.put(stack, files.new_day, "readings")
        took = flow.wait_until("predictions", lambda: flow.exists(stack, key), stack, 600)
        with stack.instance() as instance:
            print(flow.timeline(instance), file=sys.stderr)
    print(
        json.dumps(
            {
                "upload_to_prediction_s": took,
                "upload_to_first_champion_s": first,
                "sensor_interval_s": SENSOR_INTERVAL_S,
                "days": DAYS,
                "sensors": SENSORS,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
