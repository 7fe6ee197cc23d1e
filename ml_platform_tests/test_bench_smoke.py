"""``make bench-smoke``'s judgement of the records a benchmark returns (benchmarks/run.py), and
the tiny sizes it runs at (benchmarks/sizes.py)."""

from __future__ import annotations

import pytest

from benchmarks.run import FAULT_RESULTS_ENV, record, results_of_make_test, smoke_problems
from benchmarks.sizes import SMOKE_ENV, size

RECORDED = [
    record("ingest_rows_per_s", 1.6e6, "rows/s", "duckdb_copy_rows_per_s", 2.1e6, 10),
    record("duckdb_copy_rows_per_s", 2.1e6, "rows/s"),
    record("landing_stream_5_files_per_s", 4.0, "files/s"),
]


def test_well_formed_records_of_every_recorded_metric_pass():
    fresh = [
        record("ingest_rows_per_s", 12.0, "rows/s", "duckdb_copy_rows_per_s", 30.0, 2),
        record("duckdb_copy_rows_per_s", 30.0, "rows/s"),
        # The offered rates that run depend on the machine: another rate is no missing metric.
        record("landing_stream_10_files_per_s", 0.0, "files/s"),
    ]
    assert smoke_problems(fresh, RECORDED, whole=True) == []


def test_a_metric_no_longer_reported_a_new_one_a_nan_and_a_duplicate_are_problems():
    fresh = [
        record("ingest_rows_per_s", float("nan"), "rows/s"),
        record("ingest_rows_per_s", 1.0, "rows/s"),
        record("ingest_rows_per_day", 1.0, "rows/day"),
    ]
    problems = smoke_problems(fresh, RECORDED, whole=True)
    assert problems == [
        "malformed record {'name': 'ingest_rows_per_s', 'value': nan, 'unit': 'rows/s', "
        "'reference': None, 'reference_value': None, 'rows': None}",
        "ingest_rows_per_s reported twice",
        "duckdb_copy_rows_per_s (in results.json) is no longer reported",
        "ingest_rows_per_day is not in results.json (run make bench)",
    ]


def test_a_partial_smoke_only_judges_the_records_it_made():
    fresh = [record("ingest_rows_per_s", 1.0, "rows/s")]
    assert smoke_problems(fresh, RECORDED, whole=False) == []


@pytest.mark.parametrize(("value", "expected"), [("1", "tiny"), ("", "full"), ("0", "full")])
def test_the_smoke_sizes_apply_only_when_it_is_asked_for(monkeypatch, value, expected):
    monkeypatch.setenv(SMOKE_ENV, value)
    assert size("full", "tiny") == expected


def test_a_smoke_without_the_tests_numbers_fails_and_names_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULT_RESULTS_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(RuntimeError, match=r"ML_PLATFORM_FAULT_RESULTS=.*missing\.json.*faults"):
        results_of_make_test(FAULT_RESULTS_ENV, "test_faults_daemon.py")
    (tmp_path / "missing.json").write_text('{"no_fault": {"upload_to_ingested_s": 16.3}}')
    assert results_of_make_test(FAULT_RESULTS_ENV, "test_faults_daemon.py") == {
        "no_fault": {"upload_to_ingested_s": 16.3}
    }


def test_results_md_marks_constant_references_and_rows_of_earlier_runs(tmp_path, monkeypatch):
    from benchmarks import run

    monkeypatch.setattr(run, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(run, "HERE", tmp_path)  # no NOTES.md appended
    records = [
        record("demo_s", 30.0, "s", "budget (10 min on 2 cores)", 600),
        record("ingest_rows_per_s", 10.0, "rows/s", "duckdb_copy_rows_per_s", 20.0),
        record("duckdb_copy_rows_per_s", 20.0, "rows/s"),
    ]
    measured = {"demo_s": "2026-11-22 08:49", "ingest_rows_per_s": "2026-12-06 22:38",
                "duckdb_copy_rows_per_s": "2026-12-06 22:38"}  # fmt: skip
    run.write_markdown(records, measured, "2026-12-06 22:38")
    rows = [line for line in run.RESULTS_MD.read_text().splitlines() if line.startswith("| ")]
    cells = {c[0]: c for c in ([x.strip() for x in r.split("|")[1:-1]] for r in rows)}
    assert cells["demo_s"][3] == "budget (10 min on 2 cores) *(constant)*"
    assert cells["demo_s"][7] == "2026-11-22 08:49"  # an earlier run's row says when
    assert cells["ingest_rows_per_s"][3] == "duckdb_copy_rows_per_s"  # measured alongside
    assert cells["ingest_rows_per_s"][7] == ""  # this run's


def test_a_partial_run_replaces_its_records_in_place():
    from benchmarks.run import merge_records

    previous = [record("a_s", 1.0, "s"), record("b_s", 2.0, "s"), record("c_s", 3.0, "s")]
    fresh = [record("b_s", 2.5, "s"), record("d_s", 4.0, "s")]
    merged = merge_records(previous, fresh)
    assert [(r["name"], r["value"]) for r in merged] == [
        ("a_s", 1.0), ("b_s", 2.5), ("c_s", 3.0), ("d_s", 4.0),
    ]  # fmt: skip
