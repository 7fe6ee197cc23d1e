"""The run limits and the training pool that both instance profiles promise (docs/architecture.md),
enforced by the real daemon's run queue: one lakehouse run at a time, one ingest run per dataset
at a time, one training step at a time across runs, and on the deployed profile one training
job run at a time.

The runs come from ``limits_location``: pairs of runs with the run tags of the platform's own
jobs, or with a step in the platform's training pool, requested together by a sensor (and pairs
of different limits together while the queue has a free slot besides one run of each: a pair
whose limit is gone then runs at once). Each run holds its step for a few seconds, so two runs
that the queue lets through together overlap.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from ml_platform.devstack import flow
from ml_platform_tests.e2e.limits_location import PHASE_TAG, PHASES
from ml_platform_tests.servers import ROOT, dagster_daemon

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

Span = tuple[float, float]


def overlap(spans: list[Span]) -> bool:
    first, second = sorted(spans)
    return second[0] < first[1]


def run_spans(instance, runs: list[dg.DagsterRun]) -> list[Span]:
    records = [instance.get_run_record_by_id(r.run_id) for r in runs]
    return [(rec.start_time, rec.end_time) for rec in records]


def step_spans(instance, runs: list[dg.DagsterRun], step: str) -> list[Span]:
    """When ``step`` started and succeeded in each run."""

    def at(run_id: str, kind: DagsterEventType) -> float:
        records = instance.get_records_for_run(run_id, of_type=kind).records
        [record] = [r for r in records if r.event_log_entry.step_key == step]
        return record.event_log_entry.timestamp

    return [
        (at(r.run_id, DagsterEventType.STEP_START), at(r.run_id, DagsterEventType.STEP_SUCCESS))
        for r in runs
    ]


def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace.yaml"
    path.write_text(
        "load_from:\n  - python_module:\n"
        "      module_name: ml_platform_tests.e2e.limits_location\n"
        f"      working_directory: {ROOT}\n"
    )
    return path


@pytest.fixture(params=["dagster.yaml", "docker/dagster.yaml"])
def profile(request, tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """An instance profile and the environment it reads: the deployed one gets a fresh
    PostgreSQL database and the S3 API for its step logs."""
    env: dict[str, str] = {}
    if request.param == "docker/dagster.yaml":
        postgres = request.getfixturevalue("postgres")
        env.update(request.getfixturevalue("s3_env"))
        db = f"dagster_{uuid.uuid4().hex[:8]}"
        postgres.create_database(db)
        env.update(postgres.dagster_env(db))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return request.param, env


@pytest.mark.timeout(300)
def test_the_run_queue_and_the_training_pool_hold_runs_back_as_configured(tmp_path, profile):
    config, env = profile
    home, log = tmp_path / "home", tmp_path / "daemon.log"
    with dagster_daemon(home, {**os.environ, **env}, log, config, workspace(tmp_path)) as (
        instance,
        daemon,
    ):
        deadline = time.monotonic() + 240
        while True:
            runs = instance.get_runs(dg.RunsFilter(tags={PHASE_TAG: list(PHASES)}))
            if len(runs) == 2 * len(PHASES) and all(r.is_finished for r in runs):
                break
            assert daemon.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"not every pair finished: {[(r.tags[PHASE_TAG], r.status.value) for r in runs]}"
                f"\n{log.read_text()[-4000:]}"
            )
            time.sleep(1)
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        pairs = {p: [r for r in runs if r.tags[PHASE_TAG] == p] for p in PHASES}
        runs_overlapped = {p: overlap(run_spans(instance, pair)) for p, pair in pairs.items()}
        steps_overlapped = overlap(step_spans(instance, pairs["pool"], "pooled_hold"))
        print(f"\n{config}: {runs_overlapped=} {steps_overlapped=}")
        print(flow.timeline(instance))

    deployed = config == "docker/dagster.yaml"
    assert runs_overlapped == {
        "lakehouse": False,
        "ingest": False,
        # Only the deployed profile limits training job runs; on the local one the pair runs at
        # once, which also shows that a pair nothing holds back does overlap.
        "training_run": not deployed,
        # Two untagged runs run at once; the pool holds back the second one's step.
        "pool": True,
    }
    assert not steps_overlapped
