"""``make demo``: the whole graph on generated data, twice, on a private embedded profile."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import pytest

from ml_platform import demo
from ml_platform.definitions import defs
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform_tests.feature_helpers import ROOT, embedded_platform

pytestmark = pytest.mark.integration


def test_demo_builds_every_layer_and_is_safe_to_run_twice(tmp_path, monkeypatch, capsys):
    embedded_platform(monkeypatch, tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    config = demo.Demo(days=21, sensors=20, interval_s=600)

    first = demo.run_demo(config)
    out = capsys.readouterr().out
    for step in range(1, 9):
        assert f"[{step}/8]" in out
    assert "holdout F1" in out and "make dev" in out and "make mlflow" in out
    assert first["training_week"] == "2024-01-15"  # the newest Monday-to-Sunday week in the data
    assert first["holdout_f1"] > first["baseline_f1"]
    day = first["prediction_day"]
    predictions = pd.read_parquet(tmp_path / "lake" / paths.predictions_object(day))
    assert predictions["sensor_id"].nunique() == 20
    assert predictions["failure_probability"].between(0, 1).all()

    with dg.DagsterInstance.get() as instance:
        runs_before = len(instance.get_runs())
        assert instance.get_materialized_partitions(dg.AssetKey("online_features")) == set(
            config.day_keys
        )
    second = demo.run_demo(demo.Demo(days=21, sensors=20, interval_s=600))
    out = capsys.readouterr().out
    assert "already" in out
    # Nothing is rebuilt: same model version, no new run.
    assert second["model_version"] == first["model_version"]
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == runs_before

        # `make dev` afterwards: the sensors find everything built and launch nothing.
        for name in ("readings_landing_sensor", "labels_landing_sensor",
                     "lakehouse_on_new_readings_sensor"):  # fmt: skip
            sensor = defs.get_sensor_def(name)
            context = dg.build_sensor_context(
                instance=instance, resources=build_resources(), definitions=defs
            )
            result = sensor(context)
            requests = getattr(result, "run_requests", None) or []
            assert requests == [], name
