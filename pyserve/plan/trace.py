"""Load traces: the arrival rate (req/s) of every simulated second.

Forms:

- ``ramp:FROM:TO:DURATION_S``: linear from FROM req/s at second 0 to TO req/s at the last second
  (DURATION_S seconds in all);
- ``step:FROM:TO:AT_S:DURATION_S``: FROM req/s before second AT_S, TO req/s from it on;
- ``const:RATE:DURATION_S``;
- a CSV file with the header ``time_s,rate`` and rows of increasing ``time_s`` (seconds) and ``rate``
  (req/s >= 0), interpolated linearly between rows and sampled every second from the first row's
  time to the last's (a step is two rows one second apart).

A trace lasts at most :data:`MAX_TRACE_S` seconds (one day: the simulation holds a value per second)
and a rate is at most :data:`MAX_RATE` req/s; longer or larger ones are refused, naming the flag or line.
"""

from __future__ import annotations

import csv
import math

import numpy as np

MAX_TRACE_S = 86_400
MAX_RATE = 1e9


class TraceError(ValueError):
    """A trace that cannot be read; the message names the flag or file (and line) and what was expected."""


def _numbers(spec: str, parts: list[str], names: tuple[str, ...]) -> list[float]:
    if len(parts) != len(names):
        raise TraceError(f"--trace {spec!r}: expected {parts[0] if parts else ''}:{':'.join(names)}")
    out = []
    for name, text in zip(names, parts):
        try:
            v = float(text)
        except ValueError:
            raise TraceError(f"--trace {spec!r}: {name} must be a number, got {text!r}") from None
        if not math.isfinite(v) or v < 0:
            raise TraceError(f"--trace {spec!r}: {name} must be a finite number >= 0, got {text!r}")
        if name in ("FROM", "TO", "RATE") and v > MAX_RATE:
            raise TraceError(f"--trace {spec!r}: {name} must be at most {MAX_RATE:.0e} req/s, got {text!r}")
        out.append(v)
    return out


def _duration(spec: str, d: float) -> int:
    if d != int(d) or d < 1:
        raise TraceError(f"--trace {spec!r}: DURATION_S must be a whole number of seconds >= 1, got {d:g}")
    if d > MAX_TRACE_S:
        raise TraceError(f"--trace {spec!r}: DURATION_S must be at most {MAX_TRACE_S} s (one day), got {d:g}")
    return int(d)


def parse_trace(spec: str) -> np.ndarray:
    """The per-second rates (float64, shape (duration_s,), req/s) of a ``--trace`` spec."""
    kind, *parts = spec.split(":")
    if kind == "ramp":
        lo, hi, d = _numbers(spec, parts, ("FROM", "TO", "DURATION_S"))
        n = _duration(spec, d)
        return np.linspace(lo, hi, n) if n > 1 else np.array([lo])
    if kind == "step":
        lo, hi, at, d = _numbers(spec, parts, ("FROM", "TO", "AT_S", "DURATION_S"))
        n = _duration(spec, d)
        if at != int(at) or at >= n:
            raise TraceError(f"--trace {spec!r}: AT_S must be a whole second before DURATION_S")
        rates = np.full(n, lo)
        rates[int(at):] = hi
        return rates
    if kind == "const":
        rate, d = _numbers(spec, parts, ("RATE", "DURATION_S"))
        return np.full(_duration(spec, d), rate)
    raise TraceError(f"--trace {spec!r}: expected ramp:FROM:TO:DURATION_S, step:FROM:TO:AT_S:DURATION_S or "
                     "const:RATE:DURATION_S")


def read_trace_csv(path: str) -> np.ndarray:
    """The per-second rates of a ``time_s,rate`` CSV (see the module doc)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise TraceError(f"--trace-csv {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TraceError(f"--trace-csv {path}: not a UTF-8 text file") from None
    if not rows or [c.strip() for c in rows[0]] != ["time_s", "rate"]:
        raise TraceError(f"--trace-csv {path}: line 1: expected the header time_s,rate")
    times: list[float] = []
    rates: list[float] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise TraceError(f"--trace-csv {path}: line {line}: expected 2 columns time_s,rate, got {len(row)}")
        try:
            t, r = float(row[0]), float(row[1])
        except ValueError:
            raise TraceError(f"--trace-csv {path}: line {line}: time_s and rate must be numbers, got {row}") from None
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            raise TraceError(f"--trace-csv {path}: line {line}: rate must be a finite number >= 0, got {row[1]!r}")
        if r > MAX_RATE:
            raise TraceError(f"--trace-csv {path}: line {line}: rate must be at most {MAX_RATE:.0e} req/s, "
                             f"got {row[1]!r}")
        if times and t <= times[-1]:
            raise TraceError(f"--trace-csv {path}: line {line}: time_s {t:g} is not after the previous {times[-1]:g}")
        if times and t - times[0] >= MAX_TRACE_S:
            raise TraceError(f"--trace-csv {path}: line {line}: time_s {t:g} is {t - times[0]:g} s after the first "
                             f"row's; a trace lasts at most {MAX_TRACE_S} s (one day)")
        times.append(t)
        rates.append(r)
    if not times:
        raise TraceError(f"--trace-csv {path}: no rows after the header")
    seconds = np.arange(times[0], times[-1] + 1e-9, 1.0)
    return np.interp(seconds, times, rates)
