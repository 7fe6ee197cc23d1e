"""Synthetic machine-sensor readings and failure labels, byte-identical for a given seed.

Why: the platform must be exercised end to end (landing -> lakehouse -> features -> model) without
real plant data, and the data must be as messy as a real feed so that ingestion, quality checks
and the failure model are tested against the right problems. Every defect a real feed has is
produced on purpose and at a configurable, known rate: offline gaps, empty cells, stuck and
spiking sensors, exact duplicate rows and rows that arrive in the next day's file. Failures are
preceded by a visible degradation ramp so that a model has something to learn.

Speed matters because benchmarks generate ~10M rows: everything is vectorized over a
``(time, sensor)`` grid per day, Python loops only run over sensors or rare events, and CSV is
written by Arrow with timestamps pre-formatted (Arrow formats tz-aware timestamps ~30x slower).

Determinism: one ``numpy.random.SeedSequence(seed)`` is split into a child for the per-sensor plan
(baselines, failures, gaps, faults) and one child per day (noise and row-level defects), so the
same config always yields the same bytes and no wall-clock time or global random state is used.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

MEASUREMENTS: tuple[str, ...] = ("temperature", "vibration", "pressure", "current")
"""Measurement columns, in file order, after ``timestamp`` and ``sensor_id``."""

READING_COLUMNS: tuple[str, ...] = ("timestamp", "sensor_id", *MEASUREMENTS)

PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (-40.0, 150.0),  # degC, housing temperature
    "vibration": (0.0, 100.0),  # mm/s RMS
    "pressure": (0.0, 20.0),  # bar
    "current": (0.0, 200.0),  # A
}
"""Same bounds as the readings data contract; only rare spikes leave them."""

FORMATS: tuple[str, ...] = ("csv", "csv.gz", "parquet")

READINGS_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("sensor_id", pa.string(), nullable=False),
        *(pa.field(name, pa.float64()) for name in MEASUREMENTS),
    ]
)

_DAY_S = 86_400
_HOUR_S = 3_600
_DECIMALS = 3  # sensors report fixed precision; also keeps CSV small and fast to format
_MEAN_GAP_S = 30 * 60  # offline intervals are exponential with this mean ...
_MAX_GAP_S = 12 * _HOUR_S  # ... capped so one gap cannot swallow a whole sensor-day
_DOWNTIME_H = (1.0, 4.0)  # repair time after a failure: the sensor sends nothing
_MIN_FAILURES = 3  # floor on total failures so small demo configs always have positives
_FAULTY_SHARE = 0.1  # share of sensors that get a stuck interval / that spike
_STUCK_H = (2.0, 12.0)
_SPIKES_PER_DAY = (1.0, 4.0)
_SPIKE_FACTOR = (3.0, 6.0)
_WEEKEND_LOAD = 0.6  # machines run lighter on Saturday and Sunday
_WRITER_THREADS = 2
_GZIP_LEVEL = 1  # ~14x faster than Arrow's default 9, for files ~25% larger
_CSV_HEADER = (",".join(READING_COLUMNS) + "\n").encode()
_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none")


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Rates are expectations; the seed fixes every random choice."""

    days: int = 7
    sensors: int = 20
    start: str = "2024-01-01"  # first UTC day, ISO date
    interval_s: int = 60  # sampling interval per sensor
    seed: int = 42
    fmt: str = "csv"  # "csv" | "csv.gz" | "parquet"
    failures_per_sensor_month: float = 1.0  # expected failure events per sensor per 30 days
    degradation_days: float = 2.0  # how long failures are preceded by visible degradation
    duplicate_ratio: float = 0.002  # fraction of rows emitted twice (exact duplicates)
    late_ratio: float = 0.01  # fraction of rows delivered in the NEXT day's file (late data)
    gap_ratio: float = 0.01  # approx fraction of time each sensor is offline (no rows)
    missing_value_ratio: float = 0.002  # individual measurement cells left empty (NaN)

    def __post_init__(self) -> None:
        # Fail at construction, not deep inside numpy with an obscure message.
        if self.days < 1 or self.sensors < 1:
            raise ValueError("days and sensors must be >= 1")
        if not 1 <= self.interval_s <= _DAY_S:
            raise ValueError(f"interval_s must be in [1, {_DAY_S}], got {self.interval_s}")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        date.fromisoformat(self.start)  # raises ValueError on a bad date
        if self.failures_per_sensor_month < 0 or self.degradation_days < 0:
            raise ValueError("failures_per_sensor_month and degradation_days must be >= 0")
        for name in ("duplicate_ratio", "late_ratio", "gap_ratio", "missing_value_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")


