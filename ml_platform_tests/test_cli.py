"""The command-line path a user (and CI) takes: generate -> land -> `dagster asset materialize`."""

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

# The Dagster CLI and the project's command line as subprocesses.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_generate_land_and_materialize_a_partition_with_the_dagster_cli(tmp_path):
    home, lake = tmp_path / "home", tmp_path / "lake"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ML_PLATFORM_STORE_URL": lake.as_uri()}
    python = sys.executable

    out = run(
        python,
        "-m",
        "ml_platform",
        "generate",
        "--days",
        "3",
        "--sensors",
        "4",
        "--out",
        str(tmp_path / "generated"),
        env=env,
    )
    assert "generated" in out
    readings = sorted((tmp_path / "generated" / "readings").glob("readings_*.csv"))
    assert len(readings) == 3

    out = run(python, "-m", "ml_platform", "land", str(readings[1]), env=env)
    version = re.search(r"version: (\S+)", out).group(1)
    assert version.startswith(readings[1].name + "@")
    # The printed command, run as a person would paste it: today's landing day, this version.
    command = shlex.split(re.search(r"^  (dagster asset materialize .*)$", out, re.M).group(1))
    landing_day = datetime.now(UTC).date().isoformat()
    assert command[command.index("--partition") + 1] == landing_day
    config = json.loads(command[command.index("--config-json") + 1])
    assert config == {"ops": {"raw_readings": {"config": {"versions": [version]}}}}
    run(str(Path(python).with_name("dagster")), *command[1:], env=env)

    parts = sorted((lake / "lake" / "bronze" / "readings").glob("date=*/file=*.parquet"))
    # The second day's file holds that day plus a few late rows of the first day.
    assert [p.parent.name for p in parts] == ["date=2024-01-01", "date=2024-01-02"]
    day = pd.read_parquet(parts[1])
    assert day["sensor_id"].nunique() == 4 and len(day) > 4 * 1000
    [entry] = [json.loads(p.read_text()) for p in (lake / "lake" / "_ledger").rglob("*.json")]
    assert (entry["version"], entry["outcome"]) == (version, "ingested")
    assert sorted(entry["parts"]) == [p.relative_to(lake).as_posix() for p in parts]


def test_dg_launch_ingests_a_landing_day_from_the_project_root(tmp_path):
    """`dg launch --assets raw_readings --partition DAY` from the project root ingests what
    landed that day, as the README shows."""
    home, lake = tmp_path / "home", tmp_path / "lake"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    venv = Path(sys.executable).parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "ML_PLATFORM_STORE_URL": lake.as_uri(),
           "VIRTUAL_ENV": str(venv.parent)}  # fmt: skip
    run(sys.executable, "-m", "ml_platform", "generate", "--days", "2", "--sensors", "3",
        "--out", str(tmp_path / "generated"), env=env)  # fmt: skip
    first = sorted((tmp_path / "generated" / "readings").glob("readings_*.csv"))[0]
    run(sys.executable, "-m", "ml_platform", "land", str(first), env=env)
    landing_day = datetime.now(UTC).date().isoformat()

    run(str(venv / "dg"), "launch", "--assets", "raw_readings", "--partition", landing_day, env=env)

    parts = sorted((lake / "lake" / "bronze" / "readings").glob("date=*/file=*.parquet"))
    assert [p.parent.name for p in parts] == ["date=2024-01-01"]
    rows = pd.read_csv(first)
    assert len(pd.read_parquet(parts[0])) == len(rows.drop_duplicates())
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_readings"))
    assert event.asset_materialization.partition == landing_day