@dataclass(frozen=True)
class GeneratedFiles:
    """What :func:`write_files` wrote, so callers need not list or re-read the folder."""

    readings: list[pathlib.Path]  # one file per day, sorted
    labels: pathlib.Path
    rows: int  # total reading rows written (including duplicates and late rows)
    failures: int  # number of failure events in the labels file


def sensor_ids(n: int) -> list[str]:
    """``sensor-001`` ... : zero-padded so that string order equals numeric order."""
    width = max(3, len(str(n)))
    return [f"sensor-{i:0{width}d}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------------------------
# The plan: everything decided once per sensor for the whole period.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Plan:
    """Per-sensor parameters and period-level events. Arrays of one kind share an index."""

    start_s: int  # epoch seconds of the first day
    end_s: int
    n_sensors: int
    degradation_s: float
    ids: pa.Array
    sensor: dict[str, np.ndarray]  # per-sensor signal parameters, shape (S,)
    fail_sensor: np.ndarray  # failure events, sorted by (sensor, time)
    fail_s: np.ndarray
    fail_vib_gain: np.ndarray  # vibration reaches (1 + gain) x normal at the failure
    fail_temp_rise: np.ndarray  # degC added at the failure
    off_sensor: np.ndarray  # offline intervals [start, end): random gaps and repair downtime
    off_start: np.ndarray
    off_end: np.ndarray
    stuck_sensor: np.ndarray  # one frozen channel per stuck interval [start, end)
    stuck_channel: np.ndarray
    stuck_start: np.ndarray
    stuck_end: np.ndarray
    stuck_value: np.ndarray
    spike_sensor: np.ndarray
    spike_p: np.ndarray  # per-sample spike probability


def _seeds(cfg: GeneratorConfig) -> tuple[np.random.SeedSequence, list[np.random.SeedSequence]]:
    """Independent streams for the plan and for each day, so days can be generated one by one."""
    plan_seed, *day_seeds = np.random.SeedSequence(cfg.seed).spawn(1 + cfg.days)
    return plan_seed, day_seeds


def _start_epoch_s(cfg: GeneratorConfig) -> int:
    return int(np.datetime64(date.fromisoformat(cfg.start), "s").astype(np.int64))


def _make_plan(cfg: GeneratorConfig) -> _Plan:
    # All plan draws come from one stream, in the order of the calls below: adding or reordering
    # a draw changes every dataset generated for a seed.
    plan_seed, _ = _seeds(cfg)
    rng = np.random.default_rng(plan_seed)
    n = cfg.sensors
    start_s = _start_epoch_s(cfg)
    end_s = start_s + cfg.days * _DAY_S
    degradation_s = cfg.degradation_days * _DAY_S
    sensor = _sensor_baselines(rng, n)
    failures = _failures(cfg, rng, start_s + degradation_s, end_s, degradation_s)
    off_sensor, off_start, off_end = _offline_intervals(cfg, rng, start_s, end_s, failures)
    stuck_sensor, stuck_channel, stuck_start, stuck_end = _stuck_intervals(cfg, rng, start_s, end_s)
    spike_sensor, spike_p = _spiking_sensors(cfg, rng)
    plan = _Plan(
        start_s=start_s,
        end_s=end_s,
        n_sensors=n,
        degradation_s=degradation_s,
        ids=pa.array(sensor_ids(n), type=pa.string()),
        sensor=sensor,
        fail_sensor=failures.sensor,
        fail_s=failures.time,
        fail_vib_gain=failures.vib_gain,
        fail_temp_rise=failures.temp_rise,
        off_sensor=off_sensor,
        off_start=off_start,
        off_end=off_end,
        stuck_sensor=stuck_sensor,
        stuck_channel=stuck_channel,
        stuck_start=stuck_start,
        stuck_end=stuck_end,
        stuck_value=np.zeros(len(stuck_sensor)),
        spike_sensor=spike_sensor,
        spike_p=spike_p,
    )
    return replace(plan, stuck_value=_stuck_values(plan))


def _sensor_baselines(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-sensor signal parameters: every machine is a little different."""

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    return {
        "peak_h": u(13.0, 17.0),  # UTC hour of peak load
        "temp_base": u(42.0, 55.0),
        "temp_amp": u(6.0, 14.0),  # degC from idle to full load
        "temp_drift": u(-0.05, 0.15),  # degC per day
        "temp_sd": u(0.3, 0.7),
        "vib_base": u(1.2, 2.5),
        "vib_wear": u(0.002, 0.008),  # relative rise per day since last maintenance
        "vib_sd": u(0.05, 0.10),  # log-normal: vibration is positive and right-skewed
        "pres_base": u(3.8, 5.5),
        "pres_amp": u(0.5, 1.5),
        "pres_drift": u(-0.02, 0.02),  # bar per day (transducer calibration drift)
        "pres_sd": u(0.03, 0.08),
        "cur_base": u(10.0, 18.0),
        "cur_amp": u(10.0, 20.0),
        "cur_drift": u(-0.03, 0.06),  # A per day
        "cur_sd": u(0.3, 0.8),
        "age0_days": u(0.0, 30.0),  # time since last maintenance at the start
    }


@dataclass(frozen=True, eq=False)
class _Failures:
    """Failure events, sorted by (sensor, time). Arrays share an index."""

    sensor: np.ndarray
    time: np.ndarray  # epoch seconds
    downtime: np.ndarray  # seconds of repair after the failure: the sensor sends nothing
    vib_gain: np.ndarray  # vibration reaches (1 + gain) x normal at the failure
    temp_rise: np.ndarray  # degC added at the failure


def _failures(
    cfg: GeneratorConfig, rng: np.random.Generator, lo: float, end_s: int, degradation_s: float
) -> _Failures:
    """Failures uniform in time in ``[lo, end_s)``; ``lo`` is the end of the first degradation
    window, so a model always has healthy history before the first positive."""
    counts = _failure_counts(cfg, rng, lo, end_s)
    sensor: list[np.ndarray] = []
    time: list[np.ndarray] = []
    downtime: list[np.ndarray] = []
    vib_gain: list[np.ndarray] = []
    temp_rise: list[np.ndarray] = []
    for s in np.flatnonzero(counts):
        c = int(counts[s])
        times = np.sort(np.floor(rng.uniform(lo, end_s, c))).astype(np.int64)
        down = (rng.uniform(*_DOWNTIME_H, c) * _HOUR_S).astype(np.int64)
        gain = rng.uniform(1.5, 3.0, c)
        rise = rng.uniform(5.0, 12.0, c)
        keep = _ramps_fit(times, down, degradation_s)
        sensor.append(np.full(int(keep.sum()), s, dtype=np.int64))
        time.append(times[keep])
        downtime.append(down[keep])
        vib_gain.append(gain[keep])
        temp_rise.append(rise[keep])
    return _Failures(
        sensor=_cat(sensor, np.int64),
        time=_cat(time, np.int64),
        downtime=_cat(downtime, np.int64),
        vib_gain=_cat(vib_gain, np.float64),
        temp_rise=_cat(temp_rise, np.float64),
    )


def _failure_counts(
    cfg: GeneratorConfig, rng: np.random.Generator, lo: float, end_s: int
) -> np.ndarray:
    """Failures per sensor: Poisson, topped up to a floor so small demo configs have positives."""
    n = cfg.sensors
    counts = np.zeros(n, dtype=np.int64)
    if cfg.failures_per_sensor_month > 0 and end_s - lo >= 1:
        counts = rng.poisson(cfg.failures_per_sensor_month * cfg.days / 30.0, n)
        short = min(_MIN_FAILURES, n) - int(counts.sum())
        if short > 0:  # Poisson can draw ~0 on a small config; top up on sensors with none
            idle = np.flatnonzero(counts == 0)
            counts[rng.choice(idle, short, replace=False)] += 1
    return counts


def _ramps_fit(times: np.ndarray, down: np.ndarray, degradation_s: float) -> np.ndarray:
    """Mask of one sensor's failures (sorted by time) that have their full degradation ramp
    after the previous repair; the others are dropped from the plan."""
    keep = np.zeros(len(times), dtype=bool)
    ready = -np.inf
    for j in range(len(times)):
        if times[j] - degradation_s >= ready:
            keep[j] = True
            ready = times[j] + down[j]
    return keep


def _offline_intervals(
    cfg: GeneratorConfig, rng: np.random.Generator, start_s: int, end_s: int, failures: _Failures
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sensor, start, end)`` of the intervals [start, end) with no rows: random gaps, then
    the repair downtime after each failure."""
    n = cfg.sensors
    # Exponential lengths, count chosen so the expected offline share ~ gap_ratio.
    n_gaps = rng.poisson(cfg.gap_ratio * (end_s - start_s) / _MEAN_GAP_S, n)
    total_gaps = int(n_gaps.sum())
    gap_len = np.clip(rng.exponential(_MEAN_GAP_S, total_gaps), cfg.interval_s, _MAX_GAP_S)
    gap_start = np.floor(rng.uniform(start_s, end_s, total_gaps)).astype(np.int64)
    return (
        np.concatenate([np.repeat(np.arange(n, dtype=np.int64), n_gaps), failures.sensor]),
        np.concatenate([gap_start, failures.time]),
        np.concatenate([gap_start + gap_len.astype(np.int64), failures.time + failures.downtime]),
    )


def _n_faulty(cfg: GeneratorConfig) -> int:
    """How many sensors get a stuck interval, and how many spike."""
    return math.ceil(_FAULTY_SHARE * cfg.sensors)


def _stuck_intervals(
    cfg: GeneratorConfig, rng: np.random.Generator, start_s: int, end_s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(sensor, channel, start, end)``: a few sensors freeze one channel for hours."""
    n_faulty = _n_faulty(cfg)
    sensor = np.sort(rng.choice(cfg.sensors, n_faulty, replace=False)).astype(np.int64)
    channel = rng.integers(0, len(MEASUREMENTS), n_faulty)
    length = np.minimum(rng.uniform(*_STUCK_H, n_faulty) * _HOUR_S, end_s - start_s)
    start = np.floor(rng.uniform(start_s, end_s - length)).astype(np.int64)
    return sensor, channel, start, start + length.astype(np.int64)


def _spiking_sensors(
    cfg: GeneratorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(sensor, probability)``: a few sensors emit rare single-sample spikes, each sample with
    the given probability."""
    n_faulty = _n_faulty(cfg)
    sensor = np.sort(rng.choice(cfg.sensors, n_faulty, replace=False)).astype(np.int64)
    spikes_per_day = rng.uniform(*_SPIKES_PER_DAY, n_faulty)
    return sensor, np.minimum(spikes_per_day * cfg.interval_s / _DAY_S, 1.0)


def _stuck_values(plan: _Plan) -> np.ndarray:
    """The value each stuck channel repeats: its noise-free value when it froze. It comes from
    the plan, not from the day's data, so a freeze spanning midnight repeats the same value."""
    frozen = np.empty(len(plan.stuck_sensor))
    for j in range(len(frozen)):
        clean, _ = _signals(plan, plan.stuck_start[j : j + 1])
        frozen[j] = clean[plan.stuck_channel[j], 0, plan.stuck_sensor[j]]
    return np.round(frozen, _DECIMALS)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Signals: vectorized over a (time, sensor) grid.
# --------------------------------------------------------------------------------------------


def _signals(plan: _Plan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free channels, shape (4, T, S), and the degradation ramp (T, S) at epoch seconds t.

    Load follows a daily cycle peaking in the afternoon (lighter at weekends); temperature,
    current and pressure follow load, vibration grows with wear since the last maintenance and
    during the degradation ramp before a failure.
    """
    p = plan.sensor
    hour = (t % _DAY_S) / _HOUR_S
    weekday = (t // _DAY_S + 3) % 7  # 1970-01-01 was a Thursday; Monday == 0
    shift = np.where(weekday >= 5, _WEEKEND_LOAD, 1.0)
    phase = (2.0 * np.pi / 24.0) * (hour[:, None] - p["peak_h"][None, :])
    load = shift[:, None] * (0.5 + 0.5 * np.cos(phase))
    elapsed = ((t - plan.start_s) / _DAY_S)[:, None]
    vib_mult, temp_add, ramp = _degradation(plan, t)

    out = np.empty((len(MEASUREMENTS), len(t), plan.n_sensors))
    out[0] = p["temp_base"] + p["temp_amp"] * load + p["temp_drift"] * elapsed + temp_add
    wear = 1.0 + p["vib_wear"] * _age_days(plan, t)
    out[1] = p["vib_base"] * (1.0 + 0.5 * load) * wear * vib_mult
    out[2] = p["pres_base"] + p["pres_amp"] * load + p["pres_drift"] * elapsed
    out[3] = p["cur_base"] + p["cur_amp"] * load + p["cur_drift"] * elapsed
    return out, ramp


def _age_days(plan: _Plan, t: np.ndarray) -> np.ndarray:
    """Days since the last maintenance (a failure's repair resets wear), shape (T, S)."""
    anchor = plan.start_s - plan.sensor["age0_days"] * _DAY_S
    age = t[:, None] - anchor[None, :]
    for s in np.unique(plan.fail_sensor):
        repaired = plan.fail_s[plan.fail_sensor == s]
        i = np.searchsorted(repaired, t, side="right")
        since = t - repaired[np.maximum(i - 1, 0)]
        age[:, s] = np.where(i > 0, since, age[:, s])
    return age / _DAY_S


def _degradation(plan: _Plan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vibration factor, temperature rise and ramp (0..1) before each failure, each (T, S).

    The ramp is quadratic in time (wear accelerates) and ends at the failure: afterwards the
    machine is repaired and back to its baseline.
    """
    shape = (len(t), plan.n_sensors)
    vib_mult, temp_add, ramp = np.ones(shape), np.zeros(shape), np.zeros(shape)
    degradation_s = plan.degradation_s
    if len(t) == 0 or degradation_s <= 0:
        return vib_mult, temp_add, ramp
    hit = np.flatnonzero((plan.fail_s > t[0]) & (plan.fail_s - degradation_s <= t[-1]))
    for j in hit:
        f, s = plan.fail_s[j], plan.fail_sensor[j]
        lo, hi = np.searchsorted(t, [f - degradation_s, f])
        if lo == hi:
            continue
        x = ((t[lo:hi] - (f - degradation_s)) / degradation_s) ** 2
        ramp[lo:hi, s] = x
        vib_mult[lo:hi, s] = 1.0 + plan.fail_vib_gain[j] * x
        temp_add[lo:hi, s] = plan.fail_temp_rise[j] * x
    return vib_mult, temp_add, ramp


# --------------------------------------------------------------------------------------------
# One day of rows.
# --------------------------------------------------------------------------------------------


def _day_grid(cfg: GeneratorConfig, plan: _Plan, day: int) -> np.ndarray:
    """Epoch seconds of the samples in ``day``: one global grid, so days join seamlessly."""
    first = -(-day * _DAY_S // cfg.interval_s)  # ceil division
    stop = -(-(day + 1) * _DAY_S // cfg.interval_s)
    return plan.start_s + np.arange(first, stop, dtype=np.int64) * cfg.interval_s


def _day_values(
    cfg: GeneratorConfig, plan: _Plan, t: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Measured values (4, T, S): signal + noise + faults, rounded, with empty cells as NaN."""
    p = plan.sensor
    values, ramp = _signals(plan, t)
    noise = rng.standard_normal(values.shape)
    values[0] += p["temp_sd"] * noise[0]
    values[1] *= np.exp(p["vib_sd"] * noise[1])
    values[2] += p["pres_sd"] * noise[2]
    values[3] += p["cur_sd"] * (1.0 + 3.0 * ramp) * noise[3]  # a failing motor draws unevenly
    np.maximum(values[1:], 0.0, out=values[1:])  # vibration, pressure and current are >= 0

    n_times = len(t)
    for s, prob in zip(plan.spike_sensor, plan.spike_p, strict=True):
        n = rng.binomial(n_times, prob)
        rows = rng.integers(0, n_times, n)
        channels = rng.integers(0, len(MEASUREMENTS), n)
        values[channels, rows, s] *= rng.uniform(*_SPIKE_FACTOR, n)
    np.round(values, _DECIMALS, out=values)

    for j in np.flatnonzero((plan.stuck_end > t[0]) & (plan.stuck_start <= t[-1])):
        lo, hi = np.searchsorted(t, [plan.stuck_start[j], plan.stuck_end[j]])
        values[plan.stuck_channel[j], lo:hi, plan.stuck_sensor[j]] = plan.stuck_value[j]

    cells = values.reshape(-1)  # a view: values is contiguous
    n_missing = rng.binomial(cells.size, cfg.missing_value_ratio)
    cells[rng.integers(0, cells.size, n_missing)] = np.nan
    return values


def _day_online(plan: _Plan, t: np.ndarray) -> np.ndarray:
    """(T, S) mask of samples a sensor actually sent (False inside gaps and repair downtime)."""
    online = np.ones((len(t), plan.n_sensors), dtype=bool)
    for j in np.flatnonzero((plan.off_end > t[0]) & (plan.off_start <= t[-1])):
        lo, hi = np.searchsorted(t, [plan.off_start[j], plan.off_end[j]])
        online[lo:hi, plan.off_sensor[j]] = False
    return online


def _rows_table(plan: _Plan, t: np.ndarray, values: np.ndarray, rows: np.ndarray) -> pa.Table:
    """Arrow table of the given flat (time-major, sensor-minor) row indices, in that order."""
    n = plan.n_sensors
    flat = values.reshape(len(MEASUREMENTS), -1)
    columns = [
        pa.array(t[rows // n] * 1_000_000, type=READINGS_SCHEMA.field("timestamp").type),
        plan.ids.take(pa.array(rows % n)),
        *(pa.array(flat[c][rows], from_pandas=True) for c in range(len(MEASUREMENTS))),
    ]
    return pa.Table.from_arrays(columns, schema=READINGS_SCHEMA)


def _day_tables(
    cfg: GeneratorConfig, plan: _Plan, day: int, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table | None]:
    """Rows of ``day`` delivered on time (sorted, with duplicates) and rows delivered late."""
    t = _day_grid(cfg, plan, day)
    if len(t) == 0:  # interval_s longer than the gap between two grid points in this day
        return READINGS_SCHEMA.empty_table(), None
    values = _day_values(cfg, plan, t, rng)
    sent = np.flatnonzero(_day_online(plan, t).reshape(-1))

    late: np.ndarray | None = None
    if day < cfg.days - 1:  # the last day has no next file to be late into
        pick = np.sort(rng.choice(len(sent), rng.binomial(len(sent), cfg.late_ratio), False))
        late = sent[pick]
        sent = np.delete(sent, pick)

    # Exact duplicates sit right after their original (a re-sent message), keeping sort order.
    copies = np.ones(len(sent), dtype=np.int64)
    copies[rng.choice(len(sent), rng.binomial(len(sent), cfg.duplicate_ratio), False)] = 2
    on_time = _rows_table(plan, t, values, np.repeat(sent, copies))
    return on_time, None if late is None else _rows_table(plan, t, values, late)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def _iter_days(cfg: GeneratorConfig, plan: _Plan) -> Iterator[tuple[str, pa.Table]]:
    _, day_seeds = _seeds(cfg)
    first_day = np.datetime64(date.fromisoformat(cfg.start), "D")
    late_from_yesterday: pa.Table | None = None
    for day in range(cfg.days):
        on_time, late = _day_tables(cfg, plan, day, np.random.default_rng(day_seeds[day]))
        table = on_time
        if late_from_yesterday is not None:
            table = pa.concat_tables([on_time, late_from_yesterday])
        yield str(first_day + day), table
        late_from_yesterday = late


def generate_readings(cfg: GeneratorConfig) -> Iterator[tuple[str, pa.Table]]:
    """Yield (file_day 'YYYY-MM-DD', table) per delivery day, in day order.

    A day's table holds that day's rows sorted by (timestamp, sensor_id), exact duplicates next
    to their original, then the previous day's late rows appended (also sorted). Days are
    generated one at a time, so memory stays at about one day of data.
    """
    yield from _iter_days(cfg, _make_plan(cfg))


def _labels_frame(plan: _Plan) -> pd.DataFrame:
    order = np.lexsort((plan.fail_sensor, plan.fail_s))  # by timestamp, then sensor
    ids = np.asarray(plan.ids.to_pylist(), dtype=object)
    return pd.DataFrame(
        {
            "sensor_id": ids[plan.fail_sensor[order]],
            "timestamp": pd.to_datetime(plan.fail_s[order], unit="s", utc=True).as_unit("ns"),
            "failure": np.ones(len(order), dtype=np.int64),
        }
    )


def generate_labels(cfg: GeneratorConfig) -> pd.DataFrame:
    """Failure events: columns sensor_id (str), timestamp (datetime64[ns, UTC]), failure (int, 1).

    Sorted by timestamp. Each event is preceded by ``degradation_days`` of visible degradation in
    the readings and followed by a few hours of repair downtime (no rows).
    """
    return _labels_frame(_make_plan(cfg))


def _iso_utc(timestamps: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``2024-01-01T00:00:13Z`` strings. A day has few distinct instants, so each is formatted
    once and gathered; Arrow's own tz-aware timestamp formatting is ~30x slower."""
    seconds = timestamps.cast(pa.int64()).to_numpy() // 1_000_000
    instants, inverse = np.unique(seconds, return_inverse=True)
    text = np.datetime_as_string(instants.astype("datetime64[s]"), unit="s", timezone="UTC")
    return pa.array(text, type=pa.string()).take(pa.array(inverse))


def _write_csv(table: pa.Table, sink: pa.NativeFile) -> None:
    csv_table = table.set_column(0, "timestamp", _iso_utc(table.column("timestamp")))
    sink.write(_CSV_HEADER)  # Arrow would quote the header names; plain is friendlier
    pa_csv.write_csv(csv_table, sink, _CSV_OPTIONS)


def _write_readings(table: pa.Table, path: pathlib.Path, fmt: str) -> None:
    """Write to a temporary name, then rename, so a folder watcher never sees a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp, compression="zstd")
    elif fmt == "csv":
        with pa.OSFile(str(tmp), "wb") as sink:
            _write_csv(table, sink)
    else:
        # Arrow's gzip header carries no mtime, so bytes are stable. One codec per call: a codec
        # keeps zlib state and must not be shared between writer threads.
        buffer = pa.BufferOutputStream()
        _write_csv(table, buffer)
        data = pa.Codec("gzip", compression_level=_GZIP_LEVEL).compress(buffer.getvalue())
        with pa.OSFile(str(tmp), "wb") as sink:
            sink.write(data)
    os.replace(tmp, path)


def write_files(cfg: GeneratorConfig, out_dir: pathlib.Path) -> GeneratedFiles:
    """Writes out_dir/readings/readings_YYYY-MM-DD.<fmt> and out_dir/labels/labels.csv.

    Files of other days or formats already in the folders are left alone.
    """
    out_dir = pathlib.Path(out_dir)
    readings_dir, labels_dir = out_dir / "readings", out_dir / "labels"
    readings_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)

    plan = _make_plan(cfg)
    paths: list[pathlib.Path] = []
    rows = 0
    # Formatting and compressing a day takes longer than generating it, and Arrow writes outside
    # the GIL: writer threads overlap with generation. Each file is written by exactly one
    # thread, so bytes do not depend on scheduling; the bounded queue caps memory at a few days.
    with ThreadPoolExecutor(max_workers=_WRITER_THREADS) as pool:
        pending: deque[Future[None]] = deque()
        for day, table in _iter_days(cfg, plan):
            path = readings_dir / f"readings_{day}.{cfg.fmt}"
            pending.append(pool.submit(_write_readings, table, path, cfg.fmt))
            paths.append(path)
            rows += table.num_rows
            while len(pending) > _WRITER_THREADS:
                pending.popleft().result()
        for future in pending:
            future.result()

    labels = _labels_frame(plan)
    labels_path = labels_dir / "labels.csv"
    text = labels.assign(timestamp=labels["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    tmp = labels_path.with_name(f".{labels_path.name}.tmp")
    text.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, labels_path)
    return GeneratedFiles(readings=paths, labels=labels_path, rows=rows, failures=len(labels))
